"""Starting from an image: img2img's partial schedule and inpainting's known region (numpy).

As diffusers' ``StableDiffusionImg2ImgPipeline`` does for every scheduler (its ``get_timesteps``,
A1111's rule too): of a ``steps``-step schedule, the last ``int(steps × strength)`` are run, from
the encoded image noised to the first of them by the scheduler's own ``add_noise``. Each sampler
works in its own space (DDIM, PNDM, LCM, TCD: the variance-preserving sample; Euler: x0 + σ·noise;
DPM-Solver: the VP sample written with σ), so :func:`noised` gives the sample at a step in the
space the schedule's sampler steps in.

Inpainting follows diffusers' rule for a 4-channel UNet (``StableDiffusionInpaintPipeline``, the
legacy inpainting): after every step the region to keep is re-imposed from the original latent
noised to the next step's timestep (the clean latent after the last step); :func:`keep_known`
makes that step hook. This module imports only numpy and the standard library.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import numpy as np

from ..errors import RequestError
from .schedules import Schedule

KeepKnown = Callable[[int, np.ndarray], np.ndarray]
"""``keep(step, x) -> x`` after each step: the region to keep re-imposed on the sample."""

_VE = ("euler", "euler_a")  # x0 + σ·noise, unscaled
_VP_SIGMA = ("dpmpp_2m", "dpmpp_2m_karras")  # VP samples, ᾱ from the schedule's σ


def steps_run(steps: int, strength: float) -> int:
    """How many of ``steps`` an img2img run at ``strength`` runs: ``int(steps × strength)``."""
    return min(int(steps * strength), steps)


def img2img_schedule(schedule: Schedule, strength: float) -> Schedule:
    """The tail of ``schedule`` an img2img run at ``strength`` (0 to 1) steps through, as
    diffusers' ``get_timesteps`` slices the scheduler's model calls (PNDM's repeated call included).
    DDIM's and PNDM's stride still follow the full step count (``Schedule.steps`` is kept)."""
    if not (isinstance(strength, (int, float, np.floating)) and 0.0 <= strength <= 1.0):
        raise RequestError(f"strength={strength!r}: must be a number from 0 to 1 (0.75 is A1111's default)")
    begin = schedule.steps - steps_run(schedule.steps, strength)
    sigmas = schedule.sigmas[begin:] if schedule.sigmas is not None else None
    return replace(schedule, timesteps=schedule.timesteps[begin:], sigmas=sigmas)


def noised(schedule: Schedule, index: int, latent: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``latent`` noised with ``noise`` to the schedule's step ``index`` (``len(timesteps)``: after the
    last step, the clean latent), in the space the schedule's sampler steps in (float64)."""
    latent = np.asarray(latent, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if index >= len(schedule.timesteps):
        return latent + 0.0 * noise  # broadcast to the batch
    if schedule.sampler in _VE:
        return latent + schedule.sigmas[index] * noise
    if schedule.sampler in _VP_SIGMA:
        sigma = schedule.sigmas[index]
        alpha = 1.0 / math.sqrt(sigma**2 + 1.0)
        return alpha * latent + alpha * sigma * noise
    a_t = schedule.alphas_cumprod[int(schedule.timesteps[index])]
    return math.sqrt(a_t) * latent + math.sqrt(1.0 - a_t) * noise


def keep_known(schedule: Schedule, latent: np.ndarray, noise: np.ndarray, mask: np.ndarray) -> KeepKnown:
    """The step hook of inpainting: after step ``i`` the sample keeps its values where ``mask`` is 1
    (repaint) and takes ``latent`` noised to step ``i + 1`` elsewhere. ``mask``: (1 or B, 1, h, w)."""
    mask = np.asarray(mask, dtype=np.float64)

    def keep(step: int, x: np.ndarray) -> np.ndarray:
        return mask * x + (1.0 - mask) * noised(schedule, step + 1, latent, noise)

    return keep
