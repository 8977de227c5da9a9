"""Desktop round 4 (issue 28), one test per item, on the real window and widgets with realistic input
(typed keys at a human pace, clicks, dropped files, a relaunch on the same settings store), plus the
import rule of issue 31: no module of desktop/ imports another in a circle."""
from __future__ import annotations

import ast
import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import pytest  # noqa: E402

pytest.importorskip("PySide6", reason="the desktop app needs PySide6 (pip install 'dynamicid-rt[desktop]')")
pytest.importorskip("pytestqt", reason="the desktop tests need pytest-qt")

from PySide6.QtCore import QPoint, QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QAbstractButton, QAbstractSpinBox, QComboBox, QFileDialog, QLineEdit, QMessageBox, QPlainTextEdit, QScrollArea, QWidget,
)

from desktop_fixtures import _drop, _small, _wait_people, answer_quit, recorder, store, window  # noqa: E402,F401
from test_lora_panel import lcm_lora  # noqa: E402,F401
from dynamicid_rt import BACKENDS, IdentityMatch, read_parameters  # noqa: E402
from dynamicid_rt.desktop.app import MainWindow  # noqa: E402
from dynamicid_rt.desktop.image_tabs import NO_MAPS  # noqa: E402
from dynamicid_rt.desktop.people import Status  # noqa: E402
from dynamicid_rt.desktop.worker import ModelSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TYPING_MS = 40  # between keys, as a person types


def _type(qtbot, widget, text: str) -> None:
    """Select what the field holds and type ``text`` over it, key by key."""
    widget.window().activateWindow()
    widget.setFocus()
    qtbot.waitUntil(widget.hasFocus)
    qtbot.keyClick(widget, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(widget, text, delay=TYPING_MS)


def _relaunch(qtbot, store, recorder, tiny_bundle) -> MainWindow:
    """A new window on the same settings file, as after quitting and starting the app again."""
    again = MainWindow(store=QSettings(store.fileName(), QSettings.Format.IniFormat), pipeline_factory=lambda spec: recorder,
                       spec_override=ModelSpec(tiny_bundle, "torch"))
    qtbot.addWidget(again, before_close_func=lambda w: answer_quit(w, QMessageBox.StandardButton.Discard))
    again.show()
    qtbot.waitUntil(lambda: again.loaded_info is not None, timeout=10000)
    return again


def _run(qtbot, win) -> None:
    with qtbot.waitSignal(win.runEnded, timeout=60000) as ended:
        assert win.generate(), win.error_label.text() or win.question_bar.text()
    assert ended.args == ["done"]


def _controls(win) -> list[QWidget]:
    kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QPlainTextEdit)
    return [w for w in win.findChildren(QWidget) if isinstance(w, kinds) and w.isVisibleTo(win) and w.window() is win]


def _positions(win) -> dict[int, QPoint]:
    return {id(w): w.mapTo(win, QPoint(0, 0)) for w in _controls(win)}


# -- 1. a seed of 2**31 or more is reused --------------------------------------------------------

def test_1_reuse_seed_past_a_cpp_int(qtbot, window):
    win = window
    _small(win, steps=1)
    _type(qtbot, win.form.seed_edit, "3202994599")
    _run(qtbot, win)
    assert win.gallery.current_entry().seed == 3202994599
    qtbot.mouseClick(win.form.random_seed_check, Qt.MouseButton.LeftButton)
    assert win.form.random_seed_check.isChecked()
    qtbot.mouseClick(win.gallery.reuse_button, Qt.MouseButton.LeftButton)
    assert not win.form.random_seed_check.isChecked() and win.form.seed_edit.text() == "3202994599"
    assert win.form.values()["seed"] == 3202994599


# -- 2. every result on disk, and Quit asks for those that are not -----------------------------

