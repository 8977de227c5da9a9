"""The pipeline's thread. Every model call (load, encode, generate, close) runs here; the worker
talks to the window only through signals, so the GUI never blocks and never runs model code."""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PySide6.QtCore import QObject, QThread, Signal, Slot

from dynamicid_rt import Cancelled, DynamicIDError

from .people import EncodeJob

if TYPE_CHECKING:
    from dynamicid_rt import Pipeline, ProgressInfo, Request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Which models to open: ``folder`` None is the tiny demo bundle."""

    folder: Path | None
    backend: str


def default_pipeline_factory(spec: ModelSpec) -> "Pipeline":
    # Imported here, in the worker thread: the window must not wait for torch & co.
    from dynamicid_rt import Pipeline

    return Pipeline.load(models=spec.folder, backend=spec.backend)


def validate_model_folder(spec: ModelSpec) -> str | None:
    """What is wrong with the chosen folder (None: usable), found before the current models go."""
    if spec.folder is None:
        return None  # the tiny demo bundle is built on demand
    from dynamicid_rt import ModelPaths

    folder = Path(spec.folder)
    if not folder.is_dir():
        return "it is not a folder"
    parts = ("base", "image_encoder", "dynamicid", "insightface")
    missing = [part for part in parts if not any(folder.glob(part + "*"))]
    if len(missing) == len(parts):
        return f"it is not a model folder (none of {', '.join(p + '/' for p in parts)} in it); choose the folder that holds them"
    try:
        ModelPaths.from_folder(folder).check()
    except DynamicIDError as exc:
        # Said once, with paths inside the folder relative to it: one line, not a wall of paths.
        return str(exc).replace(f"{folder}{os.sep}", "").replace(f"model folder {folder} is not usable: ", "")
    return None


def validate_spec(spec: ModelSpec) -> str | None:
    """What makes ``spec`` unusable (None: worth a try), found before the models in use are closed:
    a backend whose packages are missing, then the folder (:func:`validate_model_folder`)."""
    from dynamicid_rt import AUTO, BACKENDS

    info = BACKENDS.get(spec.backend)
    if spec.backend != AUTO and info is not None:
        missing = info.missing_packages()
        if missing:
            return f"the {spec.backend} backend is not installed (missing {', '.join(missing)}); {info.install_advice()}"
    return validate_model_folder(spec)


def describe_error(exc: BaseException) -> str:
    """A message for the window: ours already say what to do; others get their type name."""
    if isinstance(exc, DynamicIDError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def face_thumbnails(photo: Path, boxes: list[tuple[float, float, float, float]], size: int = 64) -> list[np.ndarray]:
    """Crops of each detected face (x0, y0, x1, y1 px) for the face picker, read the way the
    pipeline reads the photo (EXIF orientation, downscaling) so the boxes line up."""
    from dynamicid_rt import face_thumbnail, load_photo

    pixels = load_photo(photo)
    return [face_thumbnail(pixels, box, size) for box in boxes]


def step_limits(pipe: "Pipeline") -> dict[str, int]:
    """The most steps each sampler takes on the loaded model's schedule ("default": its own sampler)."""
    from dynamicid_rt import SAMPLERS, max_sampler_steps

    config = pipe.scheduler_config
    limits = {name: max_sampler_steps(name, config) for name in SAMPLERS}
    default = str(pipe.default_sampler)
    if default in limits:
        limits["default"] = limits[default]
    return limits


class _ActivityHandler(logging.Handler):
    """Passes on what the library logs from the pipeline thread (loading, building or compiling an
    engine, writing the demo bundle), so that the window can say what a long wait is for."""

    def __init__(self, activity: Signal) -> None:
        super().__init__(logging.INFO)
        self._activity = activity
        self.thread_id: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            self._activity.emit(activity_text(record.getMessage()))


def activity_text(message: str) -> str:
    """A log line as a short status: paths shortened to their last part, first letter capital."""
    text = re.sub(r"(?:[A-Za-z]:)?[/\\][^\s,;()]+", lambda m: Path(m.group(0)).name or m.group(0), message)
    return text[:1].upper() + text[1:]


