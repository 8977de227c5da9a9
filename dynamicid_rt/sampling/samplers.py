"""Numpy samplers for SD1.5 (k-diffusion style): small pure functions over a denoiser callable.

Each ``sample_*`` function keeps its history (previous predictions, the PNDM trial sample) in loop
locals, so one function call is one generation and nothing is stored between calls. Timesteps and
updates follow diffusers' schedulers built from the same scheduler config (DDIMScheduler with
eta 0, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler with
``algorithm_type="dpmsolver++"`` and ``solver_order=2``, PNDMScheduler with ``skip_prk_steps``;
LCMScheduler, TCDScheduler and trailing DDIM, the few-step ones, in :mod:`dynamicid_rt.sampling.fewstep`).
As k-diffusion's samplers take their sigmas, each ``sample_*`` function takes its
:class:`~dynamicid_rt.sampling.schedules.Schedule` from the caller, who computes it once
(:func:`~dynamicid_rt.sampling.schedules.sampling_schedule`). Schedules come from :mod:`dynamicid_rt.sampling.schedules`,
sampler names from :mod:`dynamicid_rt.sampling.names`; both are re-exported here.

The denoiser is called as ``denoise(model_input, t, step)``: ``model_input`` is the latent already
scaled as the UNet expects (diffusers ``scale_model_input``), ``t`` the (possibly fractional)
timestep diffusers would pass to the UNet, ``step`` the 0-based index of the model call; it returns
the epsilon prediction with classifier-free guidance already applied.

This module imports only numpy and the standard library.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import numpy as np

from ..errors import RequestError
from .fewstep import sample_lcm, sample_tcd
from .img2img import KeepKnown, img2img_schedule, keep_known, noised
from .names import SAMPLER_ALIASES, SAMPLERS, canonical_sampler, sampler_for_scheduler_class
from .schedules import (
    Schedule,
    SchedulerConfig,
    alphas_cumprod,
    betas,
    for_sampler,
    karras_sigmas,
    num_model_calls,
    sampling_schedule,
    sigma_to_t,
    timesteps,
    training_sigmas,
)

__all__ = [
    "SAMPLERS",
    "SAMPLER_ALIASES",
    "Callback",
    "Schedule",
    "Denoiser",
    "NoiseSource",
    "SchedulerConfig",
    "alphas_cumprod",
    "betas",
    "canonical_sampler",
    "for_sampler",
    "karras_sigmas",
    "num_model_calls",
    "run_schedule",
    "sample",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_lcm",
    "sample_pndm",
    "sample_tcd",
    "sampler_for_scheduler_class",
    "start_sample",
    "sampling_schedule",
    "sigma_to_t",
    "timesteps",
    "training_sigmas",
]

Denoiser = Callable[[np.ndarray, float, int], np.ndarray]
"""``denoise(model_input, t, step) -> epsilon``, see the module docstring."""
Callback = Callable[[int, int, np.ndarray], None]
"""``callback(step, total, latent)`` after each model call; raising from it cancels sampling."""
NoiseSource = Callable[[tuple[int, ...]], np.ndarray]
"""``noise_source(shape) -> standard normal array`` for the ancestral noise of Euler a."""


def _call(denoise: Denoiser, x: np.ndarray, t: float, step: int) -> np.ndarray:
    eps = np.asarray(denoise(x.astype(np.float32), float(t), step), dtype=np.float64)
    if eps.shape != x.shape:
        raise RequestError(f"the denoiser returned shape {eps.shape} for a latent of shape {x.shape}; they must match")
    return eps


def _report(callback: Callback | None, step: int, total: int, x: np.ndarray) -> None:
    if callback is not None:
        callback(step, total, x.astype(np.float32))


def _end_step(keep: KeepKnown | None, callback: Callback | None, step: int, total: int, x: np.ndarray) -> np.ndarray:
    """After each step: inpainting's known region re-imposed (``keep``), then the callback."""
    if keep is not None:
        x = keep(step, x)
    _report(callback, step, total, x)
    return x


def start_sample(schedule: Schedule, noise: np.ndarray, init_latent: np.ndarray | None = None) -> np.ndarray:
    """The sample a sampler steps from, in its own space (float64): unit ``noise`` scaled to the
    schedule's initial σ (txt2img), or ``init_latent`` noised with it to the schedule's first step
    (img2img, :mod:`dynamicid_rt.sampling.img2img`)."""
    if init_latent is not None:
        return noised(schedule, 0, init_latent, noise)
    x = np.asarray(noise, dtype=np.float64)
    return x * _init_sigma(schedule) if schedule.sampler in ("euler", "euler_a") else x


def sample_ddim(
    denoise: Denoiser, x: np.ndarray, schedule: Schedule, callback: Callback | None = None, keep: KeepKnown | None = None
) -> np.ndarray:
    """DDIM, eta 0 (DDIMScheduler); with a trailing schedule, Hyper-SD's ``ddim_trailing``."""
    ac, final, stride = schedule.alphas_cumprod, schedule.final_alpha, schedule.stride
    ts = schedule.timesteps
    x = np.asarray(x, dtype=np.float64)
    for i, t in enumerate(ts):
        eps = _call(denoise, x, t, i)
        a_t = ac[int(t)]
        prev = int(t) - stride
        a_prev = ac[prev] if prev >= 0 else final
        x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps
        x = _end_step(keep, callback, i, len(ts), x)
    return x.astype(np.float32)


