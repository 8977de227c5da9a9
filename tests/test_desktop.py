"""The desktop app on the tiny bundle (offscreen Qt): people, boxes, expressions, generation with
progress and preview, cancel, errors, save and restore, settings — with the real Pipeline, wrapped
only to record in which thread each model call runs."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("PySide6", reason="the desktop app needs PySide6 (pip install 'dynamicid-rt[desktop]')")
pytest.importorskip("pytestqt", reason="the desktop tests need pytest-qt")

from PySide6.QtCore import QPointF, QSettings, Qt  # noqa: E402
from PySide6.QtGui import QColor  # noqa: E402

from desktop_fixtures import GUI_THREAD, _drag, _drop, _small, _wait_people, recorder, store, window  # noqa: E402,F401
from dynamicid_rt.desktop.app import MainWindow  # noqa: E402
from dynamicid_rt.desktop.views import overlay_activation_maps  # noqa: E402
from dynamicid_rt.desktop.face_prompt import build_face_prompt  # noqa: E402
from dynamicid_rt.desktop.people import Role, Status  # noqa: E402
from dynamicid_rt.desktop.settings import AppSettings  # noqa: E402
from dynamicid_rt.desktop.worker import ModelSpec  # noqa: E402
from dynamicid_rt import read_parameters  # noqa: E402

def test_people_boxes_and_expression(qtbot, window, samples):
    win = window
    _drop(win.people_panel, [samples / "person_a.png", samples / "person_b.png"])
    win.people_panel.add_photos([samples / "no_face.png"])
    _wait_people(qtbot, win, 3)
    statuses = [p.status for p in win.people.people()]
    assert statuses == [Status.READY, Status.READY, Status.ERROR]
    bad = win.people.index(2)
    assert "no face" in bad.data(Role.ERROR).lower()
    win.people_panel.list.setCurrentIndex(bad)
    assert "no face" in win.people_panel.error_label.text().lower() and win.people_panel.retry_button.isEnabled()
    good = win.people.people()[0].identity
    assert good.thumbnail.ndim == 3 and good.source_prompt in win.people.index(0).data(Qt.ItemDataRole.DisplayRole)

    # Removing the face-less photo leaves two equal vertical strips (the release's default).
    win.people.remove(2)
    assert [win.people.index(r).data(Role.BOX) for r in range(2)] == [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)]

    # Move box 1 left by 40 px: same size, shifted by 40 px / frame width.
    canvas = win.canvas
    frame = canvas.frame_rect()
    start = canvas.box_rect(0).center()
    _drag(qtbot, canvas, start, start + QPointF(40, 30))
    y0, x0, y1, x1 = win.people.index(0).data(Role.BOX)
    # A full-height box cannot move down: it stays put vertically; sideways it moves by 40 px.
    assert (y0, y1) == (0.0, 1.0)
    assert x0 == pytest.approx(40 / frame.width(), abs=1.5 / frame.width())
    assert x1 - x0 == pytest.approx(0.5, abs=1e-6)
    # Dragging far past the right edge stops at the frame.
    start = canvas.box_rect(0).center()
    _drag(qtbot, canvas, start, start + QPointF(5 * frame.width(), 0))
    assert win.people.index(0).data(Role.BOX)[3] == pytest.approx(1.0)

    # Resize box 2 from its bottom-right corner: 50 px up and 30 px left.
    r = canvas.box_rect(1)
    corner = QPointF(r.right() - 2, r.bottom() - 2)
    _drag(qtbot, canvas, corner, corner + QPointF(-30, -50))
    y0, x0, y1, x1 = win.people.index(1).data(Role.BOX)
    assert (y0, x0) == (0.0, 0.5)
    assert y1 == pytest.approx(1.0 - 50 / frame.height(), abs=1.5 / frame.height())
    assert x1 == pytest.approx(1.0 - 30 / frame.width(), abs=1.5 / frame.width())
    # Dragging the left edge past the right one stops at the minimum box (64 px of the 256 px output).
    win.form.width_spin.setValue(256)
    r = canvas.box_rect(1)
    edge = QPointF(r.left() + 1, r.center().y())
    _drag(qtbot, canvas, edge, edge + QPointF(frame.width(), 0))
    y0, x0, y1, x1 = win.people.index(1).data(Role.BOX)
    assert x1 == pytest.approx(1.0 - 30 / frame.width(), abs=1.5 / frame.width())
    assert x1 - x0 == pytest.approx(64 / 256, abs=1e-3)

    # Expression preset through the panel: the model holds the release-worded prompt and re-encodes.
    win.people_panel.list.setCurrentIndex(win.people.index(0))
    combo = win.people_panel.expression_combo
    combo.setCurrentText("happy")
    combo.activated.emit(combo.currentIndex())
    pose_part = good.source_prompt.split(" expression, ", 1)[1]
    expected = f"in a happy expression, {pose_part}"
    assert win.people.index(0).data(Role.FACE_PROMPT) == expected
    _wait_people(qtbot, win, 2)
    edited = win.people.people()[0].identity
    assert edited.face_prompt == expected and not np.allclose(edited.tokens, edited.base_tokens)
    assert win.people_panel.face_prompt_edit.text() == expected

    # The request carries the boxes as they are on the canvas.
    _small(win)
    req = win.build_request()
    assert [tuple(b) for b in req.boxes] == [win.people.index(r).data(Role.BOX) for r in range(2)]
    win.people.set_mix(True)
    win.layout_tab.mix_slider.setValue(30)
    req = win.build_request()
    assert len(req.boxes) == 1 and req.mix == pytest.approx(0.3) and len(req.identities) == 2


def test_face_prompt_wording():
    assert build_face_prompt("unchanged", "unchanged", "in a neutral expression, in front view") is None
    assert build_face_prompt("sad", "unchanged", "in a neutral expression, facing up, in side view") == (
        "in a sad expression, facing up, in side view"
    )
    assert build_face_prompt("unchanged", "facing down", "in a happy expression, in front view") == (
        "in a happy expression, facing down, in front view"
    )
    assert build_face_prompt("angry", "side view", "") == "in a angry expression, in side view"


def test_several_faces_pick_one(qtbot, window, samples):
    win = window
    win.people_panel.add_photos([samples / "two_faces.png"])
    _wait_people(qtbot, win, 1)
    index = win.people.index(0)
    identity = index.data(Role.IDENTITY)
    assert identity.num_faces == 2 and win.people_panel.warning_label.text()
    assert win.people_panel.face_combo.isEnabled() and win.people_panel.face_combo.count() == 2
    other = 1 - identity.face_index
    win.people_panel.face_combo.setCurrentIndex(other)
    win.people_panel.face_combo.activated.emit(other)
    _wait_people(qtbot, win, 1)
    assert win.people.index(0).data(Role.IDENTITY).face_index == other


def test_generate_progress_preview_gallery_save_restore(qtbot, window, samples, tmp_path):
    win = window
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png"])
    _wait_people(qtbot, win, 2)
    _small(win, steps=3)
    win.form.negative_edit.setPlainText("blurry")
    win.form.guidance_spin.setValue(4.5)
    win.form.sampler_combo.setCurrentText("ddim")  # one UNet call per step (PNDM makes one more)
    steps_seen = []
    win.runner.worker.progressed.connect(lambda step, total, left, preview: steps_seen.append((step, total, preview.shape)))
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        qtbot.keyClick(win, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert [s[:2] for s in steps_seen] == [(1, 3), (2, 3), (3, 3)]
    # The tiny bundle has taesd/: previews are the denoised estimate decoded at full size.
    assert all(shape == (256, 256, 3) for _, _, shape in steps_seen)
    assert win.preview_view.has_image()
    assert win.gallery_model.rowCount() == 1
    entry = win.gallery_model.entry(0)
    assert entry.image.size == (256, 256) and entry.seed == 11
    assert "Seed: 11" in win.gallery.params_view.toPlainText() and "Sampler: DDIM" in win.gallery.params_view.toPlainText()
    assert win.progress_bar.value() == 3 and win.generate_button.isEnabled()
    # The torch backend provides activation maps: one per person, overlaid on the result.
    assert entry.activation_map is not None and entry.activation_map.shape == (2, 32, 32)
    assert win.maps_view.has_image()

    qtbot.keyClick(win, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    saved = entry.saved
    assert saved is not None and saved.parent == tmp_path / "out"
    text = read_parameters(saved)
    assert text.startswith("two people in a park") and "Seed: 11" in text and "Steps: 3" in text

    # Change the form, then drop the saved PNG: its settings come back.
    win.form.prompt_edit.setPlainText("something else")
    win.form.steps_spin.setValue(20)
    win.form.random_seed_check.setChecked(True)
    win.form.guidance_spin.setValue(9.0)
    win.form.width_spin.setValue(512)
    win.form.sampler_combo.setCurrentText("euler")
    _drop(win, [saved])
    assert win.form.prompt_edit.toPlainText() == "two people in a park"
    assert win.form.negative_edit.toPlainText() == "blurry"
    assert win.form.steps_spin.value() == 3 and win.form.guidance_spin.value() == pytest.approx(4.5)
    assert win.form.sampler_combo.currentData() == "ddim"
    assert not win.form.random_seed_check.isChecked() and win.form.seed_edit.text() == "11"
    assert (win.form.width_spin.value(), win.form.height_spin.value()) == (256, 256)
    assert win.people.index(0).data(Role.BOX) == (0.0, 0.0, 1.0, 0.5)

    # A second run adds to the gallery.
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
    assert win.gallery_model.rowCount() == 2
    assert np.array_equal(np.asarray(win.gallery_model.entry(0).image), np.asarray(win.gallery_model.entry(1).image))  # same seed


def test_cancel_stops_within_one_step(qtbot, window, recorder):
    win = window
    _small(win, steps=12)
    recorder.step_delay = 0.25
    first_step = []
    win.runner.worker.progressed.connect(lambda step, *_: first_step.append(step))
    with qtbot.waitSignal(win.runEnded, timeout=30000):
        assert win.generate()
        qtbot.waitUntil(lambda: bool(first_step), timeout=20000)
        qtbot.keyClick(win, Qt.Key.Key_Escape)
    assert recorder.cancel_seen_after is not None and recorder.cancel_seen_after < 12
    # The run stops at the first check after the flag was seen: no further step.
    assert recorder.steps_run[-1] == recorder.cancel_seen_after
    assert win.gallery_model.rowCount() == 0 and win.generate_button.isEnabled() and not win.runner.running
    assert win.progress_bar.format() == "cancelled"


def test_errors_show_in_the_window(qtbot, window, recorder):
    win = window
    _small(win)
    recorder.fail_with = RuntimeError("backend exploded")
    with qtbot.waitSignal(win.runEnded, timeout=20000):
        assert win.generate()
    assert "backend exploded" in win.error_label.text() and win.generate_button.isEnabled()
    # A form the request rejects never reaches the pipeline.
    recorder.fail_with = None
    win.form.seed_edit.setText("not a number")
    assert not win.generate() and "seed" in win.error_label.text()


def test_activation_maps_overlay(qtbot, window, recorder, samples):
    win = window
    recorder.maps = True
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png"])
    _wait_people(qtbot, win, 2)
    _small(win)
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
    assert win.maps_view.has_image()
    entry = win.gallery_model.entry(0)
    colors = entry.colors
    assert len(colors) == 2
    # The overlay against a blend written here: left half towards colour 1, right half colour 2.
    image = np.full((16, 16, 3), 100, np.uint8)
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, :, :2] = 1.0
    maps[1, :, 2:] = 1.0
    out = overlay_activation_maps(image, maps, colors, alpha=0.5)
    assert np.allclose(out[8, 1], 0.5 * 100 + 0.5 * np.array(colors[0]), atol=1)
    assert np.allclose(out[8, 14], 0.5 * 100 + 0.5 * np.array(colors[1]), atol=1)


def test_settings_persist_and_demo_notice(qtbot, recorder, store, tiny_bundle):
    # Nothing configured: the window opens on the tiny demo bundle and says so.
    specs = []

    def factory(spec):
        specs.append(spec)
        return recorder

    win = MainWindow(store=store, pipeline_factory=factory)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.loaded_info is not None, timeout=10000)
    assert specs == [ModelSpec(None, "auto")]
    assert win.models_bar.notice_label.isVisible() and "demo" in win.models_bar.notice_label.text()
    # The title and the status bar say what actually runs the models.
    assert "torch on cpu" in win.windowTitle() and "torch on cpu" in win.runs_on_label.text()
    win.set_models(ModelSpec(tiny_bundle, "onnxruntime"))
    qtbot.waitUntil(lambda: len(specs) == 2 and win.loaded_info is not None and not win.loading, timeout=10000)
    assert specs[1] == ModelSpec(tiny_bundle, "onnxruntime")
    win.close()
    again = AppSettings.load(QSettings(store.fileName(), QSettings.Format.IniFormat))
    assert again.model_dir == tiny_bundle and again.backend == "onnxruntime"


def test_wrong_model_folder_keeps_the_loaded_models(qtbot, window, recorder, samples, tmp_path, store):
    win = window
    win.people_panel.add_photos([samples / "person_a.png"])
    _wait_people(qtbot, win, 1)
    loaded, calls_before = win.loaded_info, len(recorder.calls)
    wrong = tmp_path / "not-models"
    wrong.mkdir()
    (wrong / "readme.txt").write_text("not a model folder")
    win.set_models(ModelSpec(wrong, "torch"))
    qtbot.waitUntil(lambda: not win.loading, timeout=10000)
    # Nothing was unloaded: same models, the person stays ready, Generate stays on.
    assert win.loaded_info is loaded and not win.loading and win.generate_button.isEnabled()
    assert [p.status for p in win.people.people()] == [Status.READY]
    assert "close" not in [name for name, _ in recorder.calls[calls_before:]]
    banner = win.models_bar.banner
    assert banner.isVisible() and "not-models" in banner.text() and "Still using" in banner.text()
    assert AppSettings.load(QSettings(store.fileName(), QSettings.Format.IniFormat)).model_dir != wrong
    banner.close_button.click()
    assert not banner.isVisible()
    # A problem shown again is cleared by the next successful load.
    win.set_models(ModelSpec(wrong, "torch"))
    qtbot.waitUntil(lambda: not win.loading, timeout=10000)
    assert banner.isVisible()
    win.set_models(win.spec)
    qtbot.waitUntil(lambda: not win.loading, timeout=10000)
    assert not banner.isVisible() and banner.text() == "" and win.loaded_info is not loaded


def test_window_usable_while_models_load(qtbot, recorder, store):
    release = threading.Event()

    def slow_factory(spec):
        release.wait(10)  # a model load that takes long
        return recorder

    t = time.perf_counter()
    win = MainWindow(store=store, pipeline_factory=slow_factory)
    qtbot.addWidget(win)
    win.show()
    qtbot.wait(50)
    assert time.perf_counter() - t < 2.0
    assert win.models_bar.load_bar.isVisible() and not win.generate_button.isEnabled()
    # The GUI keeps working meanwhile: typing reaches the prompt box.
    qtbot.keyClicks(win.form.prompt_edit, "hello")
    assert win.form.prompt_edit.toPlainText() == "hello"
    release.set()
    qtbot.waitUntil(lambda: win.loaded_info is not None, timeout=10000)
    assert win.generate_button.isEnabled() and not win.models_bar.load_bar.isVisible()
    win.close()


def test_click_on_a_box_selects_its_person(qtbot, window, samples):
    win = window
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png"])
    _wait_people(qtbot, win, 2)
    canvas = win.canvas
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=canvas.box_rect(1).center().toPoint())
    assert win.people_panel.current_row() == 1 and canvas.selected_row() == 1
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=canvas.box_rect(0).center().toPoint())
    assert win.people_panel.current_row() == 0 and canvas.selected_row() == 0
    # Selecting in the list highlights the box; boxes carry names, list rows their box colour.
    win.people_panel.select_row(1)
    assert canvas.selected_row() == 1
    assert canvas.label(0) == "1 person_a" and canvas.label(1) == "2 person_b"
    # The selected box is filled more strongly: its colour is nearer the person's than when not selected.
    point = canvas.box_rect(1).center().toPoint()
    color = np.array(win.people.index(1).data(Role.COLOR).getRgb()[:3])
    selected = np.array(QColor(canvas.grab().toImage().pixel(point)).getRgb()[:3])
    win.people_panel.select_row(0)
    plain = np.array(QColor(canvas.grab().toImage().pixel(point)).getRgb()[:3])
    assert np.abs(selected - color).sum() < np.abs(plain - color).sum()
    for row in range(2):
        icon = win.people.index(row).data(Qt.ItemDataRole.DecorationRole).pixmap(64, 64).toImage()
        assert QColor(icon.pixel(1, 1)).name() == win.people.index(row).data(Role.COLOR).name()


def test_photo_without_face_gets_no_box_and_generate_asks(qtbot, window, samples, recorder):
    win = window
    win.people_panel.add_photos([samples / "person_a.png", samples / "no_face.png"])
    _wait_people(qtbot, win, 2)
    good, bad = win.people.index(0), win.people.index(1)
    assert bad.data(Role.BOX) is None and good.data(Role.BOX) == (0.0, 0.0, 1.0, 1.0)
    assert [row for row, _box, _colors in win.canvas.boxes()] == [0]
    assert "not in the image" in bad.data(Qt.ItemDataRole.DisplayRole)
    win.people_panel.select_row(1)
    panel = win.people_panel
    assert not panel.expression_combo.isEnabled() and not panel.pose_combo.isEnabled()
    assert "left out" in panel.error_label.text()
    _small(win, steps=1)
    bar = win.question_bar
    assert not win.generate() and "no_face" in bar.text() and not win.runner.running
    qtbot.mouseClick(bar.no_button, Qt.MouseButton.LeftButton)
    assert not bar.isVisible() and not win.runner.running
    assert not win.generate() and bar.isVisible()
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        qtbot.mouseClick(bar.yes_button, Qt.MouseButton.LeftButton)
    entry = win.gallery_model.entry(0)
    assert entry.names == ["person_a"] and len(entry.matches) == 1
    # Answered once for this photo: the next run does not ask again.
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
    assert not bar.isVisible()
    # Without the failed photo nothing is asked either, and its error is gone from the panel.
    win.people.remove(1)
    assert panel.error_label.text() == ""
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
    assert not bar.isVisible()


def test_best_of_two_shows_a_badge_per_person(qtbot, window, samples):
    from dynamicid_rt.desktop.views import BAD, GOOD, chip_text
    from dynamicid_rt.identity.check import rank_key

    win = window
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png"])
    _wait_people(qtbot, win, 2)
    _small(win, steps=2)
    win.form.best_of_spin.setValue(2)
    win.form.sampler_combo.setCurrentIndex(win.form.sampler_combo.findData("ddim"))
    steps_seen = []
    win.runner.progressed.connect(lambda step, total, *_: steps_seen.append((step, total)))
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
    assert steps_seen[-1] == (4, 4) and win.progress_bar.maximum() == 4
    entries = win.gallery_model.entries()
    assert sorted(e.seed for e in entries) == [11, 12]
    assert [rank_key(e.matches) for e in entries] == sorted(rank_key(e.matches) for e in entries)
    assert win.gallery.current_entry() is entries[0]  # the best is shown first
    shown = [(label.text(), label.property("background")) for label in win.badges.labels]
    assert shown == [(chip_text(m), GOOD if m.ok else BAD) for m in entries[0].matches] and len(shown) == 2
    assert "ID match" in entries[0].parameters
    # The activation maps carry a legend: each person's name in their colour.
    assert [label.text() for label in win.maps_legend.labels] == ["person_a", "person_b"]


def test_save_and_reuse_act_on_the_selected_image(qtbot, window, tmp_path):
    win = window
    _small(win, steps=1)
    win.form.batch_spin.setValue(2)
    win.gallery.save_each_check.setChecked(False)  # saving by hand only
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
    assert [e.seed for e in win.gallery_model.entries()] == [11, 12]
    win.gallery.select(1)
    assert win.gallery.seed_label.text() == "seed 12 · not saved"
    qtbot.keyClick(win, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    saved = win.gallery_model.entry(1).saved
    assert saved is not None and "Seed: 12" in read_parameters(saved)
    qtbot.keyClick(win, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert list((tmp_path / "out").iterdir()) == [saved]  # a second Ctrl+S writes no duplicate
    win.form.random_seed_check.setChecked(True)
    win.gallery.reuse_button.click()
    assert not win.form.random_seed_check.isChecked() and win.form.seed_edit.text() == "12"
    # Shortcuts are in the menus, where users look for them.
    menu_actions = [a for m in win.menuBar().actions() for a in m.menu().actions()]
    assert win.save_action in menu_actions and win.save_action.shortcut().toString() == "Ctrl+S"
    assert win.generate_action.shortcut().toString() == "Ctrl+Return"


def test_identity_strength_per_person(qtbot, window, samples, tmp_path):
    win = window
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png"])
    _wait_people(qtbot, win, 2)
    win.people_panel.select_row(0)
    win.people_panel.strength_spin.setValue(0.5)
    assert win.people.index(0).data(Role.ID_SCALE) == 0.5
    _small(win, steps=1)
    assert win.build_request().id_scale == [0.5, 1.0]
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
    saved = win.gallery.save_current(tmp_path / "strength.png")
    win.people_panel.strength_spin.setValue(2.0)
    win.restore_parameters(saved)
    assert [win.people.index(r).data(Role.ID_SCALE) for r in range(2)] == [0.5, 1.0]
    assert win.people_panel.strength_spin.value() == 0.5


def test_pndm_progress_counts_the_users_steps(qtbot, window):
    win = window
    _small(win, steps=3)
    win.form.sampler_combo.setCurrentIndex(win.form.sampler_combo.findData("pndm"))
    seen = []
    win.runner.progressed.connect(lambda step, total, *_: seen.append((step, total)))
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
    assert {total for _, total in seen} == {3} and seen[-1][0] == 3 and win.progress_bar.value() == 3
