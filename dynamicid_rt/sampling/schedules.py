"""Noise schedules of diffusers' SD1.5 schedulers: the scheduler config, timestep spacing and σ.

:class:`SchedulerConfig` reads a diffusers ``scheduler_config.json``; the functions here give the
timesteps and σ each sampler of :mod:`dynamicid_rt.sampling.samplers` steps through, as the matching diffusers
scheduler class would. The schedule is computed in float64 (diffusers uses float32), which keeps
results within ~1e-6. This module imports only numpy and the standard library.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ModelFolderError, RequestError
from .names import SAMPLERS

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
    "lcm": "leading",  # LCMScheduler, TCDScheduler: the spacing is unused, their timesteps are their own
    "tcd": "leading",
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
    original_inference_steps: int = 50  # LCM/TCD: the distillation schedule their timesteps are taken from
    timestep_scaling: float = 10.0  # LCM: c_skip/c_out boundary-condition scaling of t

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
        if not 1 <= self.original_inference_steps <= self.num_train_timesteps:
            raise RequestError(
                f"original_inference_steps must lie in 1..{self.num_train_timesteps}, got {self.original_inference_steps}"
            )
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


def for_sampler(config: SchedulerConfig, name: str) -> SchedulerConfig:
    """``config`` with the timestep spacing sampler ``name`` runs with: the config's own, or, where the
    config names none, the default of the sampler's diffusers scheduler class. ``ddim_trailing`` is
    always "trailing", as ``DDIMScheduler.from_config(config, timestep_spacing="trailing")``."""
    if name == "ddim_trailing":
        return replace(config, timestep_spacing="trailing")
    if config.timestep_spacing is not None:
        return config
    return replace(config, timestep_spacing=_DEFAULT_SPACING[name])


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


def spaced_timesteps(config: SchedulerConfig, steps: int, *, round_linspace: bool) -> np.ndarray:
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


def dpm_schedule(config: SchedulerConfig, steps: int, karras: bool) -> tuple[np.ndarray, np.ndarray]:
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


def euler_schedule(config: SchedulerConfig, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(model timesteps, σ per step + final 0) of the Euler schedulers."""
    ts = spaced_timesteps(config, steps, round_linspace=False)
    sig = np.interp(ts, np.arange(config.num_train_timesteps), training_sigmas(config))
    return ts, np.append(sig, 0.0)


def pndm_timesteps(config: SchedulerConfig, steps: int) -> np.ndarray:
    """PLMS timesteps: the second one repeated (the first step is redone with averaged eps)."""
    ts = spaced_timesteps(config, steps, round_linspace=True)
    return np.concatenate([ts[:1], ts[1:2], ts[1:]]) if steps > 1 else ts


def consistency_timesteps(config: SchedulerConfig, steps: int) -> np.ndarray:
    """LCMScheduler/TCDScheduler timesteps: ``steps`` evenly spaced indices into the distillation
    schedule ``k-1, 2k-1, ... `` (k = num_train // original_inference_steps), from its end."""
    k = config.num_train_timesteps // config.original_inference_steps
    origin = (np.arange(1, config.original_inference_steps + 1) * k - 1)[::-1]
    picked = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    return origin[picked].astype(np.float64)


def check_sampler_steps(name: str, steps: int, config: SchedulerConfig | None = None) -> None:
    """RequestError unless sampler ``name`` can run ``steps`` steps (on ``config``'s schedule, when given)."""
    if config is None:
        _check_name_and_steps(name, steps)
    else:
        sampling_schedule(name, config, steps)


def _check_name_and_steps(name: str, steps: int) -> None:
    if name not in SAMPLERS:
        raise RequestError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise RequestError(f"steps must be a positive integer, got {steps!r}")


