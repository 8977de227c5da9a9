"""The desktop's parts, each alone (offscreen Qt): settings form binding, gallery model and panel,
likeness badges, models bar, run controller's step count, people panel details."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import pytest  # noqa: E402

pytest.importorskip("PySide6", reason="the desktop app needs PySide6 (pip install 'dynamicid-rt[desktop]')")
pytest.importorskip("pytestqt", reason="the desktop tests need pytest-qt")

from PIL import Image  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QColor  # noqa: E402

from dynamicid_rt import IdentityMatch, Request, RequestError, format_parameters, parse_parameters  # noqa: E402
from dynamicid_rt.desktop.gallery import GalleryEntry, GalleryModel, GalleryPanel, thumbnail  # noqa: E402
from dynamicid_rt.desktop.models_bar import ModelsBar, runs_on_text  # noqa: E402
from dynamicid_rt.desktop.people_panel import degrees, faces_note  # noqa: E402
from dynamicid_rt.desktop.run_controller import user_steps  # noqa: E402
from dynamicid_rt.desktop.settings_form import SettingsForm  # noqa: E402
from dynamicid_rt.desktop.views import BAD, GOOD, ChipRow, match_chips  # noqa: E402
from dynamicid_rt.desktop.worker import ModelSpec, validate_model_folder  # noqa: E402
from dynamicid_rt.formats.pngmeta import read_parameters  # noqa: E402

OK = IdentityMatch("anna", (0, 0, 1, 0.5), 0.61, (10, 10, 50, 60))
MISSING = IdentityMatch("ben", (0, 0.5, 1, 1), None, None)
SWAPPED = IdentityMatch("ben", (0, 0.5, 1, 1), 0.2, (70, 10, 110, 60), looks_like="anna")


def test_settings_form_binding_round_trips_a_request(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    request = Request(prompt="two friends", negative_prompt="blurry", width=384, height=640, steps=7, guidance=3.5,
                      sampler="euler_a", seed=1234, batch=2, best_of=1, boost=2.5, boost_steps=4, gating="on")
    form.set_request(request)
    values = form.values()
    assert Request(**values) == request.with_updates(identities=())
    # Restoring from a PNG goes through the same binding: the parsed parameters set the same form.
    other = SettingsForm()
    qtbot.addWidget(other)
    result_like = type("R", (), {"request": request, "sampler": "euler_a", "seeds": [1234], "gating": True, "backend": "torch",
                                 "identity_scores": None, "model": None, "activation_maps": None, "latents": None})()
    assert other.apply(parse_parameters(format_parameters(result_like, 0))) == []
    written = ("prompt", "negative_prompt", "width", "height", "steps", "guidance", "sampler", "seed")  # without people
    assert {k: other.values()[k] for k in written} == {k: values[k] for k in written}
    # A1111 sampler names are accepted; an impossible value is reported, not raised.
    assert other.apply({"sampler": "Euler a", "width": "huge"}) == ["width"]
    assert other.sampler_combo.currentData() == "euler_a"


def test_settings_form_seed_tab_and_default_sampler(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    form.show()
    qtbot.waitExposed(form)
    form.activateWindow()
    form.apply({"seed": None})
    assert form.values()["seed"] is None and not form.seed_edit.isEnabled()
    form.random_seed_check.setChecked(False)
    form.seed_edit.setText("12x")
    with pytest.raises(RequestError, match="seed '12x'"):
        form.values()
    # Tab in the prompt moves on to the next field instead of typing a tab.
    form.prompt_edit.setFocus()
    qtbot.waitUntil(form.prompt_edit.hasFocus)
    qtbot.keyClicks(form.prompt_edit, "a")
    qtbot.keyClick(form.prompt_edit, Qt.Key.Key_Tab)
    assert "\t" not in form.prompt_edit.toPlainText() and form.negative_edit.hasFocus()
    form.seed_edit.setText("12")
    form.set_default_sampler("pndm")
    assert form.sampler_combo.itemText(0) == "default (pndm)" and form.values()["sampler"] == "default"
    for widget in (form.boost_spin, form.boost_steps_spin, form.gating_combo, form.sampler_combo, form.best_of_spin):
        assert widget.toolTip()


def test_badges_are_red_for_missing_or_swapped_faces(qtbot):
    chips = match_chips([OK, MISSING, SWAPPED])
    words = ["anna 0.61", "ben: no face", "ben 0.20, looks like anna"]
    assert [c[:2] for c in chips] == list(zip(words, [GOOD, BAD, BAD]))
    row = ChipRow()
    qtbot.addWidget(row)
    row.set_chips(chips)
    assert [label.text() for label in row.labels] == words
    assert [label.property("background") for label in row.labels] == [GOOD, BAD, BAD]
    # Each badge explains itself: what it found, what a score means, what a swap is.
    assert "looks more like anna" in row.labels[2].toolTip()
    assert all("cosine" in label.toolTip() and "swap" in label.toolTip() for label in row.labels)
    row.set_chips([])
    assert row.labels == [] and not row.isVisibleTo(None)


def _entry(seed: int, matches=None, color=(200, 30, 30)) -> GalleryEntry:
    image = Image.new("RGB", (64, 64), color)
    return GalleryEntry(image, f"a prompt\nSteps: 2, Seed: {seed}", seed, ["anna", "ben"], [(230, 159, 0), (86, 180, 233)], matches)


def test_gallery_model_and_thumbnails_show_each_persons_badge(qtbot, tmp_path):
    model = GalleryModel()
    first = model.add([_entry(5, [OK, MISSING]), _entry(6)])
    assert first == 0 and model.rowCount() == 2
    assert model.index(0).data(Qt.ItemDataRole.DisplayRole) == "seed 5"
    tip = model.index(0).data(Qt.ItemDataRole.ToolTipRole)
    assert "no face found" in tip and "cosine" in tip
    assert QColor(thumbnail(model.entry(1)).toImage().pixel(3, 60)).getRgb()[:3] == (200, 30, 30)  # the image itself
    # The cells, as the view paints them: each badge, one line per person, beside the thumbnail.
    panel = GalleryPanel(model, tmp_path)
    qtbot.addWidget(panel)
    panel.resize(640, 260)
    panel.show()
    qtbot.waitExposed(panel)
    panel.select(0)
    shot = panel.view.viewport().grab().toImage()
    cell = panel.view.visualRect(model.index(0))
    from dynamicid_rt.desktop.gallery_delegate import badge_rects

    good, missing = badge_rects(cell.adjusted(1, 1, -1, -1), 2)
    assert QColor(shot.pixel(good.right() - 2, good.center().y())).name() == QColor(GOOD).name()
    assert QColor(shot.pixel(missing.right() - 2, missing.center().y())).name() == QColor(BAD).name()
    # The selected cell's badges keep their colour (the selection does not wash them out).
    panel.select(1)
    panel.select(0)
    shot = panel.view.viewport().grab().toImage()
    assert QColor(shot.pixel(good.right() - 2, good.center().y())).name() == QColor(GOOD).name()
    # The person's box colour marks each badge.
    assert QColor(shot.pixel(good.left() + 1, good.center().y())).getRgb()[:3] == (230, 159, 0)
    plain = badge_rects(panel.view.visualRect(model.index(1)).adjusted(1, 1, -1, -1), 1)[0]
    assert QColor(shot.pixel(plain.right() - 2, plain.center().y())).name() not in (QColor(GOOD).name(), QColor(BAD).name())


def test_gallery_save_and_reuse_follow_the_selection(qtbot, tmp_path):
    model = GalleryModel()
    panel = GalleryPanel(model, tmp_path / "out")
    qtbot.addWidget(panel)
    model.add([_entry(5), _entry(6), _entry(7)])
    assert panel.current_entry() is None and not panel.save_button.isEnabled()
    panel.select(1)
    assert panel.seed_label.text() == "seed 6 · not saved" and "Seed: 6" in panel.params_view.toPlainText()
    with qtbot.waitSignal(panel.reuseSeed) as reused:
        panel.reuse_button.click()
    assert reused.args == [6]
    saved = panel.save_current()
    assert saved.name.endswith("-6.png") and "Seed: 6" in read_parameters(saved)
    # Saving the same image again writes nothing new.
    assert panel.save_current() == saved and sorted(p.name for p in (tmp_path / "out").iterdir()) == [saved.name]
    panel.select(2)
    other = panel.save_current()
    assert other != saved and "Seed: 7" in read_parameters(other)


def test_models_bar_banner_and_runs_on(qtbot, tmp_path):
    bar = ModelsBar(ModelSpec(None, "auto"))
    qtbot.addWidget(bar)
    bar.show()
    info = {"folder": None, "backend": "auto", "is_tiny": True, "runs_on": {"backend": "onnxruntime", "device": "cuda:0",
                                                                            "precision": "fp16"}}
    assert runs_on_text(info) == "onnxruntime on cuda:0 (fp16)"
    bar.set_loaded(ModelSpec(None, "auto"), info)
    assert not bar.load_bar.isVisible() and "onnxruntime on cuda:0" in bar.model_label.text()
    problem = validate_model_folder(ModelSpec(tmp_path, "torch"))
    assert problem and "not a model folder" in problem and "\n" not in problem
    assert validate_model_folder(ModelSpec(None, "torch")) is None
    bar.set_rejected(ModelSpec(tmp_path, "torch"), problem, still_loaded=True)
    assert bar.banner.isVisible() and "Still using tiny demo bundle" in bar.banner.text() and str(tmp_path) in bar.banner.text()
    assert "onnxruntime on cuda:0" in bar.model_label.text()  # the models in use are still named
    bar.set_loaded(ModelSpec(None, "auto"), info)
    assert not bar.banner.isVisible()


def test_progress_counts_the_steps_the_user_asked_for():
    # PNDM makes steps + 1 model calls: 51 calls for 50 steps end at 50, never above.
    shown = [user_steps(call, 51, 50) for call in range(1, 52)]
    assert shown[-1] == 50 and max(shown) == 50 and shown == sorted(shown)
    assert [user_steps(call, 3, 3) for call in (1, 2, 3)] == [1, 2, 3]  # DDIM: one call per step
    assert user_steps(51, 102, 100) == 50  # best of 2: halfway after the first image


def test_pose_and_face_numbering_in_the_users_words():
    assert [degrees(v) for v in (-0.3, 0.4, -12.6)] == ["0", "0", "-13"]
    assert faces_note(2, 0).startswith("2 faces in this photo: using face 1")