class PipelineWorker(QObject):
    """Lives in its own QThread; its slots are called through queued signals from the window."""

    activity = Signal(str)  # what the pipeline is doing now (from its log), while loading or starting a run
    loaded = Signal(object)  # dict of facts about the pipeline
    loadFailed = Signal(str)
    loadRejected = Signal(object, str)  # spec, problems: the folder is unusable and the loaded models stay
    encoded = Signal(int, int, object, object)  # key, version, Identity, face thumbnails
    encodeFailed = Signal(int, int, str)  # key, version, message
    progressed = Signal(int, int, float, object)  # step, total, seconds left, preview (h, w, 3) uint8
    finished = Signal(object)  # Result
    failed = Signal(str)
    cancelled = Signal(str)
    closed = Signal()

    def __init__(
        self,
        factory: Callable[[ModelSpec], Any] = default_pipeline_factory,
        validate: Callable[[ModelSpec], str | None] = validate_spec,
    ) -> None:
        super().__init__()
        self._factory = factory
        self._validate = validate
        self._pipe: Any = None
        self._spec: ModelSpec | None = None  # what _pipe was opened from
        self._activity = _ActivityHandler(self.activity)
        library = logging.getLogger("dynamicid_rt")
        self._library_level = library.level
        if library.level == logging.NOTSET:
            library.setLevel(logging.INFO)  # the activity line needs the library's INFO records
        library.addHandler(self._activity)

    def detach_log(self) -> None:
        library = logging.getLogger("dynamicid_rt")
        library.removeHandler(self._activity)
        library.setLevel(self._library_level)

    @Slot(object)
    def load(self, spec: ModelSpec) -> None:
        """Open ``spec``'s models in place of those in use. An unusable choice leaves them open
        (loadRejected); one that fails to load puts them back (loaded, then loadRejected), so a
        failed switch leaves everything as it was."""
        self._activity.thread_id = threading.get_ident()  # this slot runs in the pipeline thread
        problem = self._validate(spec)
        if problem is not None:
            self.loadRejected.emit(spec, problem)
            return
        previous = self._spec if self._pipe is not None else None
        self._close_pipe()  # one pipeline at a time: two may not fit in memory
        try:
            self._open(spec)
        except Exception as exc:  # noqa: BLE001 - any failure must reach the window, not kill the thread
            log.exception("loading models failed")
            if previous is not None and previous != spec:
                try:
                    self._open(previous)
                except Exception:  # noqa: BLE001
                    log.exception("re-opening the models in use failed")
                else:
                    self.loadRejected.emit(spec, describe_error(exc))
                    return
            self.loadFailed.emit(describe_error(exc))

    def _open(self, spec: ModelSpec) -> None:
        t = time.perf_counter()
        self._pipe = self._factory(spec)
        self._spec = spec
        describe = getattr(self._pipe, "describe", None)
        root = getattr(getattr(self._pipe, "paths", None), "root", None)
        self.loaded.emit(
            {
                "samples": str(Path(root) / "samples") if root and (Path(root) / "samples").is_dir() else "",
                "folder": spec.folder,
                "backend": spec.backend,
                "runs_on": dict(describe()) if describe else {},  # the backend and device actually in use
                "default_sampler": str(getattr(self._pipe, "default_sampler", "")),
                "max_steps": step_limits(self._pipe),
                "is_tiny": bool(self._pipe.is_tiny),
                "has_imr": bool(self._pipe.has_imr),
                "decoders": list(getattr(self._pipe, "decoders", ["vae"])),
                "seconds": time.perf_counter() - t,
            }
        )

    @Slot(object)
    def encode(self, job: EncodeJob) -> None:
        if self._pipe is None:
            self.encodeFailed.emit(job.key, job.version, "the models are not loaded; choose a model folder")
            return
        try:
            identity = self._pipe.encode_identity(
                str(job.photo),
                face_prompt=job.face_prompt,
                target_landmarks=str(job.target) if job.target else None,
                face_index=job.face_index,
            )
            thumbs: list[np.ndarray] = []
            if identity.num_faces > 1:
                faces = self._pipe.detect_faces(str(job.photo))
                thumbs = face_thumbnails(job.photo, [tuple(f.bbox) for f in faces])
        except Exception as exc:  # noqa: BLE001
            # NoFaceError/ImageError are expected user input problems: no traceback for those.
            if not isinstance(exc, DynamicIDError):
                log.exception("encoding %s failed", job.photo)
            self.encodeFailed.emit(job.key, job.version, describe_error(exc))
        else:
            self.encoded.emit(job.key, job.version, identity, thumbs)

    @Slot(object, object)
    def generate(self, request: "Request", cancel: threading.Event) -> None:
        if self._pipe is None:
            self.failed.emit("the models are not loaded; choose a model folder")
            return
        from dynamicid_rt import latent_to_rgb

        def progress(info: "ProgressInfo") -> None:
            left = info.elapsed / info.step * (info.total - info.step) if info.step else 0.0
            preview = info.preview if info.preview is not None else latent_to_rgb(info.latent[0])
            self.progressed.emit(info.step, info.total, left, preview)

        try:
            result = self._pipe.generate(request, progress=progress, cancel=cancel)
        except Cancelled as exc:
            self.cancelled.emit(str(exc))
        except Exception as exc:  # noqa: BLE001
            log.exception("generation failed")
            self.failed.emit(describe_error(exc))
        else:
            self.finished.emit(result)

    @Slot()
    def close(self) -> None:
        self._close_pipe()
        self.closed.emit()

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            try:
                self._pipe.close()
            except Exception:  # noqa: BLE001 - closing must not stop a reload or shutdown
                log.exception("closing the pipeline failed")
            self._pipe = None


class PipelineThread(QObject):
    """Owns the worker and its thread; the window calls these methods and listens to ``worker``."""

    _load = Signal(object)
    _encode = Signal(object)
    _generate = Signal(object, object)
    _close = Signal()

    def __init__(self, factory: Callable[[ModelSpec], Any] = default_pipeline_factory, parent=None) -> None:
        super().__init__(parent)
        self.thread = QThread()
        self.thread.setObjectName("dynamicid-pipeline")
        self.worker = PipelineWorker(factory)
        self.worker.moveToThread(self.thread)
        self._load.connect(self.worker.load)
        self._encode.connect(self.worker.encode)
        self._generate.connect(self.worker.generate)
        self._close.connect(self.worker.close)
        self.thread.start()

    def load(self, spec: ModelSpec) -> None:
        self._load.emit(spec)

    def encode(self, job: EncodeJob) -> None:
        self._encode.emit(job)

    def generate(self, request: "Request", cancel: threading.Event) -> None:
        self._generate.emit(request, cancel)

    def shutdown(self, timeout_ms: int = 10000) -> None:
        """Close the pipeline in its thread, then stop the thread."""
        if not self.thread.isRunning():
            return
        self._close.emit()
        self.thread.quit()
        if not self.thread.wait(timeout_ms):
            log.warning("the pipeline thread did not stop within %d ms", timeout_ms)
        self.worker.detach_log()
