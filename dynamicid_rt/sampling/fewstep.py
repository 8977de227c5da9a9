"""Few-step samplers for distilled SD1.5 models: LCM and TCD (k-diffusion style, numpy).

They follow diffusers' ``LCMScheduler`` and ``TCDScheduler`` as ``from_config`` builds them on the
model's scheduler config (SD1.5's leaves ``original_inference_steps`` 50 and ``timestep_scaling``
10 at the classes' defaults and sets ``set_alpha_to_one`` false). Both start from unit noise
(``init_noise_sigma`` 1, no input scaling) and draw fresh noise between steps from the step-noise
stream (:data:`dynamicid_rt.sampling.noise.STEP_NOISE`), never at the last step, as diffusers does; history
stays in loop locals; the schedule (:class:`~dynamicid_rt.sampling.schedules.Schedule`) comes from the
caller. DDIM with trailing spacing (Hyper-SD) is ``samplers.sample_ddim`` on a
trailing schedule. This module imports only numpy and the standard library.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import RequestError
from .schedules import Schedule

Eps = Callable[[np.ndarray, float, int], np.ndarray]
"""``eps(x, t, step) -> float64 epsilon`` (the checked denoiser of :mod:`dynamicid_rt.sampling.samplers`)."""
Report = Callable[[int, int, np.ndarray], np.ndarray]
"""``end_step(step, total, x) -> x`` after each step (inpainting may re-impose its known region)."""
NoiseSource = Callable[[tuple[int, ...]], np.ndarray]

SIGMA_DATA = 0.5  # LCM's boundary-condition constant (diffusers hard-codes it too)


def boundary_scalings(t: float, timestep_scaling: float) -> tuple[float, float]:
    """LCM's (c_skip, c_out) at discrete timestep ``t``."""
    scaled = t * timestep_scaling
    return SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2), scaled / math.sqrt(scaled**2 + SIGMA_DATA**2)


def _x0(x: np.ndarray, eps: np.ndarray, a_t: float) -> np.ndarray:
    return (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)


def sample_lcm(eps: Eps, x: np.ndarray, schedule: Schedule, noise_source: NoiseSource, report: Report) -> np.ndarray:
    """LCM multistep sampling (LCMScheduler): denoise to the consistency estimate, re-noise to the next t."""
    ac, final, ts = schedule.alphas_cumprod, schedule.final_alpha, schedule.timesteps
    timestep_scaling = schedule.config.timestep_scaling
    x = np.asarray(x, dtype=np.float64)
    for i, t in enumerate(ts):
        e = eps(x, t, i)
        c_skip, c_out = boundary_scalings(t, timestep_scaling)
        denoised = c_out * _x0(x, e, ac[int(t)]) + c_skip * x
        if i < len(ts) - 1:
            t_prev = int(ts[i + 1])
            a_prev = ac[t_prev] if t_prev >= 0 else final
            z = np.asarray(noise_source(x.shape), dtype=np.float64)
            x = math.sqrt(a_prev) * denoised + math.sqrt(1.0 - a_prev) * z
        else:
            x = denoised
        x = report(i, len(ts), x)
    return x.astype(np.float32)


def sample_tcd(
    eps: Eps,
    x: np.ndarray,
    schedule: Schedule,
    gamma: float,
    noise_source: NoiseSource,
    report: Report,
) -> np.ndarray:
    """Trajectory Consistency Distillation (TCDScheduler) with stochasticity ``gamma`` (diffusers'
    ``eta``): 0 is deterministic, 1 re-noises fully between steps."""
    if not (isinstance(gamma, (int, float, np.floating)) and 0.0 <= gamma <= 1.0):
        raise RequestError(f"gamma={gamma!r}: TCD's stochasticity must lie in [0, 1] (0.3 is the usual value)")
    ac, final, ts = schedule.alphas_cumprod, schedule.final_alpha, schedule.timesteps
    x = np.asarray(x, dtype=np.float64)
    for i, t in enumerate(ts):
        e = eps(x, t, i)
        t_prev = int(ts[i + 1]) if i < len(ts) - 1 else 0
        # diffusers floors (1-γ)·t_prev in float32; float64 would round differently at exact integers.
        t_s = int(np.floor(np.float32(1.0 - gamma) * np.float32(t_prev)))
        a_prev = ac[t_prev] if t_prev >= 0 else final
        a_s = ac[t_s]
        noised = math.sqrt(a_s) * _x0(x, e, ac[int(t)]) + math.sqrt(1.0 - a_s) * e
        if gamma > 0 and i < len(ts) - 1:
            z = np.asarray(noise_source(x.shape), dtype=np.float64)
            x = math.sqrt(a_prev / a_s) * noised + math.sqrt(1.0 - a_prev / a_s) * z
        else:
            x = noised
        x = report(i, len(ts), x)
    return x.astype(np.float32)
