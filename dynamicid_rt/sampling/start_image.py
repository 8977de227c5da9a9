"""The pictures a request starts from (img2img's init image, inpainting's mask): read as arrays and
checked in one line each before any model runs; the size a photo is fitted to and A1111's "Crop and
resize" fitting it. Imports only numpy (PIL images are read and resized through their own methods)."""
from __future__ import annotations

import numpy as np

from ..errors import RequestError
from .masks import Box, boxes_from_mask, check_mask, mask_alpha

SIZE_RANGE = (256, 1024)  # the sides the UNet's profiles take (request.SIZE_RANGE)


def image_array(value: object, name: str, mode: str) -> np.ndarray:
    """A PIL image or array as uint8 (H, W, 3) for mode "RGB", (H, W) for "L"; RequestError otherwise."""
    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
        return np.asarray(value.convert(mode))  # type: ignore[attr-defined]
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = np.empty(0)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise RequestError(
            f"{name} must be a PIL image or a uint8 array of shape (height, width[, 3]), got "
            f"{type(value).__name__} {array.dtype} {array.shape}"
        )
    if mode == "L":
        return array if array.ndim == 2 else array[..., 0]
    if array.ndim == 2 or array.shape[2] == 1:
        return np.repeat(array.reshape(array.shape[0], array.shape[1], 1), 3, axis=2)
    return array[..., :3]


def start_size(width: int, height: int, longest: int = 1024) -> tuple[int, int]:
    """The size a ``width`` x ``height`` picture is fitted to: its own when the UNet takes it (sides
    multiples of 64 within the profiles), else its aspect with the long side at most ``longest``,
    each side rounded to a multiple of 64 within the profiles."""
    _check_size(width, height)
    lo, hi = SIZE_RANGE
    if width % 64 == 0 and height % 64 == 0 and lo <= width <= hi and lo <= height <= hi:
        return width, height
    scale = min(1.0, min(longest, hi) / max(width, height))
    return tuple(int(min(hi, max(lo, 64 * int(side * scale / 64 + 0.5)))) for side in (width, height))  # type: ignore[return-value]


def crop_resize(image, width: int, height: int, nearest: bool = False):
    """A1111's "Crop and resize": ``image`` (PIL, or an array) scaled to cover ``width`` x ``height``
    and cropped about its centre, as a PIL image; returned unchanged (no resampling) when it is
    that size already. ``nearest``: resample without interpolation (masks keep their values)."""
    _check_size(width, height)
    if not (hasattr(image, "resize") and hasattr(image, "crop")):
        from PIL import Image

        mode = "L" if np.ndim(image) == 2 else "RGB"
        image = Image.fromarray(np.ascontiguousarray(image_array(image, "image", mode)))
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = width / scale, height / scale
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    method = 0 if nearest else 1  # PIL's Resampling.NEAREST and LANCZOS
    return image.resize((width, height), method, box=(left, top, left + crop_w, top + crop_h))


def _check_size(width: object, height: object) -> None:
    for name, side in (("width", width), ("height", height)):
        if isinstance(side, (bool, np.bool_)) or not isinstance(side, (int, np.integer)) or side < 1:
            raise RequestError(f"{name}={side!r}: must be a whole number of pixels, at least 1")


def mask_boxes(mask, people: int, mask_blur: int = 4) -> list[Box]:
    """The people's boxes a mask gives when the request names none (``Request.resolved_boxes``):
    one per painted region, left to right, or one region shared out in vertical strips;
    RequestError when the regions do not fit the number of people."""
    return boxes_from_mask(mask_alpha(image_array(mask, "mask", "L"), mask_blur), people)


def check_start_image(init_image, strength, mask, mask_blur, width: int, height: int) -> None:
    """RequestError, in one line, for a strength outside [0, 1], a blur outside 0..64 px, an init
    image of a size the UNet does not take or that is not ``width`` x ``height``, a mask without
    an init image, of another size, or empty."""
    if isinstance(strength, (bool, np.bool_)) or not isinstance(strength, (int, float, np.integer, np.floating)) \
            or not 0.0 <= strength <= 1.0:
        raise RequestError(f"strength={strength!r}: must be a number from 0 to 1 (0.75 is A1111's default)")
    if isinstance(mask_blur, (bool, np.bool_)) or not isinstance(mask_blur, (int, np.integer)) or not 0 <= mask_blur <= 64:
        raise RequestError(f"mask_blur={mask_blur!r}: must be a whole number of pixels from 0 to 64 (A1111's default is 4)")
    if init_image is None:
        if mask is not None:
            raise RequestError("a mask needs the picture it repaints: give init_image too")
        return
    image_height, image_width = image_array(init_image, "init_image", "RGB").shape[:2]
    fit_w, fit_h = start_size(image_width, image_height)
    if (fit_w, fit_h) != (image_width, image_height):
        raise RequestError(
            f"init_image is {image_width}x{image_height}: the UNet takes sides that are multiples of 64 from "
            f"{SIZE_RANGE[0]} to {SIZE_RANGE[1]}; fit it to {fit_w}x{fit_h} first (A1111's \"Crop and resize\"): "
            f"dynamicid_rt.crop_resize(image, {fit_w}, {fit_h})"
        )
    if (image_width, image_height) != (width, height):
        raise RequestError(
            f"init_image is {image_width}x{image_height} but the request is {width}x{height}: "
            f"pass width={image_width}, height={image_height} (or dynamicid_rt.crop_resize(image, {width}, {height}))"
        )
    if mask is not None:
        pixels = image_array(mask, "mask", "L")
        if pixels.shape[:2] != (image_height, image_width):
            raise RequestError(
                f"the mask is {pixels.shape[1]}x{pixels.shape[0]} but init_image is {image_width}x{image_height}: "
                "draw the mask on the same picture (or resize it to the picture's size)"
            )
        check_mask(mask_alpha(pixels, mask_blur))
