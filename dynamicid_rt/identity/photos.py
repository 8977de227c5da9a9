"""Photos as the pipeline reads them: RGB uint8 arrays (H, W, 3) from files, PIL images or
arrays, checked and oriented, and the face crops made from them.

:func:`load_photo` applies EXIF orientation, expands greyscale and composites transparency over
white. Photos larger than :data:`MAX_SIDE` on the long side are downscaled (with a logged
warning) rather than refused: face analysis works at 512 px anyway.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError, RequestError
from ..files.checks import check_regular_file

logger = logging.getLogger(__name__)

MIN_SIDE = 64
MAX_SIDE = 4096


def _name_of(photo: object) -> str:
    if isinstance(photo, (str, Path)):
        return str(photo)
    filename = getattr(photo, "filename", "")
    return str(filename) if filename else f"the given {type(photo).__name__}"


def _pil_to_rgb(image: Image.Image, name: str) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit greyscale PNGs
        grey = np.asarray(image, dtype=np.float64) / 257.0
        return np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if image.mode == "F":
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        return _array_to_rgb(np.asarray(image.convert("RGBA")), name)
    return np.asarray(image.convert("RGB"))


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ImageError(f"{name} has dtype {array.dtype}; pass an RGB uint8 array (0..255), e.g. np.asarray(PIL image)")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"{name} has shape {array.shape}; expected (H, W), (H, W, 3) RGB or (H, W, 4) RGBA")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:  # composite transparent parts over white
        alpha = array[..., 3:4].astype(np.float32) / 255.0
        rgb = array[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _open(path: Path) -> Image.Image:
    check_regular_file(path, "photo", ImageError)  # a FIFO or /dev/zero would block or never end
    try:
        image = Image.open(path)
        image.load()
        return ImageOps.exif_transpose(image)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path} is not an image file that PIL can read (use PNG, JPEG or WebP)") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path} could not be decoded ({exc}); the file may be truncated or corrupt") from exc


def load_photo(photo: str | Path | np.ndarray | Image.Image) -> np.ndarray:
    """The photo as an RGB uint8 array (H, W, 3): EXIF orientation applied, greyscale expanded,
    transparency composited over white, more than :data:`MAX_SIDE` px downscaled (warning).

    Raises :class:`ImageError` (naming the file) for unreadable files and photos under
    :data:`MIN_SIDE` px on a side.
    """
    name = _name_of(photo)
    if isinstance(photo, (str, Path)):
        rgb = _pil_to_rgb(_open(Path(photo).expanduser()), name)
    elif isinstance(photo, Image.Image):
        try:
            rgb = _pil_to_rgb(ImageOps.exif_transpose(photo), name)
        except (OSError, ValueError) as exc:
            raise ImageError(f"{name} could not be decoded ({exc})") from exc
    elif isinstance(photo, np.ndarray):
        rgb = _array_to_rgb(photo, name)
    else:
        raise ImageError(f"unsupported photo {name}: pass a file path, a PIL image or an RGB uint8 array")
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"{name} is {width}x{height} px; face analysis needs at least {MIN_SIDE} px on each side")
    if max(height, width) > MAX_SIDE:
        scale = MAX_SIDE / max(height, width)
        size = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))
        logger.warning("%s is %dx%d px; downscaling to %dx%d for face analysis", name, width, height, *size)
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return rgb


def check_rgb(photo_rgb: np.ndarray) -> np.ndarray:
    if not isinstance(photo_rgb, np.ndarray) or photo_rgb.dtype != np.uint8 or photo_rgb.ndim != 3 or photo_rgb.shape[2] != 3:
        shape = getattr(photo_rgb, "shape", None)
        raise ImageError(f"expected an RGB uint8 array (H, W, 3), got {type(photo_rgb).__name__} {shape}; use load_photo()")
    return photo_rgb


def _check_box(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in bbox)
    if not (np.isfinite([x0, y0, x1, y1]).all() and x1 > x0 and y1 > y0):
        raise RequestError(f"face box {tuple(bbox)} must be finite (x0, y0, x1, y1) with x1 > x0 and y1 > y0")
    return x0, y0, x1, y1


def face_crop(photo_rgb: np.ndarray, bbox: Sequence[float], scale: float = 2.0) -> np.ndarray:
    """Square crop centred on the face, ``scale`` times the box's longer side; parts beyond the
    photo repeat its edge pixels (for the optional face-centred CLIP input)."""
    rgb = check_rgb(photo_rgb)
    if not scale > 0:
        raise RequestError(f"crop scale must be positive, got {scale}")
    x0, y0, x1, y1 = _check_box(bbox)
    side = max(1, int(round(scale * max(x1 - x0, y1 - y0))))
    left = int(round((x0 + x1) / 2 - side / 2))
    top = int(round((y0 + y1) / 2 - side / 2))
    height, width = rgb.shape[:2]
    # Clamp to the photo, then pad what lies outside with the edge pixels.
    cx0, cy0 = min(max(left, 0), width - 1), min(max(top, 0), height - 1)
    cx1, cy1 = max(min(left + side, width), cx0 + 1), max(min(top + side, height), cy0 + 1)
    inner = rgb[cy0:cy1, cx0:cx1]
    pads = ((cy0 - top, top + side - cy1), (cx0 - left, left + side - cx1), (0, 0))
    return np.pad(inner, [(max(0, a), max(0, b)) for a, b in pads], mode="edge")[:side, :side]


def face_thumbnail(photo_rgb: np.ndarray, bbox: Sequence[float], size: int = 128) -> np.ndarray:
    """A (size, size, 3) uint8 picture of the face with some margin, for lists and logs."""
    if size < 1:
        raise RequestError(f"thumbnail size must be positive, got {size}")
    crop = face_crop(photo_rgb, bbox, scale=1.5)
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))
