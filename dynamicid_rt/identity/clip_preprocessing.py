"""CLIP's image preprocessing (SPEC §1.3): the pixel values the image encoder engine takes."""
from __future__ import annotations

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixel_values(photo: np.ndarray, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """CLIP's default preprocessing of an RGB uint8 photo, step for step as transformers'
    ``CLIPImageProcessor`` runs it with PIL (what the release ran): shortest side to ``size`` with
    PIL bicubic (long side truncated to an int), centre crop (offsets rounded down), ×(1/255) in
    float64 then float32, ``(x - mean) / std`` in float32. Returns (3, size, size) float32."""
    from PIL import Image

    h, w = photo.shape[:2]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    resized = np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top : top + size, left : left + size]
    scaled = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    normalised = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)
