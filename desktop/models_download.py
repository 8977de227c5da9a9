"""First launch without models: "Download the DynamicID models (N GB)" beside "Choose model
folder…", with the progress, a cancel, and the rest fetched on the next launch (every finished file
stays in the Hugging Face cache). The pull runs in a worker thread that only emits signals."""
from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QObject, QThread, Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QWidget

from dynamicid_rt import Cancelled, DynamicIDError

STARTED = ".pull-started"  # in the model folder until a pull completes: the next launch offers to resume

# SD1.5 fp32 parts, laion's CLIP, the DynamicID files and buffalo_l at release; the plan gives the
# exact figure (what is still to fetch) once the hub has answered.
ESTIMATED_GB = 11


def default_folder() -> Path:
    from dynamicid_rt import default_models_dir

    return default_models_dir()


class PullWorker(QObject):
    """Runs ``dynamicid_rt.pull_models`` in its thread; ``cancel`` stops it between chunks."""

    planned = Signal(float)  # GB still to fetch
    progress = Signal(int, int)  # bytes done, bytes to fetch (MB, to fit an int)
    done = Signal(object)  # the model folder (Path)
    failed = Signal(str)  # one line

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.cancel = threading.Event()
        self._done = 0
        self._total = 0

    def _bar_class(self) -> type:
        from tqdm.auto import tqdm

        worker = self

        class SignalBar(tqdm):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **(kwargs | {"disable": True}))

            def update(self, n: float | None = 1) -> bool | None:
                if worker.cancel.is_set():
                    raise Cancelled("download cancelled: the finished files are kept for the next launch")
                worker._done += int(n or 0)
                worker.progress.emit(worker._done >> 20, max(1, worker._total >> 20))
                return super().update(n)

        return SignalBar

    def _planned(self, plan) -> None:
        self._total = plan.fetch_bytes
        self.planned.emit(plan.fetch_bytes / 1e9)

    @Slot()
    def run(self) -> None:
        from dynamicid_rt import pull_models

        try:
            pull_models(self.folder, tqdm_class=self._bar_class(), on_plan=self._planned)
        except DynamicIDError as exc:
            self.failed.emit(str(exc))
            return
        except Exception as exc:  # a network failure: one line in the window, never a crash
            self.failed.emit(f"download failed ({type(exc).__name__}: {exc}); try again later")
            return
        self.done.emit(self.folder)


class DownloadOffer(QWidget):
    """The button, its progress bar and cancel; ``ready`` gives the model folder once complete."""

    ready = Signal(object)  # Path
    message = Signal(str)

    def __init__(self, folder: Path | None = None, parent=None) -> None:
        super().__init__(parent)
        self.folder = folder or default_folder()
        resume = (self.folder / STARTED).is_file()  # a download cut short at an earlier launch
        self.button = QPushButton("Resume downloading the DynamicID models" if resume
                                  else f"Download the DynamicID models ({ESTIMATED_GB} GB)")
        self.button.setToolTip(f"into the Hugging Face cache, linked from {self.folder}; resumed on the next launch if cut")
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.setVisible(False)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.button)
        row.addWidget(self.bar)
        row.addWidget(self.cancel_button)
        self.button.clicked.connect(self.start)
        self.thread: QThread | None = None
        self.worker: PullWorker | None = None

    def start(self) -> None:
        if self.thread is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / STARTED).touch()
        except OSError as exc:
            self.message.emit(f"cannot write the model folder {self.folder} ({exc.strerror}); choose a folder instead")
            return
        self.thread, self.worker = QThread(self), PullWorker(self.folder)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.planned.connect(lambda gb: self.bar.setFormat(f"%p% of {gb:.1f} GB"))
        self.worker.progress.connect(self._progress)
        self.worker.done.connect(self._finished)
        self.worker.failed.connect(self._failed)
        self.cancel_button.clicked.connect(self.worker.cancel.set)
        self.button.setEnabled(False)
        self.bar.setVisible(True)
        self.bar.setRange(0, 0)  # busy until the plan is known
        self.cancel_button.setVisible(True)
        self.thread.start()

    def _progress(self, done: int, total: int) -> None:
        self.bar.setRange(0, total)
        self.bar.setValue(min(done, total))

    def _stop(self) -> None:
        if self.thread is not None:
            self.thread.quit()
            self.thread.wait()
        self.thread = self.worker = None
        self.cancel_button.setVisible(False)
        self.bar.setVisible(False)
        self.button.setEnabled(True)

    def _finished(self, folder: Path) -> None:
        self._stop()
        (self.folder / STARTED).unlink(missing_ok=True)
        self.button.setVisible(False)
        self.ready.emit(folder)

    def _failed(self, text: str) -> None:
        self._stop()
        self.button.setText("Resume downloading the DynamicID models")
        self.message.emit(text)
