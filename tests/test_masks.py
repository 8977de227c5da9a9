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
