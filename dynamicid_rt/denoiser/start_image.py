"""img2img and inpainting around the sampler: the init image through the ``vae_encoder`` engine,
the mask as the sampler's latent mask, an inpainting UNet's extra inputs, and the final composite
that keeps unmasked pixels bit-exact."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..backends.base import Backend
from ..errors import NumericalError
from ..request import Request

if TYPE_CHECKING:
    from PIL import Image

ENGINE = "vae_encoder"


@dataclass(frozen=True)
class StartImage:
    """What a request starts from: the picture, its latent and, when inpainting, the mask."""

    pixels: np.ndarray  # (H, W, 3) uint8, the init image as given
    latent: np.ndarray  # (1, 4, H/8, W/8) float32, scaled as the UNet takes latents
    alpha: np.ndarray | None  # (H, W) float in [0, 1], the blurred mask (1 = repaint); None: img2img
    cells: np.ndarray | None  # (1, 1, H/8, W/8): the latent cells the sampler repaints
    strength: float

    def sampler_inputs(self, keep_known: bool = True) -> dict[str, object]:
        """The keywords :func:`~dynamicid_rt.sampling.samplers.run_schedule` takes for this start.
        ``keep_known`` False: the sampler does not re-impose the unmasked area (an inpainting UNet
        sees the picture itself, and diffusers' pipeline leaves its steps alone)."""
        return {"init_latent": self.latent, "strength": self.strength, "mask": self.cells if keep_known else None}

    def composite(self, image: "Image.Image") -> "Image.Image":
        """``image`` over the init image through the mask: pixels the mask leaves at 0 are the
        init image's own, bit for bit (img2img: ``image`` as it is)."""
        from PIL import Image

        if self.alpha is None:
            return image
        new = np.asarray(image, dtype=np.float64)
        old = self.pixels.astype(np.float64)
        alpha = self.alpha[..., None]
        mixed = np.where(alpha > 0, old + alpha * (new - old), old)
        return Image.fromarray(np.rint(mixed).clip(0, 255).astype(np.uint8))


def _encode(backend: Backend, pixels: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) pixels in [-1, 1] through ``vae_encoder`` (retried in fp32 on an overflow)."""
    inputs = {"image": np.ascontiguousarray(pixels, dtype=np.float32)}
    latent = backend.run(ENGINE, inputs)["latent"]
    if not np.all(np.isfinite(latent)):
        latent = backend.run_fp32(ENGINE, inputs)["latent"]  # a reduced-precision VAE can overflow
        if not np.all(np.isfinite(latent)):
            raise NumericalError("the VAE encoder produced NaN/inf values; try fp32 precision or check the model files")
    return latent.astype(np.float32)


def _unit_pixels(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]


def encode_start_image(backend: Backend, request: Request) -> StartImage | None:
    """The request's init image encoded by the backend's ``vae_encoder`` (None without one)."""
    pixels = request.init_pixels()
    if pixels is None:
        return None
    latent = _encode(backend, _unit_pixels(pixels))
    return StartImage(pixels, latent, request.mask_alpha(), request.mask_cells(), float(request.strength))


def inpainting_conditioning(backend: Backend, request: Request) -> np.ndarray:
    """What an inpainting UNet takes beside the latent, (1, 5, H/8, W/8): the mask at latent size
    (1 = repaint) and the latent of the picture with that area blanked, as diffusers'
    ``StableDiffusionInpaintPipeline`` makes them (the mask binarised at 0.5, then sampled at one
    pixel per cell). Without a mask the whole picture is repainted, so the picture is blank, as it
    is for txt2img (A1111's conditioning for these models)."""
    height, width = request.height, request.width
    pixels, alpha = request.init_pixels(), request.mask_alpha()
    repaint = np.ones((height, width), bool) if pixels is None or alpha is None else alpha >= 0.5
    image = np.zeros((1, 3, height, width), np.float32) if pixels is None else _unit_pixels(pixels)
    masked = _encode(backend, image * ~repaint)
    cells = repaint[::8, ::8].astype(np.float32)[None, None]  # torch's nearest interpolation to H/8 x W/8
    return np.concatenate([cells, masked], axis=1)
