"""Desktop round 3 (issue 19), one test per item, on the real window and widgets with realistic
input (typed keys, clicks, drags, dropped files), plus the layout rules as a Hypothesis property."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import pytest  # noqa: E402

pytest.importorskip("PySide6", reason="the desktop app needs PySide6 (pip install 'dynamicid-rt[desktop]')")
pytest.importorskip("pytestqt", reason="the desktop tests need pytest-qt")
hypothesis = pytest.importorskip("hypothesis", reason="the layout property needs hypothesis")

from hypothesis import example, given, settings, strategies as st  # noqa: E402
from PySide6.QtCore import QPointF, QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QFileDialog  # noqa: E402

from desktop_fixtures import _drag, _small, _wait_people, recorder, store, window  # noqa: E402,F401
from dynamicid_rt import IdentityMatch, default_boxes  # noqa: E402
from dynamicid_rt.desktop.app import MainWindow  # noqa: E402
from dynamicid_rt.desktop.run_controller import progress_text  # noqa: E402
from dynamicid_rt.desktop.canvas import LABEL_PX  # noqa: E402
from dynamicid_rt.desktop.people import PeopleModel, Role, Status  # noqa: E402
from dynamicid_rt.desktop.restore import restore_people  # noqa: E402
from dynamicid_rt.desktop.worker import ModelSpec  # noqa: E402
from dynamicid_rt.identity.check import rank_key  # noqa: E402


def _boxes(win) -> list:
    return [win.people.index(r).data(Role.BOX) for r in range(win.people.rowCount())]


def _focus(qtbot, widget) -> None:
    widget.window().activateWindow()
    widget.setFocus()
    qtbot.waitUntil(widget.hasFocus)


# -- 1. typing a strength ------------------------------------------------------------------------

@pytest.mark.parametrize("delay_ms", [1, 12, 60])
def test_1_typing_a_strength_sets_what_was_typed(qtbot, window, samples, delay_ms):
    win = window
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png"])
    _wait_people(qtbot, win, 2)
    win.people_panel.select_row(1)
    spin = win.people_panel.strength_spin
    _focus(qtbot, spin)
    qtbot.keyClick(spin, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(spin, "0.6", delay=delay_ms)
    assert win.people.index(1).data(Role.ID_SCALE) == pytest.approx(0.6)
    qtbot.keyClick(spin, Qt.Key.Key_Tab)
    assert spin.value() == pytest.approx(0.6) and "strength 0.60" in win.people.index(1).data(Qt.ItemDataRole.DisplayRole)
    assert win.people.index(0).data(Role.ID_SCALE) == 1.0  # the other person is untouched
    # Selecting the other person shows their own value.
    win.people_panel.select_row(0)
    assert spin.value() == 1.0


# -- 2. layouts survive changes of people; undo/redo -----------------------------------------------

BOX = st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(2, 8), st.integers(2, 8)).map(
    lambda t: (t[0] / 8, t[1] / 8, min(1.0, (t[0] + t[2]) / 8), min(1.0, (t[1] + t[3]) / 8)))
OPS = st.one_of(
    st.tuples(st.just("add")),
    st.tuples(st.just("remove"), st.integers(0, 3)),
    st.tuples(st.just("move"), st.integers(0, 3), BOX),
    st.tuples(st.just("restore"), st.lists(BOX, min_size=1, max_size=4)),
    st.tuples(st.just("fail"), st.integers(0, 3)),
    st.tuples(st.just("retry"), st.integers(0, 3)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(OPS, max_size=25))
# Found in CI: a layout restored while a person's encoding had failed gives that person's retry the restored box.
@example([("add",), ("move", 0, (0.0, 0.0, 0.25, 0.25)), ("move", 0, (0.0, 0.0, 0.25, 0.375)), ("fail", 0),
          ("restore", [(0.0, 0.0, 0.25, 0.25)]), ("retry", 0)])
def test_2_boxes_not_involved_never_change(qapp, ops):
    model = PeopleModel()
    photo = iter(range(10**6))
    failed_box: dict[int, tuple] = {}
    for op in ops:
        before = {p.key: p.box for p in model.people()}
        was_arranged = model.arranged
        people = model.people()
        involved: set[int] = set()
        kind = op[0]
        if kind == "add":
            if model.is_full():
                continue
            model.add_photo(f"/photos/p{next(photo)}.png")
            involved.add(model.people()[-1].key)
        elif not people:
            continue
        elif kind == "remove":
            row = op[1] % len(people)
            involved.add(people[row].key)
            model.remove(row)
        elif kind == "move":
            row = op[1] % len(people)
            if people[row].status is Status.ERROR:
                continue
            involved.add(people[row].key)
            model.setData(model.index(row), op[2], Role.BOX)  # what a drag on the canvas does
            assert model.people()[row].box == op[2]
        elif kind == "restore":
            if len(op[1]) == len(people):
                involved |= {p.key for p in people}
                # A restored layout gives a failed person the box a retry brings back.
                failed_box |= {p.key: box for p, box in zip(people, op[1]) if p.status is Status.ERROR}
            restore_people(model, {"boxes": op[1]})
        elif kind == "fail":
            row = op[1] % len(people)
            p = people[row]
            if p.status is Status.ERROR:
                continue
            involved.add(p.key)
            failed_box[p.key] = p.box
            model.set_encode_failed(p.key, p.encode_version, "no face found in the photo")
            assert model.people()[row].box is None
        elif kind == "retry":
            row = op[1] % len(people)
            p = people[row]
            if p.status is not Status.ERROR:
                continue
            involved.add(p.key)
            model.retry(row)
            if was_arranged:
                assert model.people()[row].box == failed_box[p.key]  # the box it had comes back
        after = {p.key: p.box for p in model.people()}
        if was_arranged or kind in ("move", "restore"):
            # An arranged layout: nobody else's box moves.
            for key in before.keys() & after.keys() - involved:
                assert after[key] == before[key], (op, key)
        if not model.arranged:
            placed = [p.box for p in model.people() if p.status is not Status.ERROR]
            assert placed == default_boxes(len(placed))
        assert all(p.box is None for p in model.people() if p.status is Status.ERROR)


def test_2_arranged_layout_kept_when_people_change_with_undo_redo(qtbot, window, samples):
    win = window
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png"])
    _wait_people(qtbot, win, 2)
    canvas = win.canvas
    win.tabs.setCurrentIndex(0)
    # Shrink person 2's box from its bottom-right corner, then move person 1's box down.
    r = canvas.box_rect(1)
    _drag(qtbot, canvas, QPointF(r.right() - 2, r.bottom() - 2), QPointF(r.right() - 60, r.bottom() - 80))
    start = canvas.box_rect(0).center()
    _drag(qtbot, canvas, start, start + QPointF(0, 0))  # a click, not an edit: nothing to undo
    arranged = _boxes(win)
    assert arranged[1] != (0.0, 0.5, 1.0, 1.0)
    # A third person gets a free region; the others stay where the user put them.
    win.people_panel.add_photos([samples / "person_a_smiling.png"])
    _wait_people(qtbot, win, 3)
    boxes = _boxes(win)
    assert boxes[:2] == arranged
    # A photo without a face: its addition and its failure leave the others alone.
    win.people_panel.add_photos([samples / "no_face.png"])
    _wait_people(qtbot, win, 4)
    assert _boxes(win)[:3] == boxes and _boxes(win)[3] is None
    # Removing a person leaves the other boxes alone.
    win.people.remove(0)
    assert _boxes(win)[:2] == boxes[1:]
    # Undo/redo with the keys of every image tool.
    before_drag = _boxes(win)
    r = canvas.box_rect(0)
    _drag(qtbot, canvas, r.center(), r.center() + QPointF(-30, 20))
    dragged = _boxes(win)
    assert dragged != before_drag
    qtbot.keyClick(win, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert _boxes(win) == before_drag
    qtbot.keyClick(win, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert _boxes(win) == dragged
    # Reset boxes is one undoable step too.
    win.layout_tab.reset_boxes_button.click()
    assert [b for b in _boxes(win) if b is not None] == default_boxes(2)
    qtbot.keyClick(win, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert _boxes(win) == dragged


# -- 3. the tab the user chose stays during a run ---------------------------------------------------

def test_3_tab_choice_respected_during_a_run(qtbot, window, recorder, samples):
    win = window
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png"])
    _wait_people(qtbot, win, 2)
    _small(win, steps=8)
    win.form.sampler_combo.setCurrentIndex(win.form.sampler_combo.findData("ddim"))
    recorder.step_delay = 0.15
    frames = []
    win.runner.progressed.connect(lambda step, *_: frames.append(step))
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
        assert win.tabs.currentWidget() is win.preview_view  # the run starts on the preview
        qtbot.waitUntil(lambda: len(frames) >= 1, timeout=20000)
        bar = win.tabs.tabBar()
        qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(0).center())  # Layout
        seen = len(frames)
        r = win.canvas.box_rect(0)
        _drag(qtbot, win.canvas, r.center(), r.center() + QPointF(25, 0))
        edited = _boxes(win)
        qtbot.waitUntil(lambda: len(frames) >= seen + 2, timeout=20000)
        assert win.tabs.currentIndex() == 0 and _boxes(win) == edited
    assert win.tabs.currentIndex() == 0  # still the user's tab when the run ends
    assert win.gallery_model.rowCount() == 1


# -- 4. impossible combinations cannot be entered -------------------------------------------------

def test_4_batch_and_best_of_exclude_each_other_in_the_form(qtbot, window, samples):
    win = window
    form = win.form
    assert not form.best_of_spin.isEnabled() and "Add a person" in form.best_of_spin.toolTip()  # nobody to rank
    win.people_panel.add_photos([samples / "person_a.png"])
    _wait_people(qtbot, win, 1)
    _small(win, steps=1)
    win.form.sampler_combo.setCurrentIndex(win.form.sampler_combo.findData("ddim"))
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
    assert win.progress_bar.format().startswith("done in")
    _focus(qtbot, form.best_of_spin)
    qtbot.keyClick(form.best_of_spin, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(form.best_of_spin, "2")
    assert form.best_of_spin.value() == 2 and not form.batch_spin.isEnabled() and "Best of to 1" in form.batch_spin.toolTip()
    qtbot.keyClicks(form.batch_spin, "2")  # a disabled field takes no keys
    request = win.build_request()
    assert (request.batch, request.best_of) == (1, 2)
    # With best of back at 1 a batch can be typed, and then best of is greyed out.
    qtbot.keyClick(form.best_of_spin, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(form.best_of_spin, "1")
    _focus(qtbot, form.batch_spin)
    qtbot.keyClick(form.batch_spin, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(form.batch_spin, "2")
    assert form.batch_spin.value() == 2 and not form.best_of_spin.isEnabled() and "Batch to 1" in form.best_of_spin.toolTip()
    request = win.build_request()
    assert (request.batch, request.best_of) == (2, 1)
    # A refused start never leaves the previous run's "done in" up.
    win.form.prompt_edit.clear()
    assert not win.generate() and not win.progress_bar.format().startswith("done")


# -- 5. a wrong model folder --------------------------------------------------------------------

def test_5_wrong_model_folder_names_the_models_in_use_in_one_line(qtbot, window, tmp_path, tiny_bundle):
    win = window
    in_use = win.models_bar.model_label.text()
    wrong = tmp_path / "wrongmodels"
    wrong.mkdir()
    win.set_models(ModelSpec(wrong, "torch"))
    qtbot.waitUntil(lambda: not win.loading, timeout=10000)
    assert win.models_bar.model_label.text() == in_use and "Loading" not in win.models_bar.model_label.text()
    message = win.models_bar.banner.text()
    assert "\n" not in message and message.count(str(wrong)) == 1 and "Still using" in message
    assert "not a model folder" in message and len(message) - len(str(wrong)) - len(str(tiny_bundle)) < 200


# -- 6. the empty prompt --------------------------------------------------------------------------

def test_6_empty_prompt_is_refused_and_its_hint_looks_like_a_hint(qtbot, window, recorder):
    win = window
    _small(win)
    win.form.prompt_edit.clear()
    assert win.form.prompt_edit.property("empty") is True
    assert win.form.prompt_edit.font().italic() or "italic" in win.form.prompt_edit.styleSheet()
    calls = len(recorder.calls)
    qtbot.keyClick(win, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert not win.runner.running and "Write a prompt" in win.error_label.text()
    assert not [name for name, _ in recorder.calls[calls:] if name == "generate"]
    assert win.form.prompt_edit.hasFocus()
    qtbot.keyClicks(win.form.prompt_edit, "a cat")
    assert win.form.prompt_edit.property("empty") is False


# -- 7. a question that does not take the keyboard ----------------------------------------------

def test_7_leaving_out_a_person_is_asked_without_taking_the_keyboard(qtbot, window, samples, recorder):
    win = window
    win.people_panel.add_photos([samples / "person_a.png", samples / "no_face.png"])
    _wait_people(qtbot, win, 2)
    _small(win, steps=1)
    negative = win.form.negative_edit
    _focus(qtbot, negative)
    qtbot.keyClick(negative, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert win.question_bar.isVisible() and "no_face" in win.question_bar.text()
    qtbot.keyClicks(negative, "yes, blurry")
    qtbot.keyClick(negative, Qt.Key.Key_Y)
    qtbot.keyClick(negative, Qt.Key.Key_Return)
    assert negative.hasFocus() and negative.toPlainText().startswith("yes, blurry")
    assert not win.runner.running and win.gallery_model.rowCount() == 0
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        qtbot.mouseClick(win.question_bar.yes_button, Qt.MouseButton.LeftButton)
    assert win.gallery_model.rowCount() == 1


# -- 8. badges and gallery --------------------------------------------------------------------

def test_8_ranking_puts_present_people_first_and_says_so():
    missing_but_high = [IdentityMatch("anna", (0, 0, 1, .5), None, None), IdentityMatch("ben", (0, .5, 1, 1), 0.70, (1, 1, 2, 2))]
    both_swapped = [IdentityMatch("anna", (0, 0, 1, .5), 0.10, (1, 1, 2, 2), looks_like="ben"),
                    IdentityMatch("ben", (0, .5, 1, 1), -0.10, (3, 1, 4, 2), looks_like="anna")]
    both_right = [IdentityMatch("anna", (0, 0, 1, .5), 0.30, (1, 1, 2, 2)), IdentityMatch("ben", (0, .5, 1, 1), 0.20, (3, 1, 4, 2))]
    ranked = sorted([missing_but_high, both_swapped, both_right], key=rank_key)
    assert ranked == [both_right, both_swapped, missing_but_high]
    from dynamicid_rt.desktop.views import RANKING

    assert "face was found" in RANKING and "swapped" in RANKING and "least recognisable" in RANKING


@pytest.mark.parametrize("size", [None, (1280, 800)])
def test_8_six_results_fit_readably(qtbot, window, samples, size):
    win = window
    if size is None:
        # The default size is the screen's where the screen is smaller (offscreen Qt: 800×600):
        # the window never opens past its edges (round 4, item 7).
        # (The real-window test checks that on 1280×800 and 1366×768 screens.)
        room = win.screen().availableGeometry()
        if room.width() < 1280 or room.height() < 800:
            pytest.skip(f"a {room.width()}×{room.height()} screen has no room for six results at the default size")
        assert room.contains(win.frameGeometry())
    else:
        win.resize(*size)
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png", samples / "person_a_smiling.png"])
    _wait_people(qtbot, win, 3)
    _small(win, steps=1)
    win.form.sampler_combo.setCurrentIndex(win.form.sampler_combo.findData("ddim"))
    win.form.best_of_spin.setValue(2)
    for _ in range(3):
        with qtbot.waitSignal(win.runEnded, timeout=60000):
            assert win.generate()
    qtbot.wait(50)
    view = win.gallery.view
    assert win.gallery_model.rowCount() == 6
    shown = view.viewport().rect()
    for row in range(6):
        cell = view.visualRect(win.gallery_model.index(row))
        assert shown.contains(cell), f"result {row + 1} is cut off ({cell} in {shown})"
    assert "swap" in win.gallery.header.toolTip() and "cosine" in win.gallery.header.toolTip()
    names = [label.text().split(" ")[0].rstrip(":") for label in win.badges.labels]
    assert names == ["person_a", "person_b", "person_a_smiling"]


# -- 9. details --------------------------------------------------------------------------------

def test_9_cancel_and_decode_are_said_in_the_users_steps(qtbot, window, recorder):
    win = window
    _small(win, steps=3)  # the default sampler (PNDM) makes one model call more than its steps
    recorder.step_delay = 0.3
    formats = []
    win.runner.progressed.connect(lambda *_: formats.append(win.progress_bar.format()))
    with qtbot.waitSignal(win.runEnded, timeout=30000):
        assert win.generate()
        qtbot.waitUntil(lambda: win.progress_bar.value() >= 1, timeout=20000)
        qtbot.keyClick(win, Qt.Key.Key_Escape)
    message = win.statusBar().currentMessage()
    assert message.startswith("Cancelled after step ") and message.endswith(" of 3") and "of 4" not in message
    assert progress_text(3, 3, 0.0, 3, 1) == "step 3/3 · decoding…"
    assert progress_text(2, 4, 1.0, 2, 2) == "step 2/4 · decoding image 1 of 2…"
    recorder.step_delay = 0.0
    formats.clear()
    with qtbot.waitSignal(win.runEnded, timeout=30000):
        assert win.generate()
    assert formats[-1] == "step 3/3 · decoding…" and "0.0 s left" not in formats[-1]


def test_9_loading_says_what_it_is_doing(qtbot, recorder, store):
    release = threading.Event()

    def factory(spec):
        logging.getLogger("dynamicid_rt.tiny.bundle").info("tiny random bundle written to /home/me/.cache/tiny")
        release.wait(10)
        return recorder

    win = MainWindow(store=store, pipeline_factory=factory)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: "bundle written to tiny" in win.models_bar.model_label.text(), timeout=10000)
    assert win.models_bar.model_label.text().startswith("Loading tiny demo bundle")
    release.set()
    qtbot.waitUntil(lambda: win.loaded_info is not None, timeout=10000)
    win.close()


def test_9_dialogs_open_where_the_user_was_and_size_steps_are_remembered(qtbot, recorder, store, tiny_bundle, samples, monkeypatch, tmp_path):
    asked = []

    def fake_dialog(parent, caption, folder, filters):
        asked.append(folder)
        return [str(other / "someone.png")], filters

    other = tmp_path / "photos"
    other.mkdir()
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", staticmethod(fake_dialog))
    win = MainWindow(store=store, pipeline_factory=lambda spec: recorder, spec_override=ModelSpec(tiny_bundle, "torch"))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.loaded_info is not None, timeout=10000)
    win.people_panel.choose_photos()
    win.people_panel.choose_photos()
    assert asked == [str(samples), str(other)]  # the samples first, then the folder last used
    _focus(qtbot, win.form.width_spin)
    qtbot.keyClick(win.form.width_spin, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(win.form.width_spin, "384")
    _focus(qtbot, win.form.steps_spin)
    qtbot.keyClick(win.form.steps_spin, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(win.form.steps_spin, "7")
    win.close()
    again = MainWindow(store=QSettings(store.fileName(), QSettings.Format.IniFormat), pipeline_factory=lambda spec: recorder,
                       spec_override=ModelSpec(tiny_bundle, "torch"))
    qtbot.addWidget(again)
    assert (again.form.width_spin.value(), again.form.height_spin.value(), again.form.steps_spin.value()) == (384, 512, 7)
    assert again.people_panel.photo_folder == str(other)
    again.close()


def test_9_canvas_size_label_clear_of_the_boxes(qtbot, window, samples):
    win = window
    win.people_panel.add_photos([samples / "person_a.png"])
    _wait_people(qtbot, win, 1)
    win.tabs.setCurrentIndex(0)
    canvas = win.canvas
    frame, box = canvas.frame_rect(), canvas.box_rect(0)
    assert box == frame  # one person: the whole frame, its resize handle in the frame's corner
    assert frame.bottom() + LABEL_PX <= canvas.height()
    image = canvas.grab().toImage()
    background = image.pixel(2, 2)
    band = [image.pixel(x, y) for x in range(int(frame.left()), int(frame.right()))
            for y in range(int(frame.bottom()) + 3, int(frame.bottom()) + LABEL_PX - 2)]
    assert any(p != background for p in band)  # the "output 256×256 px" label is drawn under the frame


def test_9_openvino_sends_no_telemetry_from_our_process(tiny_bundle, tiny_engines, tmp_path):
    pytest.importorskip("openvino")
    home = tmp_path / "home"
    home.mkdir()
    code = ("import sys; from dynamicid_rt.modelfiles.paths import ModelPaths; from dynamicid_rt.backends import create_backend; "
            f"create_backend('openvino', ModelPaths.from_folder({str(tiny_bundle)!r}), engine_dir={str(tiny_engines)!r}).close(); "
            "print(sys.modules.get('openvino_telemetry'))")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HOME": str(home)}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("None") and list(home.iterdir()) == []  # nothing written to ~/intel


@pytest.mark.parametrize("env, expected", [
    ({"DISPLAY": ":4242"}, "could not connect to display :4242"),  # a stale DISPLAY
    ({"QT_QPA_PLATFORM": "nosuchplatform"}, "QT_QPA_PLATFORM=nosuchplatform"),
])
def test_18_qt_platform_failures_are_one_line_and_exit_1(env, expected):
    base = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    run = subprocess.run([sys.executable, "-m", "dynamicid_rt.cli", "desktop"], env={**base, **env}, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    # Where the xcb plugin's own library is missing, Qt stops at that, before it tries the display.
    missing_xcb_cursor = "DISPLAY" in env and "xcb-cursor0" in lines[0]
    assert len(lines) == 1 and (expected in lines[0] or missing_xcb_cursor), run.stderr