@dataclass(frozen=True)
class Schedule:
    """What sampler ``sampler`` steps through in one generation, computed once by the caller and
    passed in, as k-diffusion's samplers take their sigmas: the model timesteps in call order and
    the noise levels the updates read. Built by :func:`sampling_schedule`."""

    sampler: str  # one of SAMPLERS
    config: SchedulerConfig  # with the timestep spacing the sampler runs with (:func:`for_sampler`)
    steps: int  # as asked; PNDM calls the model steps+1 times
    timesteps: np.ndarray  # float64, one per model call (integral except Euler linspace)
    alphas_cumprod: np.ndarray  # ᾱ_t of every training timestep
    sigmas: np.ndarray | None = None  # Euler and DPM-Solver: σ at each timestep, then a final 0

    @property
    def final_alpha(self) -> float:
        """ᾱ after the last step (diffusers' ``final_alpha_cumprod``)."""
        return 1.0 if self.config.set_alpha_to_one else float(self.alphas_cumprod[0])

    @property
    def stride(self) -> int:
        """How far DDIM and PNDM step back: diffusers uses num_train // steps whatever the spacing."""
        return self.config.num_train_timesteps // self.steps


def sampling_schedule(name: str, config: SchedulerConfig, steps: int) -> Schedule:
    """The schedule sampler ``name`` runs ``steps`` steps on, as the matching diffusers scheduler
    builds it from ``config``; RequestError for a sampler or step count the schedule cannot take."""
    _check_name_and_steps(name, steps)
    if steps > config.num_train_timesteps:
        raise RequestError(f"steps ({steps}) cannot exceed num_train_timesteps ({config.num_train_timesteps})")
    config = for_sampler(config, name)
    sigmas = None
    if name in ("ddim", "ddim_trailing"):
        ts = spaced_timesteps(config, steps, round_linspace=True)
    elif name in ("lcm", "tcd"):
        ts = consistency_timesteps(config, steps)
    elif name in ("euler", "euler_a"):
        ts, sigmas = euler_schedule(config, steps)
    elif name in ("dpmpp_2m", "dpmpp_2m_karras"):
        ts, sigmas = dpm_schedule(config, steps, karras=name == "dpmpp_2m_karras")
    else:
        ts = pndm_timesteps(config, steps)
    # "leading" spacing plus steps_offset reaches the timestep past the last at the highest step
    # counts (PNDM and DDIM at 1000 steps: t = 1000), where the schedule has no value.
    top = float(ts.max())
    if top >= config.num_train_timesteps:
        raise RequestError(
            f"{name} with {steps} steps reaches timestep {top:.0f}, past the model's {config.num_train_timesteps} "
            f"training steps; use fewer steps (at most {steps - 1})"
        )
    if name in ("lcm", "tcd") and steps > config.original_inference_steps:
        raise RequestError(
            f"{name} takes at most {config.original_inference_steps} steps (its distillation schedule), got {steps}; "
            "few-step samplers are meant for 1-8 steps"
        )
    return Schedule(name, config, steps, ts, alphas_cumprod(config), sigmas)


def max_sampler_steps(name: str, config: SchedulerConfig | None = None) -> int:
    """The most steps sampler ``name`` takes on ``config``'s schedule (default: SD1.5's), so that a
    form can offer only step counts :func:`sampling_schedule` accepts (LCM/TCD: the distillation
    schedule's length; PNDM/DDIM: one below the step count that reaches past the last timestep)."""
    config = config or SchedulerConfig()
    top = config.original_inference_steps if name in ("lcm", "tcd") else config.num_train_timesteps
    for steps in range(top, 0, -1):
        try:
            sampling_schedule(name, config, steps)
        except RequestError:
            continue
        return steps
    raise RequestError(f"sampler {name!r} takes no step count on this schedule")


def timesteps(name: str, config: SchedulerConfig, steps: int) -> np.ndarray:
    """The timesteps passed to the model, in call order (float64; integral except Euler linspace)."""
    return sampling_schedule(name, config, steps).timesteps


def num_model_calls(name: str, steps: int) -> int:
    """How many times the sampler calls the model (PNDM: steps+1, its first step runs twice)."""
    _check_name_and_steps(name, steps)
    return steps + 1 if name == "pndm" and steps > 1 else steps