def test_2_results_are_saved_as_made_and_quit_asks(qtbot, recorder, store, tiny_bundle, tmp_path):
    win = _relaunch(qtbot, store, recorder, tiny_bundle)
    out = tmp_path / "out"
    _small(win, steps=1)
    _run(qtbot, win)  # no Ctrl+S
    files = sorted(out.glob("*.png"))
    entry = win.gallery.current_entry()
    assert files == [entry.saved] and "Seed: 11" in read_parameters(files[0])
    assert entry.saved.name in win.gallery.seed_label.text()  # the file is said where the image is
    # The user turns saving off: the next result stays in the session only, and it is remembered.
    qtbot.mouseClick(win.gallery.save_each_check, Qt.MouseButton.LeftButton)
    assert not win.save_each_action.isChecked()
    win.form.seed_edit.setText("12")
    _run(qtbot, win)
    assert sorted(out.glob("*.png")) == files and win.gallery_model.unsaved() == [win.gallery.current_entry()]
    # Quit asks; Cancel keeps the window and its results.
    seen: list[str] = []
    answer_quit(win, QMessageBox.StandardButton.Cancel, seen)
    assert not win.close()
    assert win.isVisible() and win.gallery_model.rowCount() == 2 and "1 result" in seen[0] and "not saved" in seen[0]
    # Save writes it, then the window closes.
    answer_quit(win, QMessageBox.StandardButton.Save, seen)
    assert win.close()
    assert len(seen) == 2 and len(list(out.glob("*.png"))) == 2
    again = _relaunch(qtbot, store, recorder, tiny_bundle)
    assert not again.gallery.save_each_check.isChecked()
    again.close()


# -- 3. the canvas follows the size fields, also after a relaunch --------------------------------

def test_3_canvas_has_the_remembered_size_after_a_relaunch(qtbot, recorder, store, tiny_bundle):
    win = _relaunch(qtbot, store, recorder, tiny_bundle)
    _type(qtbot, win.form.width_spin, "384")
    assert win.canvas.output_size == (384, 512)  # at every moment, not only when a field is left
    _type(qtbot, win.form.height_spin, "256")
    assert win.canvas.output_size == (384, 256)
    win.close()
    again = _relaunch(qtbot, store, recorder, tiny_bundle)
    assert (again.form.width_spin.value(), again.form.height_spin.value()) == (384, 256)
    assert again.canvas.output_size == (384, 256)
    frame = again.canvas.frame_rect()
    assert abs(frame.width() / frame.height() - 1.5) < 0.01
    again.close()


# -- 4. a backend that is not installed, or fails, leaves the models in use ----------------------

def test_4_failed_backend_switch_keeps_the_models(qtbot, recorder, store, tiny_bundle):
    loads: list[str] = []

    def factory(spec):
        loads.append(spec.backend)
        if spec.backend == "openvino":
            raise RuntimeError("openvino exploded while compiling")
        return recorder

    win = MainWindow(store=store, pipeline_factory=factory, spec_override=ModelSpec(tiny_bundle, "torch"))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.loaded_info is not None, timeout=10000)
    combo = win.models_bar.backend_combo
    missing = [name for name in BACKENDS if BACKENDS[name].missing_packages()]
    for name in missing:  # marked, with the install line as tooltip
        index = combo.findData(name)
        assert combo.itemText(index) == f"{name} (not installed)"
        assert "pip install" in combo.itemData(index, Qt.ItemDataRole.ToolTipRole)
    installed_texts = [combo.itemText(i) for i in range(combo.count()) if combo.itemData(i) not in missing]
    assert "torch" in installed_texts and all("not installed" not in t for t in installed_texts)

    def choose(name: str) -> None:  # as a click on the item of the open list does
        index = combo.findData(name)
        combo.setCurrentIndex(index)
        combo.activated.emit(index)

    before = dict(win.loaded_info)
    if missing:
        choose(missing[0])
        qtbot.waitUntil(lambda: "not installed" in win.models_bar.banner.text(), timeout=10000)
        assert loads == ["torch"]  # nothing was closed or opened
        assert "not installed" in win.models_bar.banner.text() and "pip install" in win.models_bar.banner.text()
        assert win.loaded_info == before and win.generate_button.isEnabled()
        assert combo.currentData() == "torch" and win.models_bar.model_label.text() != "not loaded"
    # An installed backend that fails to load: the models in use are opened again.
    choose("openvino")
    qtbot.waitUntil(lambda: "openvino exploded" in win.models_bar.banner.text(), timeout=20000)
    assert loads[-2:] == ["openvino", "torch"]
    assert "openvino exploded" in win.models_bar.banner.text() and "Still using" in win.models_bar.banner.text()
    assert win.loaded_info is not None and win.loaded_info["backend"] == "torch" and win.generate_button.isEnabled()
    assert combo.currentData() == "torch"
    _small(win, steps=1)
    _run(qtbot, win)
    win.close()


# -- 5, 7, 9. the window fits, nothing jumps, every control is reachable -------------------------