def _init_sigma(schedule: Schedule) -> float:
    # diffusers' Euler schedulers treat "leading" latents as x/sqrt(σ²+1)-scaled VP samples.
    sigma_max = schedule.sigmas.max()
    return math.sqrt(sigma_max**2 + 1.0) if schedule.config.timestep_spacing == "leading" else sigma_max


def sample_euler(
    denoise: Denoiser, x: np.ndarray, schedule: Schedule, callback: Callback | None = None, keep: KeepKnown | None = None
) -> np.ndarray:
    """Euler (EulerDiscreteScheduler, no churn)."""
    ts, sig = schedule.timesteps, schedule.sigmas
    x = np.asarray(x, dtype=np.float64)
    for i, t in enumerate(ts):
        eps = _call(denoise, x / math.sqrt(sig[i] ** 2 + 1.0), t, i)
        x = x + eps * (sig[i + 1] - sig[i])
        x = _end_step(keep, callback, i, len(ts), x)
    return x.astype(np.float32)


def sample_euler_ancestral(
    denoise: Denoiser,
    x: np.ndarray,
    schedule: Schedule,
    noise_source: NoiseSource,
    callback: Callback | None = None,
    keep: KeepKnown | None = None,
) -> np.ndarray:
    """Euler ancestral (EulerAncestralDiscreteScheduler); draws fresh noise at every step."""
    ts, sig = schedule.timesteps, schedule.sigmas
    x = np.asarray(x, dtype=np.float64)
    for i, t in enumerate(ts):
        s, s_next = sig[i], sig[i + 1]
        eps = _call(denoise, x / math.sqrt(s**2 + 1.0), t, i)
        s_up = math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)
        s_down = math.sqrt(s_next**2 - s_up**2)
        # Drawn at the last step too (σ_up = 0 there) so the noise stream matches diffusers'.
        z = np.asarray(noise_source(x.shape), dtype=np.float64)
        x = x + eps * (s_down - s) + z * s_up
        x = _end_step(keep, callback, i, len(ts), x)
    return x.astype(np.float32)


def sample_dpmpp_2m(
    denoise: Denoiser, x: np.ndarray, schedule: Schedule, callback: Callback | None = None, keep: KeepKnown | None = None
) -> np.ndarray:
    """DPM-Solver++(2M) (DPMSolverMultistepScheduler, order 2, final σ 0; Karras σ for ``dpmpp_2m_karras``)."""
    ts, sig = schedule.timesteps, schedule.sigmas
    # Work on VP samples x = α(x0 + σ·eps) with α = 1/sqrt(σ²+1); λ = -log σ.
    x = np.asarray(x, dtype=np.float64)
    x0_prev = None
    for i, t in enumerate(ts):
        s, s_next = sig[i], sig[i + 1]
        a_s, a_next = 1.0 / math.sqrt(s**2 + 1.0), 1.0 / math.sqrt(s_next**2 + 1.0)
        eps = _call(denoise, x, t, i)
        x0 = (x - s * a_s * eps) / a_s
        ratio = s_next / s  # exp(-h)
        x_first = (s_next * a_next) / (s * a_s) * x - a_next * (ratio - 1.0) * x0
        # First order at the first step and the last (final σ is 0, where the update is x0).
        if x0_prev is None or i == len(ts) - 1:
            x = x_first
        else:
            h = math.log(s / s_next)
            r0 = math.log(sig[i - 1] / s) / h
            d1 = (x0 - x0_prev) / r0
            if schedule.config.solver_type == "midpoint":
                x = x_first - 0.5 * a_next * (ratio - 1.0) * d1
            else:
                x = x_first + a_next * ((ratio - 1.0) / h + 1.0) * d1
        x0_prev = x0
        x = _end_step(keep, callback, i, len(ts), x)
    return x.astype(np.float32)


