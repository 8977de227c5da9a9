"""The desktop's "Start from a photo" (issue 32): a picture under the layout canvas, a mask painted
over it with the rectangle, brush and eraser tools (real mouse drags on the canvas), strength and
mask blur, and what the window's request and its result hold, on the real pipeline (tiny bundle)."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("PySide6", reason="the desktop app needs PySide6 (pip install 'dynamicid-rt[desktop]')")
pytest.importorskip("pytestqt", reason="the desktop tests need pytest-qt")

from PIL import Image  # noqa: E402
from PIL.PngImagePlugin import PngInfo  # noqa: E402
from PySide6.QtCore import QPointF, Qt  # noqa: E402

from desktop_fixtures import _drag, _small, _wait_people, recorder, store, window  # noqa: E402,F401
from dynamicid_rt import crop_resize, parse_parameters, read_parameters  # noqa: E402
from dynamicid_rt.desktop.people import Role  # noqa: E402


def _photo(tmp_path, width: int = 256, height: int = 256, name: str = "photo.png"):
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([yy * 255 // height, xx * 255 // width, 128 + 100 * np.sin(xx * yy / 900.0)], -1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / name)
    return tmp_path / name, pixels


def _at(canvas, fx: float, fy: float) -> QPointF:
    """The widget point at fractions (fx, fy) of the output frame."""
    frame = canvas.frame_rect()
    return QPointF(frame.left() + fx * frame.width(), frame.top() + fy * frame.height())


def _tool(qtbot, win, name: str) -> None:
    qtbot.mouseClick(win.layout_tab.start_bar.tool_buttons[name], Qt.MouseButton.LeftButton)


def _rectangle(qtbot, win, y0: float, x0: float, y1: float, x1: float) -> None:
    _tool(qtbot, win, "rectangle")
    _drag(qtbot, win.canvas, _at(win.canvas, x0, y0), _at(win.canvas, x1, y1))


def _inside(mask: np.ndarray, y0: float, x0: float, y1: float, x1: float, margin: int) -> np.ndarray:
    h, w = mask.shape[:2]
    return mask[int(y0 * h) + margin:int(y1 * h) - margin, int(x0 * w) + margin:int(x1 * w) - margin]


def _outside(shape, rects, margin: int) -> np.ndarray:
    """True where no rectangle (grown by ``margin`` pixels) reaches."""
    h, w = shape
    keep = np.ones(shape, bool)
    for y0, x0, y1, x1 in rects:
        keep[max(0, int(y0 * h) - margin):int(y1 * h) + margin, max(0, int(x0 * w) - margin):int(x1 * w) + margin] = False
    return keep


def test_a_photo_of_any_size_is_fitted_and_becomes_the_init_image(qtbot, window, tmp_path):
    win = window
    path, pixels = _photo(tmp_path, 300, 200)
    bar = win.layout_tab.start_bar
    assert not bar.details.isVisible()  # txt2img: only the button shows
    assert bar.open_photo(path)
    assert (win.form.width_spin.value(), win.form.height_spin.value()) == (320, 256)  # its aspect, the nearest size taken
    assert bar.details.isVisible() and "300×200 → 320×256" in bar.photo_label.text()
    assert "cropped and resized from 300×200" in win.statusBar().currentMessage()
    win.form.prompt_edit.setPlainText("a street")
    request = win.build_request()
    assert np.array_equal(request.init_image, np.asarray(crop_resize(pixels, 320, 256)))
    assert (request.width, request.height, request.strength, request.mask_blur) == (320, 256, 0.75, 4)  # A1111's defaults
    assert request.mask is None  # nothing painted: img2img over the whole picture
    win.form.width_spin.setValue(512)  # the size fields stay the user's: the photo follows them
    assert win.build_request().init_image.shape == (256, 512, 3)
    bar.remove_button.click()
    request = win.build_request()
    assert request.init_image is None and not bar.details.isVisible()

    (tmp_path / "notes.txt").write_text("not a picture")
    assert not bar.open_photo(tmp_path / "notes.txt")
    assert "Could not use notes.txt as the start photo" in win.error_label.text()
    assert "\n" not in win.error_label.text()


def test_two_people_inpainted_into_two_painted_rectangles(qtbot, window, samples, tmp_path):
    win = window
    win.resize(1280, 900)
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png"])
    _wait_people(qtbot, win, 2)
    path, pixels = _photo(tmp_path)  # 256×256: used as it is
    win.layout_tab.start_bar.open_photo(path)
    _small(win, steps=4)
    left, right = (0.25, 0.08, 0.85, 0.42), (0.25, 0.58, 0.85, 0.92)
    _rectangle(qtbot, win, *left)
    _rectangle(qtbot, win, *right)

    request = win.build_request()
    assert np.array_equal(request.init_image, pixels)  # a photo of a size the model takes is not resampled
    mask = request.mask
    assert (_inside(mask, *left, margin=2) == 255).all() and (_inside(mask, *right, margin=2) == 255).all()
    assert not mask[_outside(mask.shape, [left, right], margin=2)].any()
    # An untouched layout is the mask's regions: the generator derives them, the canvas shows them.
    assert request.boxes is None
    shown = [tuple(win.people.index(r).data(Role.BOX)) for r in range(2)]
    assert shown == [tuple(b) for b in request.resolved_boxes()]
    for (y0, x0, y1, x1), (by0, bx0, by1, bx1) in zip((left, right), shown):  # each person in their rectangle
        assert by0 <= y0 + 0.02 and bx0 <= x0 + 0.02 and by1 >= y1 - 0.02 and bx1 >= x1 - 0.02
        assert bx1 - bx0 < 0.5

    win.undo_action.trigger()  # the second rectangle goes, and the boxes share the one region left
    mask = win.build_request().mask
    assert not mask[_outside(mask.shape, [left], margin=2)].any()
    assert all(box[3] <= left[3] + 0.05 for box in (win.people.index(r).data(Role.BOX) for r in range(2)))
    win.redo_action.trigger()
    assert np.array_equal(win.build_request().mask, request.mask)

    with qtbot.waitSignal(win.runEnded, timeout=60000) as ended:
        assert win.generate(), win.error_label.text()
        assert win.progress_bar.maximum() == 3  # int(4 steps × 0.75): the steps img2img runs
    assert ended.args == ["done"]
    saved = sorted((tmp_path / "out").glob("*.png"))
    assert len(saved) == 1
    image = np.asarray(Image.open(saved[0]).convert("RGB"))
    far = _outside(image.shape[:2], [left, right], margin=12)  # beyond the 4-px blur's reach
    assert np.array_equal(image[far], pixels[far])  # the rest of the photo, pixel for pixel
    for rect in (left, right):
        changed = np.abs(_inside(image.astype(int), *rect, margin=4) - _inside(pixels.astype(int), *rect, margin=4))
        assert changed.mean() > 1.0  # each region repainted
    fields = parse_parameters(read_parameters(saved[0]))
    assert fields["strength"] == 0.75 and fields["mask_blur"] == 4


def test_brush_and_eraser_paint_along_the_stroke(qtbot, window, tmp_path):
    win = window
    path, _ = _photo(tmp_path)
    bar = win.layout_tab.start_bar
    bar.open_photo(path)
    win.form.prompt_edit.setPlainText("x")
    _tool(qtbot, win, "brush")
    bar.brush_spin.setValue(24)
    _drag(qtbot, win.canvas, _at(win.canvas, 0.1, 0.5), _at(win.canvas, 0.9, 0.5))
    mask = win.build_request().mask
    assert (mask[120:136, 40:216] == 255).all()  # a band 24 px high along the stroke
    assert not mask[:108].any() and not mask[148:].any()
    _tool(qtbot, win, "eraser")
    bar.brush_spin.setValue(60)
    _drag(qtbot, win.canvas, _at(win.canvas, 0.5, 0.3), _at(win.canvas, 0.5, 0.7))
    mask = win.build_request().mask
    assert not mask[100:156, 116:140].any() and (mask[124:132, 40:80] == 255).all()
    bar.clear_mask_button.click()
    assert win.build_request().mask is None
    win.undo_action.trigger()
    assert win.build_request().mask is not None  # clearing is one undo step too
    _tool(qtbot, win, "boxes")  # drags move boxes again: the mask is left alone
    before = win.build_request().mask
    _drag(qtbot, win.canvas, _at(win.canvas, 0.2, 0.2), _at(win.canvas, 0.3, 0.3))
    assert np.array_equal(win.build_request().mask, before)


def test_arranged_boxes_are_kept_and_a_mask_that_fits_no_one_is_refused(qtbot, window, samples, tmp_path):
    win = window
    win.people_panel.add_photos([samples / "person_a.png", samples / "person_b.png"])
    _wait_people(qtbot, win, 2)
    win.layout_tab.start_bar.open_photo(_photo(tmp_path)[0])
    _small(win, steps=2)
    for rect in ((0.1, 0.05, 0.3, 0.25), (0.1, 0.4, 0.3, 0.6), (0.6, 0.7, 0.9, 0.95)):
        _rectangle(qtbot, win, *rect)
    assert not win.generate()  # three regions, two people: said in one line before any work
    assert "3 separate regions for 2 people" in win.error_label.text() and "\n" not in win.error_label.text()
    win.people.setData(win.people.index(0), (0.0, 0.0, 1.0, 0.5), Role.BOX)  # the user places the boxes
    win.people.setData(win.people.index(1), (0.0, 0.5, 1.0, 1.0), Role.BOX)
    request = win.build_request()
    assert request.boxes == [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)]  # theirs, not the mask's
    assert win.error_label.text() == ""  # the problem went once it no longer applied


def test_strength_and_mask_blur_restore_from_a_dropped_png(qtbot, window, tmp_path):
    win = window
    info = PngInfo()
    info.add_text("parameters", "a garden\nSteps: 10, Sampler: Euler, CFG scale: 5, Seed: 3, Size: 256x256, "
                                "Denoising strength: 0.4, Mask blur: 9")
    Image.new("RGB", (256, 256)).save(tmp_path / "made.png", pnginfo=info)
    win.handle_dropped([str(tmp_path / "made.png")])
    bar = win.layout_tab.start_bar
    assert (bar.strength_spin.value(), bar.blur_spin.value()) == (0.4, 9)
    assert win.form.steps_spin.value() == 10
    bar.open_photo(_photo(tmp_path)[0])
    win.form.prompt_edit.setPlainText("x")
    request = win.build_request()
    assert (request.strength, request.mask_blur) == (0.4, 9)


def test_a_result_becomes_the_start_photo(qtbot, window):
    win = window
    _small(win, steps=1)
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate(), win.error_label.text()
    assert win.start_from_result_action in win.gallery.view.actions()  # also on a right-click in the gallery
    win.start_from_result_action.trigger()
    assert win.tabs.currentWidget() is win.layout_tab
    entry = win.gallery.current_entry()
    assert np.array_equal(win.build_request().init_image, np.asarray(entry.image.convert("RGB")))
    assert win.layout_tab.start_bar.photo_label.text() == "result, seed 11: 256×256"
