"""Latents to pixels through one of the contract's decoder engines (the full VAE, or the tiny
autoencoder for previews and fast decodes), with the fp32 retry reduced precision may need."""
from __future__ import annotations

import logging

import numpy as np

from .backends.base import Backend
from .errors import NumericalError
from .sampling.preview import latent_to_rgb

log = logging.getLogger(__name__)


def check_finite(stage: str, array: np.ndarray) -> None:
    """NumericalError when ``stage`` produced NaN or inf."""
    if not np.all(np.isfinite(array)):
        raise NumericalError(f"the {stage} produced NaN/inf values; try fp32 precision or check the model files")


def decode_pixels(backend: Backend, engine: str, latent: np.ndarray, latent_scale: float, fallback: bool = False) -> np.ndarray:
    """One latent (1, 4, h, w), as the UNet makes it, through decoder ``engine`` as (8h, 8w, 3) uint8.
    ``fallback`` (a preview): the latent's linear map where even the fp32 retry gives NaN/inf."""
    inputs = {"latent": (latent / latent_scale).astype(np.float32)}
    try:
        image = backend.run(engine, inputs)["image"][0]
        check_finite(engine, image)
    except NumericalError as exc:
        # Reduced-precision decoders can overflow on some latents: one fp32 retry beats losing every step.
        log.warning("%s; decoding this image again in fp32", exc)
        image = backend.run_fp32(engine, inputs)["image"][0]
        try:
            check_finite(f"{engine} (fp32 retry)", image)
        except NumericalError:
            if not fallback:
                raise
            return latent_to_rgb(latent[0])
    return ((image.transpose(1, 2, 0) + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
