"""The UNet as the sampler's denoiser: classifier-free guidance over batch chunks.

With guidance each image takes two UNet rows ([unconditional, conditional]); a request batch of 16
is 32 rows, more than the UNet profile allows (contract ``unet`` axis B, max 8) and more than a
GPU may hold. The batch is split into chunks whose rows fit the profile; rows never interact in the
UNet, so chunking changes no result. Each chunk size gets its own bound UNet (constants uploaded
once per generation, see ``Backend.bind``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..backends.base import Backend, EngineCall
from ..contract import UNET
from ..errors import NumericalError
from .unet_feed import IdentityInputs, constant_inputs, step_inputs, with_conditioning


def profile_max_rows() -> int:
    """The most UNet rows one call may carry: the contract profile's max of axis B."""
    return UNET.axis("B").max


def chunk_bounds(batch: int, rows_per_image: int, max_rows: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` image ranges of at most ``max_rows // rows_per_image`` images."""
    per_chunk = max(1, max_rows // rows_per_image)
    return [(start, min(start + per_chunk, batch)) for start in range(0, batch, per_chunk)]


class GuidedUNet:
    """``__call__(x (batch,4,h,w), timestep, step) -> guided noise prediction``, chunked.

    ``states`` are the (negative, prompt) text states (2, 77, C); ``identity`` the request's
    identity inputs (:func:`~dynamicid_rt.denoiser.unet_feed.identity_inputs`); ``boost`` the boost of each
    step, by step index; ``conditioning`` an inpainting UNet's mask and masked-picture latent
    (:func:`~dynamicid_rt.denoiser.start_image.inpainting_conditioning`). The UNet is fed through
    :mod:`dynamicid_rt.denoiser.unet_feed`."""

    def __init__(
        self,
        backend: Backend,
        states: np.ndarray,
        identity: IdentityInputs,
        batch: int,
        guidance: float,
        boost: Callable[[int], float],
        conditioning: np.ndarray | None = None,
    ) -> None:
        self.backend = backend
        self.conditioning = conditioning
        self.states = states
        self.identity = identity
        self.guidance = guidance
        self.use_cfg = guidance > 1.0
        self.boost = boost
        self.chunks = chunk_bounds(batch, 2 if self.use_cfg else 1, profile_max_rows())
        self._bound: dict[int, EngineCall] = {}

    def _unet(self, images: int) -> EngineCall:
        """The UNet bound to the constants of a chunk of ``images`` images (bound on first use)."""
        if images not in self._bound:
            self._bound[images] = self.backend.bind("unet", constant_inputs(self.identity, self.states, images, self.use_cfg))
        return self._bound[images]

    def __call__(self, x: np.ndarray, timestep: float, step: int) -> np.ndarray:
        return np.concatenate([self._guided(x[start:stop], timestep, step) for start, stop in self.chunks])

    def _guided(self, x: np.ndarray, timestep: float, step: int) -> np.ndarray:
        images = len(x)
        sample = with_conditioning(x, self.conditioning)
        out = self._unet(images)(step_inputs(sample, timestep, self.boost(step), self.use_cfg))["noise_pred"]
        if not np.all(np.isfinite(out)):
            raise NumericalError(f"the UNet produced NaN/inf at step {step + 1}; try fp32 precision or fewer steps")
        if not self.use_cfg:
            return out
        uncond, cond = out[:images], out[images:]
        return uncond + self.guidance * (cond - uncond)
