"""Numpy samplers for SD1.5 (k-diffusion style): small pure functions over a denoiser callable.

Each ``sample_*`` function keeps its history (previous predictions, the PNDM trial sample) in loop
locals, so one function call is one generation and nothing is stored between calls. Timesteps and
updates follow diffusers' schedulers built from the same scheduler config (DDIMScheduler with
eta 0, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler with
``algorithm_type="dpmsolver++"`` and ``solver_order=2``, PNDMScheduler with ``skip_prk_steps``).
The schedule is computed in float64 (diffusers uses float32), which keeps results within ~1e-6.

The denoiser is called as ``denoise(model_input, t, step)``: ``model_input`` is the latent already
scaled as the UNet expects (diffusers ``scale_model_input``), ``t`` the (possibly fractional)
timestep diffusers would pass to the UNet, ``step`` the 0-based index of the model call; it returns
the epsilon prediction with classifier-free guidance already applied.

This module imports only numpy and the standard library.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .errors import ModelFolderError, RequestError

logger = logging.getLogger(__name__)

Denoiser = Callable[[np.ndarray, float, int], np.ndarray]
"""``denoise(model_input, t, step) -> epsilon``, see the module docstring."""
Callback = Callable[[int, int, np.ndarray], None]
"""``callback(step, total, latent)`` after each model call; raising from it cancels sampling."""
NoiseSource = Callable[[tuple[int, ...]], np.ndarray]
"""``noise_source(shape) -> standard normal array`` for the ancestral noise of Euler a."""

SAMPLERS: tuple[str, ...] = ("ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "pndm")

# Other tools' names for our samplers, as :func:`canonical_sampler` normalises them (lower case,
# "++" -> "pp", spaces and dashes -> "_"); names already equal to ours need no entry.
SAMPLER_ALIASES: dict[str, str] = {
    "euler_ancestral": "euler_a",  # ComfyUI, k-diffusion
    "k_euler_a": "euler_a",  # A1111 aliases, InvokeAI
    "k_euler_ancestral": "euler_a",
    "k_euler": "euler",
    "k_dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_k": "dpmpp_2m_karras",  # InvokeAI
    "k_dpmpp_2m_ka": "dpmpp_2m_karras",  # A1111 < 1.9
    "k_dpmpp_2m_karras": "dpmpp_2m_karras",
    "plms": "pndm",  # A1111 "PLMS"
    "k_plms": "pndm",
    "ddimscheduler": "ddim",  # diffusers scheduler classes
    "pndmscheduler": "pndm",
    "eulerdiscretescheduler": "euler",
    "eulerancestraldiscretescheduler": "euler_a",
    "dpmsolvermultistepscheduler": "dpmpp_2m",
}
# Schedules (ComfyUI "scheduler", A1111 >= 1.9 "Schedule type") that leave a sampler as it is;
# A1111's "Automatic" is each sampler's own default there, Karras for DPM++ 2M.
_PLAIN_SCHEDULES = ("", "normal", "default")
_A1111_AUTOMATIC = {"dpmpp_2m": "dpmpp_2m_karras"}

_SPACINGS = ("leading", "trailing", "linspace")
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_SOLVER_TYPES = ("midpoint", "heun")
# Config keys diffusers schedulers accept that would change the math if not at these values.
_REQUIRED_VALUES: dict[str, tuple[Any, ...]] = {
    "thresholding": (False,),
    "rescale_betas_zero_snr": (False,),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,),
    "interpolation_type": ("linear",),
    "final_sigmas_type": ("zero",),
    "variance_type": (None,),
    "lambda_min_clipped": (-math.inf,),
}
# Each sampler's diffusers class default timestep_spacing, used when the config does not name one:
# diffusers' from_config drops keys that were only the loaded class's defaults.
_DEFAULT_SPACING = {
    "ddim": "leading",  # DDIMScheduler
    "pndm": "leading",  # PNDMScheduler
    "euler": "linspace",  # EulerDiscreteScheduler
    "euler_a": "linspace",  # EulerAncestralDiscreteScheduler
    "dpmpp_2m": "linspace",  # DPMSolverMultistepScheduler
    "dpmpp_2m_karras": "linspace",
}
_SCHEDULER_CLASSES = {
    "PNDMScheduler": "pndm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
}


@dataclass(frozen=True)
class SchedulerConfig:
    """The noise schedule and timestep spacing of a diffusers SD1.5 scheduler config.

    Defaults are SD1.5's ``scheduler/scheduler_config.json``. That file names no
    ``timestep_spacing`` (None here), so each sampler takes its own diffusers class's default, as
    ``EulerDiscreteScheduler.from_config(pipe.scheduler.config)`` does: "linspace" for Euler, Euler a
    and DPM-Solver, "leading" for DDIM and PNDM (see :func:`for_sampler`). The sampler name, not the
    config, decides the algorithm; keys that only select an algorithm variant SD1.5 pipelines do not
    use (``clip_sample``, ``algorithm_type``, ``solver_order``...) are ignored by :meth:`from_dict`.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    trained_betas: tuple[float, ...] | None = None
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    timestep_spacing: str | None = None  # None: not named in the config, each sampler's class default
    prediction_type: str = "epsilon"
    skip_prk_steps: bool = True
    solver_type: str = "midpoint"  # DPM-Solver++ second-order variant ("midpoint" or "heun")

    def __post_init__(self) -> None:
        if self.prediction_type != "epsilon":
            raise RequestError(
                f"prediction_type {self.prediction_type!r} is not supported: the samplers expect an "
                "epsilon-prediction model (SD1.5); use an SD1.5 checkpoint and its scheduler config"
            )
        if self.trained_betas is None and self.beta_schedule not in _BETA_SCHEDULES:
            raise RequestError(
                f"beta_schedule {self.beta_schedule!r} is not supported; use one of {', '.join(_BETA_SCHEDULES)}"
            )
        if self.timestep_spacing is not None and self.timestep_spacing not in _SPACINGS:
            raise RequestError(
                f"timestep_spacing {self.timestep_spacing!r} is not supported; use one of {', '.join(_SPACINGS)}"
            )
        if not self.skip_prk_steps:
            raise RequestError("skip_prk_steps=False (PNDM Runge-Kutta warm-up) is not supported; set it to true")
        if self.solver_type not in _SOLVER_TYPES:
            raise RequestError(f"solver_type {self.solver_type!r} is not supported; use one of {', '.join(_SOLVER_TYPES)}")
        if self.num_train_timesteps < 2:
            raise RequestError(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise RequestError(
                f"trained_betas has {len(self.trained_betas)} values but num_train_timesteps is "
                f"{self.num_train_timesteps}; they must agree"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SchedulerConfig:
        """Build from a diffusers scheduler config dict; unknown keys are ignored.

        Raises :class:`~dynamicid_rt.errors.RequestError` (a ``ValueError``) for settings the
        samplers do not implement (v-prediction, zero-terminal-SNR rescaling, thresholding...).
        """
        for key, allowed in _REQUIRED_VALUES.items():
            if key in d and d[key] not in allowed:
                raise RequestError(
                    f"scheduler setting {key}={d[key]!r} is not supported (supported: "
                    f"{', '.join(repr(a) for a in allowed)}); remove it from the scheduler config"
                )
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("trained_betas") is not None:
            kwargs["trained_betas"] = tuple(float(b) for b in kwargs["trained_betas"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> SchedulerConfig:
        """Read a diffusers ``scheduler_config.json``."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelFolderError(f"scheduler config not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFolderError(f"scheduler config {path} is not readable JSON ({e}); restore the file") from e
        if not isinstance(d, dict):
            raise ModelFolderError(f"scheduler config {path} must hold a JSON object")
        return cls.from_dict(d)


def _normalise_name(name: str) -> str:
    return "_".join(name.strip().lower().replace("++", "pp").replace("-", " ").replace("_", " ").split())


def canonical_sampler(name: str, schedule: str | None = None) -> str:
    """Our name (one of :data:`SAMPLERS`, or "default") for a sampler spelt as diffusers, ComfyUI,
    k-diffusion or AUTOMATIC1111 spell it: "euler_ancestral", "Euler a", "DPM++ 2M Karras"...

    ``schedule`` is ComfyUI's scheduler or A1111's "Schedule type": "karras" turns dpmpp_2m into
    dpmpp_2m_karras, as does "automatic" (A1111's default schedule for DPM++ 2M); "normal" (or none)
    leaves the sampler as it is.
    """
    key = _normalise_name(name)
    sampler = key if key in SAMPLERS or key == "default" else SAMPLER_ALIASES.get(key)
    if sampler is None:
        raise RequestError(
            f"unknown sampler {name!r}; choose one of default, {', '.join(SAMPLERS)} (diffusers, ComfyUI and "
            "A1111 names such as euler_ancestral or 'DPM++ 2M Karras' work too)"
        )
    kind = _normalise_name(schedule or "")
    if kind in _PLAIN_SCHEDULES:
        return sampler
    if kind == "automatic":
        return _A1111_AUTOMATIC.get(sampler, sampler)
    if kind == "karras" and sampler in ("dpmpp_2m", "dpmpp_2m_karras"):
        return "dpmpp_2m_karras"
    raise RequestError(f"schedule {schedule!r} is not available for sampler {name!r}; use karras with dpmpp_2m, or no schedule")


def for_sampler(config: SchedulerConfig, name: str) -> SchedulerConfig:
    """``config`` with the timestep spacing sampler ``name`` runs with: the config's own, or, where the
    config names none, the default of the sampler's diffusers scheduler class."""
    if config.timestep_spacing is not None:
        return config
    return replace(config, timestep_spacing=_DEFAULT_SPACING[name])


def sampler_for_scheduler_class(class_name: str, config: Mapping[str, Any]) -> str:
    """The sampler matching a diffusers scheduler class name (``"pndm"`` for unknown classes)."""
    if class_name == "DPMSolverMultistepScheduler":
        return "dpmpp_2m_karras" if config.get("use_karras_sigmas") else "dpmpp_2m"
    name = _SCHEDULER_CLASSES.get(class_name)
    if name is None:
        logger.info("scheduler class %r has no matching sampler; using pndm", class_name)
        return "pndm"
    return name


# --- schedule helpers -------------------------------------------------------------------------


def betas(config: SchedulerConfig) -> np.ndarray:
    """Training noise schedule β_t, float64, length num_train_timesteps."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        return np.asarray(config.trained_betas, dtype=np.float64)
    if config.beta_schedule == "linear":
        return np.linspace(config.beta_start, config.beta_end, n, dtype=np.float64)
    if config.beta_schedule == "scaled_linear":
        return np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float64) ** 2
    # squaredcos_cap_v2: the Glide cosine schedule, β capped at 0.999.
    t = np.arange(n + 1, dtype=np.float64) / n
    alpha_bar = np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)


def alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
    """ᾱ_t = Π(1-β), float64."""
    return np.cumprod(1.0 - betas(config))


def training_sigmas(config: SchedulerConfig) -> np.ndarray:
    """k-diffusion σ_t = sqrt((1-ᾱ_t)/ᾱ_t) for every training timestep (ascending in t)."""
    ac = alphas_cumprod(config)
    return np.sqrt((1.0 - ac) / ac)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) σ ramp from sigma_max down to sigma_min, n values."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigmas: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timesteps whose σ matches, interpolating linearly in log σ (as diffusers)."""
    log_train = np.log(train_sigmas)
    log_s = np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-10))
    low = np.clip(np.searchsorted(log_train, log_s, side="right") - 1, 0, len(log_train) - 2)
    w = np.clip((log_train[low] - log_s) / (log_train[low] - log_train[low + 1]), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def _spaced_timesteps(config: SchedulerConfig, steps: int, *, round_linspace: bool) -> np.ndarray:
    """Descending timesteps of the DDIM/Euler family for the config's timestep_spacing."""
    n_train = config.num_train_timesteps
    if config.timestep_spacing == "leading":
        return (np.arange(steps) * (n_train // steps))[::-1].astype(np.float64) + config.steps_offset
    if config.timestep_spacing == "trailing":
        # diffusers writes np.arange(n_train, 0, -ratio), which for some step counts (61, 103...)
        # yields one extra, bogus timestep -1; the first `steps` values are the same as these.
        return np.round(n_train - np.arange(steps) * (n_train / steps)) - 1.0
    if round_linspace:
        return np.linspace(0, n_train - 1, steps).round()[::-1]
    # Euler keeps fractional linspace timesteps, made in float32 by diffusers.
    return np.linspace(0, n_train - 1, steps, dtype=np.float32)[::-1].astype(np.float64)


def _dpm_schedule(config: SchedulerConfig, steps: int, karras: bool) -> tuple[np.ndarray, np.ndarray]:
    """(model timesteps, σ per step + final 0) of DPMSolverMultistepScheduler."""
    n_train = config.num_train_timesteps
    train = training_sigmas(config)
    if config.timestep_spacing == "leading":
        ratio = n_train // (steps + 1)
        ts = (np.arange(steps + 1) * ratio)[::-1][:-1].astype(np.float64) + config.steps_offset
    elif config.timestep_spacing == "trailing":
        ts = np.round(n_train - np.arange(steps) * (n_train / steps)) - 1.0
    else:
        ts = np.linspace(0, n_train - 1, steps + 1).round()[::-1][:-1]
    if karras:
        sig = karras_sigmas(train[0], train[-1], steps)
        ts = sigma_to_t(sig, train)
        # diffusers rounds these, except for the cosine schedule where its int64 cast truncates.
        ts = np.floor(ts) if config.beta_schedule == "squaredcos_cap_v2" else np.round(ts)
    else:
        sig = np.interp(ts, np.arange(n_train), train)
    return ts, np.append(sig, 0.0)


def _euler_schedule(config: SchedulerConfig, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(model timesteps, σ per step + final 0) of the Euler schedulers."""
    ts = _spaced_timesteps(config, steps, round_linspace=False)
    sig = np.interp(ts, np.arange(config.num_train_timesteps), training_sigmas(config))
    return ts, np.append(sig, 0.0)


def _pndm_timesteps(config: SchedulerConfig, steps: int) -> np.ndarray:
    """PLMS timesteps: the second one repeated (the first step is redone with averaged eps)."""
    ts = _spaced_timesteps(config, steps, round_linspace=True)
    return np.concatenate([ts[:1], ts[1:2], ts[1:]]) if steps > 1 else ts


def _check(name: str, steps: int, config: SchedulerConfig | None = None) -> None:
    if name not in SAMPLERS:
        raise RequestError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise RequestError(f"steps must be a positive integer, got {steps!r}")
    if config is not None and steps > config.num_train_timesteps:
        raise RequestError(f"steps ({steps}) cannot exceed num_train_timesteps ({config.num_train_timesteps})")


def timesteps(name: str, config: SchedulerConfig, steps: int) -> np.ndarray:
    """The timesteps passed to the model, in call order (float64; integral except Euler linspace)."""
    _check(name, steps, config)
    config = for_sampler(config, name)
    if name == "ddim":
        return _spaced_timesteps(config, steps, round_linspace=True)
    if name in ("euler", "euler_a"):
        return _euler_schedule(config, steps)[0]
    if name in ("dpmpp_2m", "dpmpp_2m_karras"):
        return _dpm_schedule(config, steps, karras=name == "dpmpp_2m_karras")[0]
    return _pndm_timesteps(config, steps)


def num_model_calls(name: str, steps: int) -> int:
    """How many times the sampler calls the model (PNDM: steps+1, its first step runs twice)."""
    _check(name, steps)
    return steps + 1 if name == "pndm" and steps > 1 else steps


# --- samplers ---------------------------------------------------------------------------------


def _call(denoise: Denoiser, x: np.ndarray, t: float, step: int) -> np.ndarray:
    eps = np.asarray(denoise(x.astype(np.float32), float(t), step), dtype=np.float64)
    if eps.shape != x.shape:
        raise RequestError(f"the denoiser returned shape {eps.shape} for a latent of shape {x.shape}; they must match")
    return eps


def _report(callback: Callback | None, step: int, total: int, x: np.ndarray) -> None:
    if callback is not None:
        callback(step, total, x.astype(np.float32))


def sample_ddim(
    denoise: Denoiser, noise: np.ndarray, config: SchedulerConfig, steps: int, callback: Callback | None = None
) -> np.ndarray:
    """DDIM, eta 0 (DDIMScheduler)."""
    config = for_sampler(config, "ddim")
    ac = alphas_cumprod(config)
    final = 1.0 if config.set_alpha_to_one else ac[0]
    ts = _spaced_timesteps(config, steps, round_linspace=True)
    # diffusers steps back by num_train // steps whatever the spacing.
    stride = config.num_train_timesteps // steps
    x = np.asarray(noise, dtype=np.float64)
    for i, t in enumerate(ts):
        eps = _call(denoise, x, t, i)
        a_t = ac[int(t)]
        prev = int(t) - stride
        a_prev = ac[prev] if prev >= 0 else final
        x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps
        _report(callback, i, len(ts), x)
    return x.astype(np.float32)


def _init_sigma(config: SchedulerConfig, sigma_max: float) -> float:
    # diffusers' Euler schedulers treat "leading" latents as x/sqrt(σ²+1)-scaled VP samples.
    return math.sqrt(sigma_max**2 + 1.0) if config.timestep_spacing == "leading" else sigma_max


def sample_euler(
    denoise: Denoiser, noise: np.ndarray, config: SchedulerConfig, steps: int, callback: Callback | None = None
) -> np.ndarray:
    """Euler (EulerDiscreteScheduler, no churn)."""
    config = for_sampler(config, "euler")
    ts, sig = _euler_schedule(config, steps)
    x = np.asarray(noise, dtype=np.float64) * _init_sigma(config, sig.max())
    for i, t in enumerate(ts):
        eps = _call(denoise, x / math.sqrt(sig[i] ** 2 + 1.0), t, i)
        x = x + eps * (sig[i + 1] - sig[i])
        _report(callback, i, len(ts), x)
    return x.astype(np.float32)


def sample_euler_ancestral(
    denoise: Denoiser,
    noise: np.ndarray,
    config: SchedulerConfig,
    steps: int,
    noise_source: NoiseSource,
    callback: Callback | None = None,
) -> np.ndarray:
    """Euler ancestral (EulerAncestralDiscreteScheduler); draws fresh noise at every step."""
    config = for_sampler(config, "euler_a")
    ts, sig = _euler_schedule(config, steps)
    x = np.asarray(noise, dtype=np.float64) * _init_sigma(config, sig.max())
    for i, t in enumerate(ts):
        s, s_next = sig[i], sig[i + 1]
        eps = _call(denoise, x / math.sqrt(s**2 + 1.0), t, i)
        s_up = math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)
        s_down = math.sqrt(s_next**2 - s_up**2)
        # Drawn at the last step too (σ_up = 0 there) so the noise stream matches diffusers'.
        z = np.asarray(noise_source(x.shape), dtype=np.float64)
        x = x + eps * (s_down - s) + z * s_up
        _report(callback, i, len(ts), x)
    return x.astype(np.float32)


def sample_dpmpp_2m(
    denoise: Denoiser,
    noise: np.ndarray,
    config: SchedulerConfig,
    steps: int,
    karras: bool = False,
    callback: Callback | None = None,
) -> np.ndarray:
    """DPM-Solver++(2M) (DPMSolverMultistepScheduler, order 2, final σ 0, optional Karras σ)."""
    config = for_sampler(config, "dpmpp_2m")
    ts, sig = _dpm_schedule(config, steps, karras)
    # Work on VP samples x = α(x0 + σ·eps) with α = 1/sqrt(σ²+1); λ = -log σ.
    x = np.asarray(noise, dtype=np.float64)
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
            if config.solver_type == "midpoint":
                x = x_first - 0.5 * a_next * (ratio - 1.0) * d1
            else:
                x = x_first + a_next * ((ratio - 1.0) / h + 1.0) * d1
        x0_prev = x0
        _report(callback, i, len(ts), x)
    return x.astype(np.float32)


def sample_pndm(
    denoise: Denoiser, noise: np.ndarray, config: SchedulerConfig, steps: int, callback: Callback | None = None
) -> np.ndarray:
    """PLMS (PNDMScheduler with skip_prk_steps): steps+1 model calls."""
    config = for_sampler(config, "pndm")
    ac = alphas_cumprod(config)
    final = 1.0 if config.set_alpha_to_one else ac[0]
    stride = config.num_train_timesteps // steps
    ts = _pndm_timesteps(config, steps)

    def move(x: np.ndarray, t: int, t_prev: int, eps: np.ndarray) -> np.ndarray:
        a_t = ac[t]
        a_prev = ac[t_prev] if t_prev >= 0 else final
        denom = a_t * math.sqrt(1.0 - a_prev) + math.sqrt(a_t * (1.0 - a_t) * a_prev)
        return math.sqrt(a_prev / a_t) * x - (a_prev - a_t) * eps / denom

    x = np.asarray(noise, dtype=np.float64)
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
        _report(callback, i, len(ts), x)
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
) -> np.ndarray:
    """Run sampler ``name`` from unit Gaussian ``noise`` (B,4,h,w); returns the final latent, float32.

    The sampler scales ``noise`` by the scheduler's initial σ itself. Euler a draws its ancestral
    noise from ``noise_source(shape)`` when given (the pipeline passes one stream per image,
    :func:`dynamicid_rt.noise.step_noise_source`; tests replay another implementation's noise),
    else from ``rng.standard_normal`` (a fresh unseeded generator when ``rng`` is None).
    ``callback(step, total, latent)`` runs after every model call, ``total`` being
    :func:`num_model_calls`; an exception raised from it stops sampling and propagates.
    """
    _check(name, steps, config)
    if rng is not None and noise_source is not None:
        raise RequestError("pass either rng or noise_source, not both")
    noise = np.asarray(noise)
    if noise.ndim != 4 or not np.issubdtype(noise.dtype, np.floating):
        raise RequestError(f"noise must be a float (B,4,h,w) array, got {noise.dtype} {noise.shape}")
    if name == "ddim":
        return sample_ddim(denoise, noise, config, steps, callback)
    if name == "euler":
        return sample_euler(denoise, noise, config, steps, callback)
    if name == "euler_a":
        if noise_source is None:
            generator = rng if rng is not None else np.random.default_rng()
            noise_source = generator.standard_normal
        return sample_euler_ancestral(denoise, noise, config, steps, noise_source, callback)
    if name in ("dpmpp_2m", "dpmpp_2m_karras"):
        return sample_dpmpp_2m(denoise, noise, config, steps, karras=name == "dpmpp_2m_karras", callback=callback)
    return sample_pndm(denoise, noise, config, steps, callback)
