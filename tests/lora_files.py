"""Random LoRA files for tests, in the layouts kohya's sd-scripts and diffusers/PEFT write."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def _targets(unet, text_model, conv: bool):
    """(part, module path, module) of the layers the files carry: attention and MLP linears, plus
    the resnet 3x3 convolutions with ``conv`` (LoCon)."""
    import torch

    out = []
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Linear) and any(s in name for s in (".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net", "proj_in", "proj_out")):
            out.append(("unet", name, m))
        elif conv and isinstance(m, torch.nn.Conv2d) and (name.endswith(("conv1", "conv2")) or "proj_" in name):
            out.append(("unet", name, m))
    for name, m in text_model.named_modules():
        if isinstance(m, torch.nn.Linear) and ("self_attn" in name or "mlp" in name):
            out.append(("text_encoder", name, m))
    return out


def _pair(rng, m, rank: int):
    import torch

    if isinstance(m, torch.nn.Conv2d):
        k = m.kernel_size
        down = rng.standard_normal((rank, m.in_channels, *k)).astype(np.float32) * 0.1
        up = rng.standard_normal((m.out_channels, rank, 1, 1)).astype(np.float32) * 0.1
    else:
        down = rng.standard_normal((rank, m.in_features)).astype(np.float32) * 0.1
        up = rng.standard_normal((m.out_features, rank)).astype(np.float32) * 0.1
    return down, up


def _te_name(name: str) -> str:
    # Files name "text_model.encoder..." whether or not this transformers flattens CLIPTextModel.
    return name if name.startswith("text_model.") else f"text_model.{name}"


def write_kohya(path: Path, unet, text_model, seed: int, rank: int = 4, alpha: float | None = 2.0, conv: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {}
    for part, name, m in _targets(unet, text_model, conv):
        prefix = "lora_unet_" if part == "unet" else "lora_te_"
        key = prefix + (name if part == "unet" else _te_name(name)).replace(".", "_")
        tensors[key + ".lora_down.weight"], tensors[key + ".lora_up.weight"] = _pair(rng, m, rank)
        if alpha is not None:
            tensors[key + ".alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path))
    return path


def write_peft(path: Path, unet, text_model, seed: int, rank: int = 4) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {}
    for part, name, m in _targets(unet, text_model, conv=False):
        key = f"{part}.{name if part == 'unet' else _te_name(name)}"
        down, up = _pair(rng, m, rank)
        tensors[key + ".lora_A.weight"], tensors[key + ".lora_B.weight"] = down, up
    save_file(tensors, str(path))
    return path
