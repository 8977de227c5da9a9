"""Shared by the desktop tests (offscreen Qt): the real Pipeline on the tiny bundle, wrapped only to
record in which thread each model call runs; a window on it; and the input helpers."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from dynamicid_rt.desktop.app import MainWindow  # noqa: E402
from dynamicid_rt.desktop.people import Status  # noqa: E402
from dynamicid_rt.desktop.worker import ModelSpec  # noqa: E402

GUI_THREAD = threading.get_ident()  # pytest (and Qt's GUI thread) run in the main thread


class RecordingPipeline:
    """The real pipeline plus a log of (method, thread) for every call; optionally slows each step
    (so a cancel lands mid-run) or fails (so the error path runs) or attaches activation maps."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe
        self.calls: list[tuple[str, int]] = []
        self.step_delay = 0.0
        self.fail_with: Exception | None = None
        self.steps_run: list[int] = []
        self.cancel_seen_after: int | None = None  # steps done when the cancel flag was first seen
        self.maps = False

    @property
    def is_tiny(self) -> bool:
        return self._pipe.is_tiny

    @property
    def has_imr(self) -> bool:
        return self._pipe.has_imr

    @property
    def paths(self):
        return self._pipe.paths

    @property
    def default_sampler(self) -> str:
        return self._pipe.default_sampler

    @property
    def scheduler_config(self):
        return self._pipe.scheduler_config

    def describe(self) -> dict:
        return self._pipe.describe()

    def encode_identity(self, *args, **kwargs):
        self.calls.append(("encode_identity", threading.get_ident()))
        return self._pipe.encode_identity(*args, **kwargs)

    def detect_faces(self, *args, **kwargs):
        self.calls.append(("detect_faces", threading.get_ident()))
        return self._pipe.detect_faces(*args, **kwargs)

    def generate(self, request, progress=None, cancel=None):
        self.calls.append(("generate", threading.get_ident()))
        self.steps_run = []
        self.cancel_seen_after = None
        if self.fail_with is not None:
            raise self.fail_with

        def on_step(info):
            self.steps_run.append(info.step)
            progress(info)
            time.sleep(self.step_delay)
            if cancel.is_set() and self.cancel_seen_after is None:
                self.cancel_seen_after = info.step

        result = self._pipe.generate(request, progress=on_step, cancel=cancel)
        if self.maps:
            n = len(request.identities)
            # Person k lights up the k-th vertical strip: a map the overlay test can predict.
            maps = np.zeros((n, 8, 8), np.float32)
            for k in range(n):
                maps[k, :, k * 8 // n : (k + 1) * 8 // n] = 1.0
            result.activation_maps = [maps for _ in result.images]
        return result

    def close(self) -> None:
        self.calls.append(("close", threading.get_ident()))  # the shared pipeline stays open


@pytest.fixture(scope="module")
def recorder(tiny_bundle, tmp_path_factory):
    from dynamicid_rt import Pipeline

    pipe = Pipeline.load(tiny_bundle, backend="torch", device="cpu", cache_dir=tmp_path_factory.mktemp("desktop-cache"))
    yield RecordingPipeline(pipe)
    pipe.close()


@pytest.fixture
def store(tmp_path) -> QSettings:
    s = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    s.setValue("output/folder", str(tmp_path / "out"))
    return s


@pytest.fixture
def window(qtbot, recorder, store, tiny_bundle):
    recorder.step_delay, recorder.fail_with, recorder.maps = 0.0, None, False
    loads: list[int] = []

    def factory(spec):
        loads.append(threading.get_ident())
        return recorder

    win = MainWindow(store=store, pipeline_factory=factory, spec_override=ModelSpec(tiny_bundle, "torch"))
    # pytest-qt closes the window first: a test that left results unsaved answers the Quit question.
    qtbot.addWidget(win, before_close_func=lambda w: answer_quit(w, QMessageBox.StandardButton.Discard))
    win.show()
    qtbot.waitUntil(lambda: win.loaded_info is not None, timeout=10000)
    yield win
    win.close()
    assert loads and all(t != GUI_THREAD for t in loads)
    assert recorder.calls and all(t != GUI_THREAD for _, t in recorder.calls), "model code ran in the GUI thread"


def answer_quit(win, button: QMessageBox.StandardButton, seen: list | None = None) -> None:
    """Click ``button`` of the Quit question once it is asked (it runs its own event loop), noting
    its text in ``seen``."""
    def answer() -> None:
        box = win.close_question
        if box is None:
            return
        if seen is not None:
            seen.append(f"{box.text()} {box.informativeText()}")
        box.button(button).click()

    QTimer.singleShot(0, answer)


def _wait_people(qtbot, win, n: int) -> None:
    def done():
        people = win.people.people()
        return len(people) == n and all(p.status is not Status.ENCODING for p in people)

    qtbot.waitUntil(done, timeout=20000)


def _small(win, steps: int = 2) -> None:
    win.form.width_spin.setValue(256)
    win.form.height_spin.setValue(256)
    win.form.steps_spin.setValue(steps)
    win.form.random_seed_check.setChecked(False)
    win.form.seed_edit.setText("11")
    win.form.prompt_edit.setPlainText("two people in a park")


def _drag(qtbot, widget, start: QPointF, end: QPointF) -> None:
    qtbot.mousePress(widget, Qt.MouseButton.LeftButton, pos=start.toPoint())
    qtbot.mouseMove(widget, pos=((start + end) / 2).toPoint())
    qtbot.mouseMove(widget, pos=end.toPoint())
    qtbot.mouseRelease(widget, Qt.MouseButton.LeftButton, pos=end.toPoint())


def _drop(widget, paths) -> None:
    """Hand the widget a file drop event, as Qt does at the end of a drag."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    event = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    widget.dropEvent(event)
    assert event.isAccepted()
