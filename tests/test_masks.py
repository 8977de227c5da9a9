"""Inpainting masks (sampling/masks.py, sampling/start_image.py): regions against scipy's labelling,
and any mask or picture a client sends gets a box list or one RequestError line, nothing else."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dynamicid_rt.errors import RequestError
from dynamicid_rt.sampling.masks import boxes_from_mask, latent_mask, mask_alpha, regions
from dynamicid_rt.sampling.start_image import check_start_image

ndimage = pytest.importorskip("scipy.ndimage")


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))))
def test_regions_are_scipys_connected_components(cells):
    labels, count = ndimage.label(cells)  # 4-connectivity, as ours
    want = sorted(((s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(labels)),
                  key=lambda r: (r[1], r[0]))
    assert regions(cells) == want and len(want) == count


def test_boxes_follow_the_regions_and_cover_64_pixels():
    mask = np.zeros((256, 256), np.uint8)
    mask[8:24, 8:24] = 255  # 16 px: grown to 64
    mask[100:200, 150:250] = 255
    boxes = boxes_from_mask(mask_alpha(mask), 2)
    assert boxes[0][1] < boxes[1][1]
    for y0, x0, y1, x1 in boxes:
        assert (y1 - y0) * 256 >= 64 - 1e-6 and (x1 - x0) * 256 >= 64 - 1e-6 and 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
    assert boxes[1] == (100 // 8 * 8 / 256, 150 // 8 * 8 / 256, 200 / 256, 256 / 256)
    with pytest.raises(RequestError, match="2 separate regions for 3 people"):
        boxes_from_mask(mask_alpha(mask), 3)


def test_latent_mask_marks_every_cell_holding_a_painted_pixel():
    mask = np.zeros((64, 64), np.uint8)
    mask[9, 17] = 255
    cells = latent_mask(mask_alpha(mask))
    assert cells.shape == (1, 1, 8, 8) and cells.sum() == 1 and cells[0, 0, 1, 2] == 1


@settings(max_examples=80, deadline=None)
@given(image=arrays(np.uint8, st.tuples(st.sampled_from([250, 256]), st.sampled_from([256, 264]), st.just(3))),
       mask=arrays(np.uint8, st.tuples(st.sampled_from([256, 128]), st.just(256))) | st.none(),
       strength=st.floats(allow_nan=True, allow_infinity=True), blur=st.integers(-3, 80))
def test_any_start_image_is_accepted_or_refused_in_one_line(image, mask, strength, blur):
    try:
        check_start_image(image, strength, mask, blur, 256, 256)
    except RequestError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("size, fitted", [
    ((512, 768), (512, 768)),  # the UNet takes it: kept
    ((4032, 3024), (1024, 768)),  # a phone photo: its aspect, the long side at the profiles' 1024
    ((1920, 1080), (1024, 576)),
    ((800, 600), (832, 576)),  # each side to the nearest multiple of 64
    ((300, 2000), (256, 1024)),  # a side below 256 is raised to it (then cropped)
    ((250, 256), (256, 256)),
])
def test_start_size_keeps_the_pictures_aspect_within_the_profiles(size, fitted):
    from dynamicid_rt import start_size

    assert start_size(*size) == fitted


def test_crop_resize_is_a1111s_crop_and_resize():
    """Against A1111's resize_image(resize_mode=1) written out here: scale to cover, paste centred."""
    from PIL import Image

    from dynamicid_rt import crop_resize

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:400]
    photo = np.stack([yy * 255 // 299, xx * 255 // 399, (yy + xx) % 256], -1).astype(np.uint8)
    image = Image.fromarray(photo)
    for width, height in ((256, 256), (512, 256), (256, 512)):
        ratio, src_ratio = width / height, image.width / image.height
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        want = Image.new("RGB", (width, height))
        want.paste(image.resize((src_w, src_h), Image.Resampling.LANCZOS),
                   box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        got = crop_resize(photo, width, height)
        assert got.size == (width, height)
        # A1111 rounds the scaled size to whole pixels before cropping; we crop exactly: within 2 levels
        assert np.abs(np.asarray(got, float)[2:-2, 2:-2] - np.asarray(want, float)[2:-2, 2:-2]).mean() < 2.0
    same = rng.integers(0, 256, (256, 320, 3), np.uint8)
    assert np.array_equal(np.asarray(crop_resize(same, 320, 256)), same)  # the right size: no resampling at all
    mask = np.zeros((300, 400), np.uint8)
    mask[:, 200:] = 255
    assert set(np.unique(np.asarray(crop_resize(mask, 256, 256, nearest=True)))) == {0, 255}  # a mask stays binary


@pytest.mark.parametrize("call, message", [
    (lambda f: f.start_size(0, 512), "width=0"),
    (lambda f: f.start_size(512, 7.5), "height=7.5"),
    (lambda f: f.crop_resize(np.zeros((8, 8, 3), np.uint8), -1, 8), "width=-1"),
    (lambda f: f.crop_resize(np.zeros((8, 8, 3), np.float32), 8, 8), "uint8 array"),
    (lambda f: f.crop_resize("photo.png", 8, 8), "must be a PIL image"),
    (lambda f: f.mask_boxes(np.full((64, 64), 255, np.uint8), 0), "1 separate regions for 0 people"),
])
def test_start_photo_helpers_refuse_bad_input_with_the_projects_error(call, message):
    import dynamicid_rt

    with pytest.raises(RequestError, match=message) as caught:
        call(dynamicid_rt)
    assert "\n" not in str(caught.value)