def sample_pndm(
    denoise: Denoiser, x: np.ndarray, schedule: Schedule, callback: Callback | None = None, keep: KeepKnown | None = None
) -> np.ndarray:
    """PLMS (PNDMScheduler with skip_prk_steps): steps+1 model calls."""
    ac, final, stride = schedule.alphas_cumprod, schedule.final_alpha, schedule.stride
    ts = schedule.timesteps

    def move(x: np.ndarray, t: int, t_prev: int, eps: np.ndarray) -> np.ndarray:
        a_t = ac[t]
        a_prev = ac[t_prev] if t_prev >= 0 else final
        denom = a_t * math.sqrt(1.0 - a_prev) + math.sqrt(a_t * (1.0 - a_t) * a_prev)
        return math.sqrt(a_prev / a_t) * x - (a_prev - a_t) * eps / denom

    x = np.asarray(x, dtype=np.float64)
    history: list[np.ndarray] = []  # last eps predictions, newest last
    x_start = x
    for i, t_float in enumerate(ts):
        t = int(t_float)
        eps = _call(denoise, x, t, i)
        if i == 1:
            # Redo the first step from its start with the average of both predictions.
            x = move(x_start, t + stride, t, (eps + history[-1]) / 2.0)
        else:
            history = history[-3:] + [eps]
            e = history[::-1]
            if len(e) == 1:
                x_start, combined = x, e[0]
            elif len(e) == 2:
                combined = (3.0 * e[0] - e[1]) / 2.0
            elif len(e) == 3:
                combined = (23.0 * e[0] - 16.0 * e[1] + 5.0 * e[2]) / 12.0
            else:
                combined = (55.0 * e[0] - 59.0 * e[1] + 37.0 * e[2] - 9.0 * e[3]) / 24.0
            x = move(x, t, t - stride, combined)
        x = _end_step(keep, callback, i, len(ts), x)
    return x.astype(np.float32)


def sample(
    name: str,
    denoise: Denoiser,
    noise: np.ndarray,
    config: SchedulerConfig,
    steps: int,
    *,
    rng: np.random.Generator | None = None,
    noise_source: NoiseSource | None = None,
    callback: Callback | None = None,
    gamma: float = 0.3,
) -> np.ndarray:
    """Run sampler ``name`` for ``steps`` steps on ``config``'s schedule: :func:`run_schedule` on
    :func:`~dynamicid_rt.sampling.schedules.sampling_schedule`, for callers that have no schedule yet."""
    return run_schedule(
        sampling_schedule(name, config, steps), denoise, noise,
        rng=rng, noise_source=noise_source, callback=callback, gamma=gamma,
    )


def run_schedule(
    schedule: Schedule,
    denoise: Denoiser,
    noise: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    noise_source: NoiseSource | None = None,
    callback: Callback | None = None,
    gamma: float = 0.3,
    init_latent: np.ndarray | None = None,
    strength: float = 1.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Run ``schedule.sampler`` over ``schedule`` from unit Gaussian ``noise`` (B,4,h,w); returns the
    final latent, float32.

    The sampler starts from ``noise`` scaled to the schedule's initial σ (:func:`start_sample`).
    With ``init_latent`` (img2img, the encoded image (1 or B,4,h,w)) it runs the last
    ``int(steps × strength)`` steps from ``init_latent`` noised with ``noise`` to the first of them,
    and with ``mask`` too ((1 or B,1,h,w), 1 = repaint) it re-imposes the rest from ``init_latent``
    after every step (inpainting, :mod:`dynamicid_rt.sampling.img2img`). Euler a, LCM and TCD draw
    their step noise from ``noise_source(shape)`` when given (the pipeline passes one stream per image,
    :func:`dynamicid_rt.sampling.noise.step_noise_source`; tests replay another implementation's noise),
    else from ``rng.standard_normal`` (a fresh unseeded generator when ``rng`` is None).
    ``callback(step, total, latent)`` runs after every model call, ``total`` being the calls this run
    makes; an exception raised from it stops sampling and propagates. ``gamma``
    is TCD's stochasticity (diffusers' ``eta``), unused by the other samplers.
    """
    if rng is not None and noise_source is not None:
        raise RequestError("pass either rng or noise_source, not both")
    noise = np.asarray(noise)
    if noise.ndim != 4 or not np.issubdtype(noise.dtype, np.floating):
        raise RequestError(f"noise must be a float (B,4,h,w) array, got {noise.dtype} {noise.shape}")
    if mask is not None and init_latent is None:
        raise RequestError("a mask needs the image it repaints: pass init_latent too")
    keep = None
    if init_latent is not None:
        schedule = img2img_schedule(schedule, strength)
        if mask is not None:
            keep = keep_known(schedule, init_latent, noise, mask)
        if len(schedule.timesteps) == 0:  # strength too low for one step: the image as it is
            return np.broadcast_to(np.asarray(init_latent, np.float32), noise.shape).copy()
    x = start_sample(schedule, noise, init_latent)
    name = schedule.sampler
    if name in ("ddim", "ddim_trailing"):
        return sample_ddim(denoise, x, schedule, callback, keep)
    if name == "euler":
        return sample_euler(denoise, x, schedule, callback, keep)
    if noise_source is None:
        generator = rng if rng is not None else np.random.default_rng()
        noise_source = generator.standard_normal
    if name == "euler_a":
        return sample_euler_ancestral(denoise, x, schedule, noise_source, callback, keep)
    if name in ("lcm", "tcd"):
        eps, end_step = partial(_call, denoise), partial(_end_step, keep, callback)
        if name == "lcm":
            return sample_lcm(eps, x, schedule, noise_source, end_step)
        return sample_tcd(eps, x, schedule, gamma, noise_source, end_step)
    if name in ("dpmpp_2m", "dpmpp_2m_karras"):
        return sample_dpmpp_2m(denoise, x, schedule, callback, keep)
    return sample_pndm(denoise, x, schedule, callback, keep)