def test_5_9_messages_never_move_a_control(qtbot, window, samples):
    win = window
    win.resize(1280, 800)
    win.people_panel.add_photos([samples / "person_a.png"])
    _wait_people(qtbot, win, 1)
    qtbot.wait(50)
    before = _positions(win)
    form_scroll = win.form_scroll
    # The no-face bar, the "several faces" note, a problem line and a models banner all appear ...
    win.people_panel.add_photos([samples / "no_face.png", samples / "two_faces.png"])
    _wait_people(qtbot, win, 3)
    win.people_panel.select_row(2)
    assert "faces in this photo" in win.people_panel.warning_label.text()
    _small(win, steps=1)
    assert not win.generate() and win.question_bar.is_asked()
    win.models_bar.set_rejected(ModelSpec(Path("/nowhere"), "torch"), "it is not a folder", still_loaded=True)
    win.models_bar.set_loading(ModelSpec(None, "torch"))  # a load starting shows its busy bar
    qtbot.wait(50)
    after = _positions(win)
    # ... and no control that was there moved (the new ones are the question's buttons).
    moved = [w for w in _controls(win) if id(w) in before and before[id(w)] != after[id(w)]]
    assert not moved, [f"{type(w).__name__} {w.text() if hasattr(w, 'text') else ''}" for w in moved]
    # The settings column never scrolls sideways, and the LoRA buttons are whole.
    assert not form_scroll.horizontalScrollBar().isVisible()
    for button in (win.lora_panel.add_button, win.lora_panel.remove_button):
        form_scroll.ensureWidgetVisible(button)
        qtbot.wait(10)
        assert button.visibleRegion().boundingRect() == button.rect()


