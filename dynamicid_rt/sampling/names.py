"""Sampler names: ours (:data:`SAMPLERS`), other tools' spellings of them, and diffusers' scheduler classes.

Diffusers, ComfyUI, k-diffusion and AUTOMATIC1111 each spell the same samplers differently; requests,
PNG parameters and model folders are read through :func:`canonical_sampler` and
:func:`sampler_for_scheduler_class` so the rest of the package sees only our names.
This module imports only the standard library.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from ..errors import RequestError

logger = logging.getLogger(__name__)

SAMPLERS: tuple[str, ...] = (
    "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "pndm",
    # Few-step samplers for distilled models (LCM, TCD, Hyper-SD LoRAs): see dynamicid_rt.sampling.fewstep.
    "lcm", "tcd", "ddim_trailing",
)

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
    "lcmscheduler": "lcm",  # A1111 and ComfyUI spell it "LCM" / "lcm", which normalise to ours
    "tcdscheduler": "tcd",
}
# Schedules (ComfyUI "scheduler", A1111 >= 1.9 "Schedule type") that leave a sampler as it is;
# A1111's "Automatic" is each sampler's own default there, Karras for DPM++ 2M.
_PLAIN_SCHEDULES = ("", "normal", "default")
_A1111_AUTOMATIC = {"dpmpp_2m": "dpmpp_2m_karras"}
# diffusers' timestep_spacing="trailing" as a schedule name: DDIM with it is Hyper-SD's sampler.
_TRAILING = {"ddim": "ddim_trailing", "ddim_trailing": "ddim_trailing"}
# DPMSolverMultistepScheduler is not here: its sampler depends on use_karras_sigmas.
_SCHEDULER_CLASSES = {
    "PNDMScheduler": "pndm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "LCMScheduler": "lcm",
    "TCDScheduler": "tcd",
}



def _normalise_name(name: str) -> str:
    return "_".join(name.strip().lower().replace("++", "pp").replace("-", " ").replace("_", " ").split())


def canonical_sampler(name: str, schedule: str | None = None) -> str:
    """Our name (one of :data:`SAMPLERS`, or "default") for a sampler spelt as diffusers, ComfyUI,
    k-diffusion or AUTOMATIC1111 spell it: "euler_ancestral", "Euler a", "DPM++ 2M Karras"...

    ``schedule`` is ComfyUI's scheduler or A1111's "Schedule type": "karras" turns dpmpp_2m into
    dpmpp_2m_karras, as does "automatic" (A1111's default schedule for DPM++ 2M); "trailing"
    (diffusers' timestep_spacing) turns ddim into ddim_trailing; "normal" (or none) leaves the
    sampler as it is.
    """
    if not isinstance(name, str) or not (schedule is None or isinstance(schedule, str)):
        raise RequestError(f"sampler {name!r} (schedule {schedule!r}): give the sampler's name as text, e.g. 'euler_a'")
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
    if kind == "trailing" and sampler in _TRAILING:
        return _TRAILING[sampler]
    raise RequestError(f"schedule {schedule!r} is not available for sampler {name!r}; use karras with dpmpp_2m, trailing with ddim, or no schedule")



def sampler_for_scheduler_class(class_name: str, config: Mapping[str, Any]) -> str:
    """The sampler matching a diffusers scheduler class name (``"pndm"`` for unknown classes)."""
    if class_name == "DPMSolverMultistepScheduler":
        return "dpmpp_2m_karras" if config.get("use_karras_sigmas") else "dpmpp_2m"
    name = _SCHEDULER_CLASSES.get(class_name)
    if name is None:
        logger.info("scheduler class %r has no matching sampler; using pndm", class_name)
        return "pndm"
    return name

