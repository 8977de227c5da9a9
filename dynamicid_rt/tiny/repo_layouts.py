"""The tiny bundle laid out as the real Hugging Face repos ship their files (SPEC §3's table), so
loaders and ``models pull`` meet what users download, with the tiny weights:

- :func:`write_sd15_repo`: ``stable-diffusion-v1-5/stable-diffusion-v1-5``: every part in fp32 and
  as the ``fp16`` variant, ``.safetensors`` and ``.bin``, the UNet's ``non_ema`` variant (other
  weights, so reading it shows), and what the runtime must never read or fetch (safety checker,
  feature extractor, the single-file checkpoints at the top);
- :func:`write_laion_clip_repo`: ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``: a full ``CLIPModel``
  (text tower included) with the legacy config whose ``vision_config`` lacks ``projection_dim``,
  and the open_clip files beside transformers' ones;
- :func:`write_ip_adapter_repo`: ``h94/IP-Adapter``'s vision-only ``models/image_encoder``;
- :func:`write_dynamicid_repo`: ``meteorite2023/DynamicID``'s checkpoints.

Each repo carries a README with the licence line of its model card. Same weights as the tiny
bundle everywhere (the fp16 files are the fp32 ones rounded): a loader that reads the right file
gives the very image of the project's own layout.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..hub.sources import DYNAMICID_REPO, IP_ADAPTER_REPO, LAION_CLIP_REPO, SD15_REPO, TAESD_REPO

if TYPE_CHECKING:
    import torch

    from ..modelfiles.paths import ModelPaths


_NAMES = {"diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
          "transformers": ("model.safetensors", "pytorch_model.bin")}


def _readme(folder: Path, licence: str | None, gated: bool = False) -> None:
    front = ["---"] + ([f"license: {licence}"] if licence else []) + (["extra_gated_prompt: accept the terms"] if gated else []) + ["---"]
    (folder / "README.md").write_text("\n".join(front) + "\n\nTiny random weights laid out as the real repo.\n", encoding="utf-8")


def _load(path: Path) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _save(state: dict, folder: Path, name: str) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in state.items()}
    if name.endswith(".safetensors"):
        save_file(state, str(folder / name), metadata={"format": "pt"})
    else:
        torch.save(state, folder / name)


def _variant(name: str, variant: str) -> str:
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _write_part(src: Path, dst: Path, library: str, fp32: bool, fp16: bool, bins: bool, non_ema: bool = False,
                config_dtype: str | None = None) -> None:
    """One diffusers/transformers part folder with the weight files the real repo has."""
    import torch

    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if config_dtype is not None:
        config["torch_dtype"] = config_dtype
    (dst / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    state = _load(src / _NAMES[library][0])
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    names = _NAMES[library] if bins else _NAMES[library][:1]
    for name in names:
        if fp32:
            _save(state, dst, name)
        if fp16:
            _save(half, dst, _variant(name, "fp16"))
        if non_ema:  # different weights: a loader that read them would give another image
            gen = torch.Generator().manual_seed(1)
            _save({k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                   for k, v in state.items()}, dst, _variant(name, "non_ema"))


def _dummy_weights(folder: Path, name: str) -> None:
    """A small valid weights file standing for one the runtime must not read or fetch."""
    import torch

    _save({"unused.weight": torch.zeros(4, 4)}, folder, name)


def write_sd15_repo(tiny: "ModelPaths", dest: Path, fp32: bool = True, fp16: bool = True, bins: bool = True) -> Path:
    """SD1.5's repo layout with the tiny base's weights; ``fp32=False`` gives a base downloaded
    with the fp16 variant only."""
    base, dest = tiny.base, Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _readme(dest, "creativeml-openrail-m")
    index = json.loads((base / "model_index.json").read_text(encoding="utf-8"))
    index |= {"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
              "feature_extractor": ["transformers", "CLIPImageProcessor"], "requires_safety_checker": True}
    (dest / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    for part in ("scheduler", "tokenizer"):
        shutil.copytree(base / part, dest / part, dirs_exist_ok=True)
    _write_part(base / "unet", dest / "unet", "diffusers", fp32, fp16, bins, non_ema=fp32)
    _write_part(base / "vae", dest / "vae", "diffusers", fp32, fp16, bins)
    _write_part(base / "text_encoder", dest / "text_encoder", "transformers", fp32, fp16, bins)
    safety = dest / "safety_checker"
    safety.mkdir(exist_ok=True)
    (safety / "config.json").write_text(json.dumps({"architectures": ["StableDiffusionSafetyChecker"]}), encoding="utf-8")
    for name in ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors"):
        _dummy_weights(safety, name)
    (dest / "feature_extractor").mkdir(exist_ok=True)
    shutil.copyfile(tiny.image_encoder / "preprocessor_config.json", dest / "feature_extractor" / "preprocessor_config.json")
    for name in ("v1-5-pruned-emaonly.safetensors", "v1-5-pruned.safetensors"):
        _dummy_weights(dest, name)
    (dest / "v1-5-pruned.ckpt").write_bytes(b"\0" * 4096)
    return dest


def write_laion_clip_repo(tiny: "ModelPaths", dest: Path, config_dtype: str = "float32") -> Path:
    """laion's full CLIPModel folder holding the tiny image encoder as its vision tower, with the
    legacy config (no ``projection_dim`` in ``vision_config``) and the open_clip files beside."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _readme(dest, "mit")
    vision_state = _load(tiny.image_encoder / "model.safetensors")
    vision = json.loads((tiny.image_encoder / "config.json").read_text(encoding="utf-8"))
    projection = vision_state["visual_projection.weight"].shape[0]
    vision_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                   "patch_size", "hidden_act", "layer_norm_eps")
    vision_config = {k: vision[k] for k in vision_keys if k in vision}
    text_config = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "vocab_size": 49408, "max_position_embeddings": 77}
    torch.manual_seed(5)
    model = CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection))
    missing, _ = model.load_state_dict(vision_state, strict=False)
    if any(k.startswith("vision_model.") for k in missing):
        raise RuntimeError(f"the tiny image encoder does not fit a CLIPModel: {missing[:4]}")
    state = model.state_dict()
    _save(state, dest, "model.safetensors")
    _save(state, dest, "pytorch_model.bin")
    # Legacy (transformers 4.2x) config: the vision tower's projection width is only at the top.
    config = {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": projection,
        "initializer_factor": 1.0, "logit_scale_init_value": 2.6592, "torch_dtype": config_dtype,
        "transformers_version": "4.24.0",
        "text_config": text_config | {"model_type": "clip_text_model"}, "text_config_dict": text_config,
        "vision_config": vision_config | {"model_type": "clip_vision_model"}, "vision_config_dict": vision_config,
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    shutil.copyfile(tiny.image_encoder / "preprocessor_config.json", dest / "preprocessor_config.json")
    (dest / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": projection}}), encoding="utf-8")
    _dummy_weights(dest, "open_clip_pytorch_model.bin")
    _dummy_weights(dest, "open_clip_model.safetensors")
    return dest


def write_ip_adapter_repo(tiny: "ModelPaths", dest: Path, config_dtype: str | None = "float16") -> Path:
    """h94/IP-Adapter: the vision-only image encoder under ``models/image_encoder`` (its config
    says float16 over fp32 weights, as the real one does), adapters beside it."""
    dest = Path(dest)
    encoder = dest / "models" / "image_encoder"
    _write_part(tiny.image_encoder, encoder, "transformers", fp32=True, fp16=False, bins=True, config_dtype=config_dtype)
    _readme(dest, "apache-2.0")
    _dummy_weights(dest / "models", "ip-adapter_sd15.safetensors")
    return dest


def write_dynamicid_repo(tiny: "ModelPaths", dest: Path) -> Path:
    """meteorite2023/DynamicID: the three checkpoints at the top of the repo."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _readme(dest, "apache-2.0")
    for path in (tiny.saa, tiny.imr, tiny.keypoint_encoder):
        if path is not None:
            shutil.copyfile(path, dest / path.name)
    return dest


def write_real_layout_bundle(tiny: "ModelPaths", dest: Path, fp32: bool = True) -> Path:
    """A model folder whose parts are laid out as the real repos ship them (SD1.5's repo as
    ``base/``, laion's CLIP folder as ``image_encoder/``, the DynamicID repo as ``dynamicid/``)."""
    dest = Path(dest)
    write_sd15_repo(tiny, dest / "base", fp32=fp32)
    write_laion_clip_repo(tiny, dest / "image_encoder")
    write_dynamicid_repo(tiny, dest / "dynamicid")
    shutil.copytree(tiny.insightface, dest / "insightface" / tiny.insightface.name, dirs_exist_ok=True)
    return dest


__all__ = ["DYNAMICID_REPO", "IP_ADAPTER_REPO", "LAION_CLIP_REPO", "SD15_REPO", "TAESD_REPO", "write_dynamicid_repo",
           "write_ip_adapter_repo", "write_laion_clip_repo", "write_real_layout_bundle", "write_sd15_repo"]
