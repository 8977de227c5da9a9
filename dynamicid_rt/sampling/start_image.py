"""The pictures a request starts from (img2img's init image, inpainting's mask): read as arrays and
checked in one line each before any model runs. Imports only numpy (PIL images are read through
their own ``convert``)."""
from __future__ import annotations

import numpy as np

from ..errors import RequestError
from .masks import check_mask, mask_alpha

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


def nearest_size(side: int) -> int:
    """The multiple of 64 nearest ``side`` within the sizes the UNet takes."""
    lo, hi = SIZE_RANGE
    return int(min(hi, max(lo, round(side / 64) * 64)))


def check_start_image(init_image, strength, mask, mask_blur, width: int, height: int) -> None:
    """RequestError, in one line, for a strength outside [0, 1], a blur outside 0..64 px, an init
    image whose sides are not multiples of 8 or that is not ``width`` x ``height``, a mask without
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
    if image_width % 8 or image_height % 8:
        fit = f"{nearest_size(image_width)}x{nearest_size(image_height)}"
        raise RequestError(
            f"init_image is {image_width}x{image_height}: its sides must be multiples of 8 (the VAE's cell); "
            f"resize it to {fit} first (A1111's \"Just resize\"), e.g. image.resize(({fit.replace('x', ', ')}))"
        )
    if (image_width, image_height) != (width, height):
        raise RequestError(
            f"init_image is {image_width}x{image_height} but the request is {width}x{height}: "
            f"pass width={image_width}, height={image_height} (or resize the image)"
        )
    if mask is not None:
        pixels = image_array(mask, "mask", "L")
        if pixels.shape[:2] != (image_height, image_width):
            raise RequestError(
                f"the mask is {pixels.shape[1]}x{pixels.shape[0]} but init_image is {image_width}x{image_height}: "
                "draw the mask on the same picture (or resize it to the picture's size)"
            )
        check_mask(mask_alpha(pixels, mask_blur))
