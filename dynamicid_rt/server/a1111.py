"""AUTOMATIC1111's response shapes: the txt2img ``info`` JSON, samplers, schedulers, models, options."""
from __future__ import annotations

import json
from typing import Sequence

from .. import SAMPLERS, ModelInfo, Result, __version__, format_parameters
from .plan import Plan

# A1111's (>= 1.9) names of our samplers; a sampler A1111 lacks keeps our name, as the PNG
# parameters write it.
_A1111_NAMES = {"dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M", "euler_a": "Euler a", "euler": "Euler",
                "ddim": "DDIM", "pndm": "PLMS"}
SCHEDULER_LIST = (
    {"name": "automatic", "label": "Automatic"},
    {"name": "uniform", "label": "Uniform"},
    {"name": "karras", "label": "Karras"},
)


def a1111_sampler_name(sampler: str) -> str:
    return _A1111_NAMES.get(sampler, sampler)


def sampler_list() -> list[dict]:
    """A1111's ``/samplers``: one entry per A1111 name, our names (each accepted too) as aliases."""
    entries: dict[str, dict] = {}
    for sampler in SAMPLERS:
        entry = entries.setdefault(a1111_sampler_name(sampler), {"name": a1111_sampler_name(sampler), "aliases": [], "options": {}})
        entry["aliases"].append(sampler)
        if sampler == "dpmpp_2m_karras":
            entry["options"]["scheduler"] = "karras"  # A1111's Automatic schedule for DPM++ 2M
    return list(entries.values())


def model_title(model: ModelInfo) -> str:
    """A1111's checkpoint title: ``name [hash]``."""
    return f"{model.name} [{model.hash}]" if model.hash else model.name


def info_json(plan: Plan, results: Sequence[Result], model: ModelInfo, inpainting_unet: bool = False) -> str:
    """A1111's ``info`` text for the images of ``results`` (the batches that ran); ``inpainting_unet``:
    the model is an inpainting checkpoint, whose UNet takes the mask and masked picture."""
    first = plan.requests[0]
    seeds = [seed for result in results for seed in result.seeds]
    infotexts = [format_parameters(result, k) for result in results for k in range(len(result.images))]
    sampler = results[0].sampler if results else ""
    count = len(seeds)
    info = {
        "prompt": first.prompt,
        "all_prompts": [first.prompt] * count,
        "negative_prompt": first.negative_prompt,
        "all_negative_prompts": [first.negative_prompt] * count,
        "seed": first.seed,
        "all_seeds": seeds,
        "subseed": first.seed,
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": first.width,
        "height": first.height,
        "sampler_name": a1111_sampler_name(sampler) if sampler else plan.sampler_name,
        "cfg_scale": first.guidance,
        "steps": first.steps,
        "batch_size": first.batch,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model.name,
        "sd_model_hash": model.hash or None,
        "sd_vae_name": model.vae or None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": first.strength if first.init_image is not None else None,
        "extra_generation_params": {"DynamicID identities": len(plan.people)},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": "",
        "clip_skip": 1,
        "is_using_inpainting_conditioning": inpainting_unet,
        "version": f"dynamicid-rt {__version__}",
    }
    return json.dumps(info, ensure_ascii=False)


def sd_models(model: ModelInfo) -> list[dict]:
    return [{"title": model_title(model), "model_name": model.name, "hash": model.hash or None, "sha256": None,
             "filename": model.name, "config": None}]


def options(model: ModelInfo, backend: dict[str, str]) -> dict:
    """The settings A1111 clients read; fixed for the life of the server."""
    return {
        "sd_model_checkpoint": model_title(model),
        "sd_checkpoint_hash": model.hash or None,
        "sd_vae": model.vae or "Automatic",
        "samples_format": "png",
        "enable_pnginfo": True,
        "CLIP_stop_at_last_layers": 1,
        "dynamicid_backend": backend.get("backend", ""),
        "dynamicid_device": backend.get("device", ""),
        "dynamicid_precision": backend.get("precision", ""),
    }
