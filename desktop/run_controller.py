"""The run controller: owns the pipeline thread, the cancel flag and whether a run is going.

The window asks it to load, encode and generate; it answers with signals only. Progress is
reported in the steps the user asked for (PNDM makes one model call more than its step count,
best-of-N makes N runs).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PySide6.QtCore import QObject, Signal

from .people import EncodeJob
from .worker import ModelSpec, PipelineThread, default_pipeline_factory

if TYPE_CHECKING:
    from dynamicid_rt import Request, Result


def user_steps(step: int, total: int, asked: int) -> int:
    """Model calls done (``step`` of ``total``) in the user's steps (``asked`` in all)."""
    return asked if total <= 0 else min(asked, step * asked // total)


def progress_text(step: int, total: int, seconds_left: float, steps: int, images: int) -> str:
    """The progress bar's words. After an image's last step the pipeline decodes it (and checks
    faces) with no step to report, so it says that instead of "0.0 s left"."""
    if step > 0 and (step >= total or step % steps == 0):
        image = step // steps
        which = f" image {image} of {images}" if images > 1 else ""
        return f"step {step}/{total} · decoding{which}…"
    return f"step {step}/{total} · {seconds_left:.1f} s left"


class RunController(QObject):
    progressed = Signal(int, int, float, object)  # user steps done, user steps in all, seconds left, preview
    finished = Signal(object, float)  # Result, seconds
    failed = Signal(str)
    cancelled = Signal(str)
    runningChanged = Signal(bool)

    def __init__(self, factory: Callable[[ModelSpec], Any] = default_pipeline_factory, parent=None) -> None:
        super().__init__(parent)
        self.pipeline = PipelineThread(factory, self)
        self.worker = self.pipeline.worker  # load/encode signals: loaded, loadFailed, loadRejected, encoded…
        self._cancel: threading.Event | None = None
        self._asked = 0
        self._started = 0.0
        self.worker.progressed.connect(self._on_progress)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self._on_failed)
        self.worker.cancelled.connect(self._on_cancelled)

    @property
    def running(self) -> bool:
        return self._cancel is not None

    @property
    def cancelling(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def load(self, spec: ModelSpec) -> None:
        self.pipeline.load(spec)

    def encode(self, job: EncodeJob) -> None:
        self.pipeline.encode(job)

    def start(self, request: "Request") -> bool:
        """Generate in the pipeline thread; False when a run is already going."""
        if self.running:
            return False
        self._cancel = threading.Event()
        self._asked = max(1, request.steps_to_run()) * request.best_of  # img2img: int(steps × strength)
        self._started = time.perf_counter()
        self.runningChanged.emit(True)
        self.pipeline.generate(request, self._cancel)
        return True

    def cancel(self) -> None:
        """Stops the run at the next step (the pipeline checks the flag after each one)."""
        if self._cancel is not None:
            self._cancel.set()

    def shutdown(self) -> None:
        self.cancel()
        self.pipeline.shutdown()

    def _on_progress(self, step: int, total: int, seconds_left: float, preview: np.ndarray) -> None:
        self.progressed.emit(user_steps(step, total, self._asked), self._asked, seconds_left, preview)

    def _on_finished(self, result: "Result") -> None:
        self._end()
        self.finished.emit(result, time.perf_counter() - self._started)

    def _on_failed(self, message: str) -> None:
        self._end()
        self.failed.emit(message)

    def _on_cancelled(self, message: str) -> None:
        self._end()
        self.cancelled.emit(message)

    def _end(self) -> None:
        self._cancel = None
        self.runningChanged.emit(False)
