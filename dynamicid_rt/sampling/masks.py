"""Inpainting masks (numpy): the blur A1111 applies, the latent mask, people's boxes from regions.

A mask is white where the image is repainted. As A1111's "mask blur", the mask is blurred with a
Gaussian of that radius (a separable kernel over 2.5 σ each side, as PIL's ``GaussianBlur``
approximates it); the blurred mask, in [0, 1], is the alpha the final image is composited with, so
pixels it leaves at 0 stay bit-exact. The sampler repaints every 8×8 latent cell holding a pixel
the blurred mask covers at least half (diffusers binarises at 0.5 and samples one pixel per cell:
the same on masks drawn on the 8-pixel grid, and no painted pixel lost elsewhere). This module
imports only numpy and the standard library.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

from ..errors import RequestError

Box = tuple[float, float, float, float]  # (y0, x0, y1, x1) fractions of the image
MIN_BOX_PIXELS = 64  # the coarsest SAA layer's cell: a person's box must cover one


def mask_alpha(mask: np.ndarray, blur: int = 0) -> np.ndarray:
    """A mask image ((H,W), (H,W,3) or (H,W,4) numbers, white = repaint; the first channel is read,
    as A1111 does) as float alpha in [0, 1], blurred with radius ``blur`` pixels."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    alpha = m.astype(np.float64) / (255.0 if m.dtype == np.uint8 or m.max(initial=0) > 1 else 1.0)
    alpha = np.clip(alpha, 0.0, 1.0)
    if blur > 0:
        alpha = _gaussian_blur(alpha, float(blur))
    return alpha


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, radius, mode="edge")
    rows = sum(w * padded[:, i : i + image.shape[1]] for i, w in enumerate(taps))
    out = sum(w * rows[i : i + image.shape[0], :] for i, w in enumerate(taps))
    # Exact zeros stay zero where the kernel sees no mask (rounding never leaks a 1e-17).
    return np.where(out < 1e-6, 0.0, np.clip(out, 0.0, 1.0))


def latent_mask(alpha: np.ndarray) -> np.ndarray:
    """(1, 1, H/8, W/8) float: 1 where the 8×8 cell holds a pixel with alpha >= 0.5 (repaint)."""
    h, w = alpha.shape[0] // 8, alpha.shape[1] // 8
    cells = (alpha[: h * 8, : w * 8] >= 0.5).reshape(h, 8, w, 8).any(axis=(1, 3))
    return cells.astype(np.float64)[None, None]


def check_mask(alpha: np.ndarray) -> None:
    """RequestError for a mask that repaints nothing."""
    if not (alpha >= 0.5).any():
        raise RequestError(
            "the mask is empty (no pixel is white): paint the region to repaint in white on black, or drop the mask for img2img"
        )


def regions(cells: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The 4-connected regions of a 2D boolean array as (y0, x0, y1, x1) cell bounds (end exclusive),
    left to right (then top to bottom). Linear in the array's size."""
    cells = np.asarray(cells, dtype=bool)
    seen = np.zeros_like(cells)
    found = []
    h, w = cells.shape
    for y, x in zip(*np.nonzero(cells)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        queue, y0, x0, y1, x1 = deque([(y, x)]), y, x, y, x
        while queue:
            cy, cx = queue.popleft()
            y0, x0, y1, x1 = min(y0, cy), min(x0, cx), max(y1, cy), max(x1, cx)
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < h and 0 <= nx < w and cells[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        found.append((int(y0), int(x0), int(y1) + 1, int(x1) + 1))
    return sorted(found, key=lambda r: (r[1], r[0]))


def boxes_from_mask(alpha: np.ndarray, people: int) -> list[Box]:
    """People's boxes from the mask's regions: one region per person, left to right, or one region
    shared out in vertical strips. Each box grows to at least 64 px each way (SAA's coarsest cell)."""
    cells = latent_mask(alpha)[0, 0] > 0
    found = regions(cells)
    h, w = cells.shape
    if len(found) == 1 and people > 1:
        y0, x0, y1, x1 = found[0]
        edges = np.linspace(x0, x1, people + 1)
        boxes = [(y0 / h, edges[i] / w, y1 / h, edges[i + 1] / w) for i in range(people)]
    elif len(found) == people:
        boxes = [(y0 / h, x0 / w, y1 / h, x1 / w) for y0, x0, y1, x1 in found]
    else:
        raise RequestError(
            f"the mask has {len(found)} separate regions for {people} people: paint one region per person "
            "(or one for everyone), or give one box per person"
        )
    return [_at_least(b, MIN_BOX_PIXELS / (8 * h), MIN_BOX_PIXELS / (8 * w)) for b in boxes]


def _at_least(box: Box, min_h: float, min_w: float) -> Box:
    y0, x0, y1, x1 = (float(v) for v in box)
    y0, y1 = _grow(y0, y1, min_h)
    x0, x1 = _grow(x0, x1, min_w)
    return (y0, x0, y1, x1)


def _grow(lo: float, hi: float, size: float) -> tuple[float, float]:
    # A 1e-9 margin keeps the 64-px cell count whole after the float division.
    size = min(1.0, size + 1e-9)
    if hi - lo >= size:
        return lo, hi
    centre = min(max((lo + hi) / 2, size / 2), 1.0 - size / 2)
    return max(0.0, centre - size / 2), min(1.0, centre + size / 2)
