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


def _ldm_name(name: str, per_block: int) -> str:
    """A diffusers UNet module path in the original LDM spelling kohya also writes (the inverse of
    diffusers' own mapping, written out block by block for the test files)."""
    import re

    step = per_block + 1
    m = re.match(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$", name)
    mid = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", name)
    if m:
        kind, block, inner, layer, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        j = 0 if inner == "resnets" else 1
        i = block * step + layer + 1 if kind == "down_blocks" else block * step + layer
        head = f"{'input_blocks' if kind == 'down_blocks' else 'output_blocks'}.{i}.{j}"
    elif mid:
        inner, layer, rest = mid.group(1), int(mid.group(2)), mid.group(3)
        head = f"middle_block.{1 if inner == 'attentions' else 2 * layer}"
    else:
        return name
    for new, old in (("conv1", "in_layers.2"), ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
                     ("conv_shortcut", "skip_connection")):
        if rest == new:
            rest = old
    return f"{head}.{rest}"


def write_kohya_ldm(path: Path, unet, text_model, seed: int, rank: int = 4, alpha: float | None = 2.0, conv: bool = True,
                    bf16: bool = True) -> Path:
    """A kohya file with the UNet layers in LDM names (``lora_unet_input_blocks_1_1_...``), saved in
    bf16 as ``--save_precision bf16`` writes it."""
    import torch
    from safetensors.torch import save_file as save_torch

    rng = np.random.default_rng(seed)
    per_block = unet.config.layers_per_block
    dtype = torch.bfloat16 if bf16 else torch.float32
    tensors = {}
    for part, name, m in _targets(unet, text_model, conv):
        if part == "unet":
            key = "lora_unet_" + _ldm_name(name, per_block).replace(".", "_")
        else:
            key = "lora_te_" + _te_name(name).replace(".", "_")
        down, up = _pair(rng, m, rank)
        tensors[key + ".lora_down.weight"] = torch.from_numpy(down).to(dtype)
        tensors[key + ".lora_up.weight"] = torch.from_numpy(up).to(dtype)
        if alpha is not None:
            tensors[key + ".alpha"] = torch.tensor(alpha, dtype=dtype)
    save_torch(tensors, str(path))
    return path