def test_7_window_fits_a_768_px_laptop_at_125_percent_and_its_geometry_is_remembered(qtbot, recorder, store, tiny_bundle):
    win = _relaunch(qtbot, store, recorder, tiny_bundle)
    # 1366×768 at 125 %: 1093×614 device-independent pixels, less a task bar and a title bar.
    minimum = win.minimumSizeHint().expandedTo(win.minimumSize())
    assert minimum.width() <= 1093 and minimum.height() <= 560, minimum
    room = win.screen().availableGeometry()
    assert win.width() <= max(room.width(), minimum.width()) and win.height() <= max(room.height(), minimum.height())
    win.resize(minimum)
    qtbot.wait(50)
    # At the smallest size every control can still be reached (in view, or scrolled into view).
    for control in _controls(win):
        scroll = next((p for p in _ancestors(control) if isinstance(p, QScrollArea)), None)
        if scroll is not None:  # scrolled to the whole control (ensureWidgetVisible aims at a text cursor)
            centre = control.mapTo(scroll.widget(), control.rect().center())
            scroll.ensureVisible(centre.x(), centre.y(), control.width() // 2 + 4, control.height() // 2 + 4)
        shown = control.visibleRegion().boundingRect()
        assert shown == control.rect(), (
            f"{type(control).__name__} {getattr(control, 'text', lambda: '')()} is cut off: {shown} of {control.rect()}")
    # A size the user chose that fits the screen (offscreen Qt's is 800 px wide) comes back.
    chosen = (minimum.width(), min(room.height(), 700) - 40)
    win.resize(*chosen)
    win.close()
    again = _relaunch(qtbot, store, recorder, tiny_bundle)
    assert (again.width(), again.height()) == chosen
    again.close()


def _ancestors(widget: QWidget):
    parent = widget.parentWidget()
    while parent is not None:
        yield parent
        parent = parent.parentWidget()


# -- 6. a <lora:…> tag without its LoRA is shown and asked about, never dropped silently ---------

def test_6_lora_tag_without_a_listed_lora(qtbot, window, lcm_lora):
    win = window
    _small(win, steps=1)
    win.lora_panel.add(lcm_lora, 1.0)
    _type(qtbot, win.form.prompt_edit, "two people in a park <lora:lcm-lora-sdv1-5:1>")
    assert win.form.prompt_note.text() == ""
    # The user removes the LoRA from the list: the tag is now one without a LoRA.
    win.lora_panel.table.selectRow(0)
    qtbot.mouseClick(win.lora_panel.remove_button, Qt.MouseButton.LeftButton)
    assert "<lora:lcm-lora-sdv1-5> is not in the LoRA list" in win.form.prompt_note.text()
    assert not win.generate() and not win.runner.running
    assert win.question_bar.is_asked() and "lcm-lora-sdv1-5" in win.question_bar.text()
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        qtbot.mouseClick(win.question_bar.yes_button, Qt.MouseButton.LeftButton)
    # What ran is what the prompt field says, and what the PNG says.
    assert win.form.prompt_edit.toPlainText() == "two people in a park" and win.form.prompt_note.text() == ""
    assert "<lora:" not in win.gallery.current_entry().parameters


# -- 8. a photo without a face takes no place ------------------------------------------------------

def test_8_a_faceless_photo_takes_none_of_the_four_places(qtbot, window, samples):
    win = window
    _drop(win.people_panel, [samples / "person_a.png", samples / "no_face.png", samples / "person_b.png",
                             samples / "person_a_smiling.png"])
    _wait_people(qtbot, win, 4)
    assert [p.status for p in win.people.people()].count(Status.ERROR) == 1
    assert win.people_panel.add_button.isEnabled()  # three in the image: room for one more
    _drop(win.people_panel, [samples / "two_faces.png"])
    _wait_people(qtbot, win, 5)
    in_image = win.people.in_image()
    assert len(in_image) == 4 and len({p.color for p in in_image}) == 4
    assert not win.people_panel.add_button.isEnabled()
    win.people_panel.select_row(1)  # the faceless photo: no place to come back to
    assert not win.people_panel.retry_button.isEnabled()
    assert win.build_request().identities and len(win.build_request().identities) == 4


# -- 10. stale messages go --------------------------------------------------------------------------

def test_10_messages_go_once_they_no_longer_apply(qtbot, window, tmp_path):
    win = window
    _small(win, steps=1)
    win.form.prompt_edit.clear()
    assert not win.generate() and "Write a prompt" in win.error_label.text()
    _type(qtbot, win.form.prompt_edit, "a cat")
    assert win.error_label.text() == ""
    _type(qtbot, win.form.seed_edit, "12x")
    assert not win.generate() and "seed" in win.error_label.text()
    qtbot.keyClick(win.form.seed_edit, Qt.Key.Key_Backspace)
    assert win.error_label.text() == ""
    _type(qtbot, win.form.prompt_edit, "a cat <lora:nowhere:1>")
    assert "nowhere" in win.form.prompt_note.text()
    _type(qtbot, win.form.prompt_edit, "a cat")
    assert win.form.prompt_note.text() == ""
    _run(qtbot, win)
    # The saved file is said in full where the image is, not behind the status bar's labels.
    saved = win.gallery.current_entry().saved
    assert saved.name in win.gallery.seed_label.text() and win.gallery.seed_label.toolTip() == str(saved)


# -- 11. the form offers only settings that run, and remembers them together -----------------------

def test_11_lcm_step_limit_and_settings_remembered_together(qtbot, recorder, store, tiny_bundle, lcm_lora):
    win = _relaunch(qtbot, store, recorder, tiny_bundle)
    win.form.sampler_combo.setCurrentIndex(win.form.sampler_combo.findData("lcm"))
    _type(qtbot, win.form.steps_spin, "80")
    assert win.form.steps_spin.value() <= 50 and win.build_request().steps <= 50  # never refused after Generate
    win.lora_panel.add(lcm_lora, 0.8)
    qtbot.mouseClick(win.lora_panel.fast_button, Qt.MouseButton.LeftButton)
    _small(win, steps=4)
    _run(qtbot, win)
    win.close()
    again = _relaunch(qtbot, store, recorder, tiny_bundle)
    form = again.form
    assert (form.sampler_combo.currentData(), form.steps_spin.value(), form.guidance_spin.value()) == ("lcm", 4, 1.0)
    assert [(p, round(s, 2)) for p, s in again.lora_panel.loras()] == [(lcm_lora, 0.8)]
    assert form.steps_spin.maximum() == 50
    again.close()


# -- 12. details --------------------------------------------------------------------------------------

def test_12_details(qtbot, window, samples, lcm_lora, tmp_path, monkeypatch):
    win = window
    win.resize(1280, 800)
    # Activation maps: the torch backend makes them, so the tab does not say it cannot.
    assert win.maps_view.text() != NO_MAPS
    # Badge names have all the width the cell has: a long name beside "no face" is not elided.
    win.people_panel.add_photos([samples / "person_a.png"])
    _wait_people(qtbot, win, 1)
    _small(win, steps=1)
    _run(qtbot, win)
    qtbot.wait(50)
    from dynamicid_rt.desktop.gallery_delegate import badge_texts

    cell = win.gallery.view.visualRect(win.gallery_model.index(0)).adjusted(1, 1, -1, -1)
    font = win.gallery.view.font()
    long = IdentityMatch("person_a_smiling", (0, 0, 1, 1), None, None)
    assert badge_texts(cell, long, font) == ("person_a_smiling", "no face")
    # The best-of caption only for a best-of run.
    assert "best first" not in win.gallery.header.text()
    win.form.best_of_spin.setValue(2)
    _run(qtbot, win)
    assert "best first" in win.gallery.header.text()
    # Focus is visible on the people list, the parameters box and the gallery.
    for view in (win.people_panel.list, win.gallery.params_view, win.gallery.view):
        view.setFocus()
        qtbot.waitUntil(view.hasFocus)
        focused = view.grab().toImage().pixelColor(1, view.height() // 2)
        win.generate_button.setFocus()
        qtbot.waitUntil(lambda: not view.hasFocus())
        unfocused = view.grab().toImage().pixelColor(1, view.height() // 2)
        assert focused == win.palette().highlight().color() and focused != unfocused, type(view).__name__
    # A dropped .safetensors joins the LoRA list; it is not "not a photo".
    _drop(win, [lcm_lora])
    assert [p for p, _ in win.lora_panel.loras()] == [lcm_lora] and "not a photo" not in win.people_panel.notice_label.text()
    _drop(win.people_panel, [lcm_lora])  # on the people list too
    assert len(win.lora_panel.loras()) == 1 and "not a photo" not in win.people_panel.notice_label.text()


def test_12_first_dialogs_do_not_open_in_a_hidden_folder(qtbot, recorder, store, tiny_bundle, tmp_path, monkeypatch):
    hidden = tmp_path / ".cache" / "dynamicid-rt"
    hidden.mkdir(parents=True)
    (hidden / "tiny").symlink_to(tiny_bundle)  # the demo bundle lives in the user's cache
    asked = []

    def fake_dialog(parent, caption, folder, filters):
        asked.append(folder)
        return [], filters

    monkeypatch.setattr(QFileDialog, "getOpenFileNames", staticmethod(fake_dialog))
    recorder_paths = type("Paths", (), {"root": hidden / "tiny"})()
    monkeypatch.setattr(type(recorder), "paths", property(lambda self: recorder_paths))
    win = MainWindow(store=store, pipeline_factory=lambda spec: recorder, spec_override=ModelSpec(hidden / "tiny", "torch"))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.loaded_info is not None, timeout=10000)
    win.people_panel.choose_photos()
    qtbot.mouseClick(win.lora_panel.add_button, Qt.MouseButton.LeftButton)
    assert len(asked) == 2 and not any(part.startswith(".") for folder in asked for part in Path(folder).parts), asked
    win.close()


# -- issue 31: no import circle in the desktop --------------------------------------------------------

def test_desktop_modules_import_each_other_without_a_circle():
    modules = {path.stem: path for path in (ROOT / "desktop").glob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):  # TYPE_CHECKING imports count too
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    targets.add(node.module.split(".")[0])
                else:
                    targets.update(alias.name for alias in node.names)
        edges[name] = {t for t in targets if t in modules and t != name}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in edges[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    circles = [c for c in map(cycle_from, sorted(edges)) if c]
    assert not circles, " ; ".join(" -> ".join(c) for c in circles)
    assert "person" in edges["layout"] and "people" not in edges["layout"]  # the shared value module
    assert "gallery" not in edges["gallery_delegate"]


def test_11_few_step_limits_are_the_ones_diffusers_has(tiny_bundle):
    """The form's limit for lcm/tcd is where diffusers' own schedulers start refusing, on the
    bundle's scheduler config and on one with another distillation length."""
    import json

    diffusers = pytest.importorskip("diffusers")
    from dynamicid_rt import max_sampler_steps
    from dynamicid_rt.sampling.schedules import SchedulerConfig

    raw = json.loads((tiny_bundle / "base" / "scheduler" / "scheduler_config.json").read_text())
    for original in (50, 24):
        config = SchedulerConfig.from_dict({**raw, "original_inference_steps": original})
        for name, cls in (("lcm", diffusers.LCMScheduler), ("tcd", diffusers.TCDScheduler)):
            limit = max_sampler_steps(name, config)
            scheduler = cls.from_config({**raw, "original_inference_steps": original})
            scheduler.set_timesteps(limit)
            with pytest.raises(ValueError):
                scheduler.set_timesteps(limit + 1)
