"""The ``unet`` engine (SPEC §1.5, §4) built from an SD1.5 UNet and the SAA checkpoint.

``install_saa`` merges the rank-r LoRA of every attention layer into the base weights once (in
fp32) and installs the attention processors of :mod:`dynamicid_rt.models.saa_attention` in one
place (``unet.set_attn_processor`` with a dict keyed by module path); ``load_unet`` does it for a
model folder. The SAA modules are importable from here too.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from ..errors import ModelFolderError
from ..modelfiles.checkpoints import check_keys, read_saa_checkpoint
from .saa_attention import (  # noqa: F401  (re-exported: the engine's module and its parts)
    GATE_THRESHOLD,
    TOKENS_PER_ID,
    SAAAttnProcessor,
    SAAInputs,
    SAAUNet,
    SelfAttnProcessor,
)

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

log = logging.getLogger(__name__)

_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out")


def _layer_level(name: str, n_levels: int) -> int:
    """Resolution level of an attention layer from its module path (diffusers UNet2DConditionModel)."""
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "mid_block":
        return n_levels - 1
    if parts[0] == "up_blocks":
        return n_levels - 1 - int(parts[1])
    raise ModelFolderError(
        f"unsupported UNet layout: attention layer {name!r} is outside down_blocks/mid_block/up_blocks; "
        "the base must be an SD1.5 UNet2DConditionModel"
    )


def _lora_linear(attn: "Attention", target: str) -> nn.Linear:
    return attn.to_out[0] if target == "to_out" else getattr(attn, target)


def install_saa(
    unet: "UNet2DConditionModel", processors: Mapping[str, torch.Tensor], source: str | Path = "<memory>"
) -> SAAUNet:
    """Merge the SAA LoRA into ``unet`` (in place) and install the SAA processors.

    ``processors`` holds ``"{i}.{param}"`` keys, i the layer's position in ``unet.attn_processors``
    (SPEC §2); the LoRA rank is read from the shapes. Raises CheckpointError naming missing,
    unexpected and mis-shaped keys.
    """
    names = list(unet.attn_processors)
    layers = {name: unet.get_submodule(name.rsplit(".", 1)[0]) for name in names}
    rank = next(
        (int(v.shape[0]) for k, v in processors.items() if k.endswith("_lora.down.weight") and hasattr(v, "shape")),
        0,
    )
    n_levels = len(unet.config.block_out_channels)
    levels = {name: _layer_level(name, n_levels) for name in names if layers[name].is_cross_attention}
    expected: dict[str, tuple[int, ...]] = {}
    for i, name in enumerate(names):
        attn = layers[name]
        for target in _LORA_TARGETS:
            lin = _lora_linear(attn, target)
            expected[f"{i}.{target}_lora.down.weight"] = (rank, lin.in_features)
            expected[f"{i}.{target}_lora.up.weight"] = (lin.out_features, rank)
        if attn.is_cross_attention:
            ip_shape = (attn.to_k.out_features, attn.to_k.in_features)
            expected[f"{i}.to_k_ip.weight"] = ip_shape
            expected[f"{i}.to_v_ip.weight"] = ip_shape
    check_keys(processors, expected, "SAA processor", source)

    installed: dict[str, object] = {}
    with torch.no_grad():
        for i, name in enumerate(names):
            attn = layers[name]
            for target in _LORA_TARGETS:
                weight = _lora_linear(attn, target).weight
                down = processors[f"{i}.{target}_lora.down.weight"].to(weight.device, torch.float32)
                up = processors[f"{i}.{target}_lora.up.weight"].to(weight.device, torch.float32)
                weight.copy_(weight.float() + up @ down)  # W' = W + up·down, merged in fp32
            if attn.is_cross_attention:
                proc = SAAAttnProcessor(attn.to_k.out_features, attn.to_k.in_features, levels[name], key=name)
                proc.to_k_ip.weight.copy_(processors[f"{i}.to_k_ip.weight"])
                proc.to_v_ip.weight.copy_(processors[f"{i}.to_v_ip.weight"])
                installed[name] = proc.to(device=attn.to_k.weight.device, dtype=attn.to_k.weight.dtype)
            else:
                installed[name] = SelfAttnProcessor()
    unet.set_attn_processor(installed)  # diffusers empties the dict it is given
    log.info("SAA from %s: LoRA rank %d merged into %d attention layers, %d with SAA", source, rank, len(names), len(levels))
    return SAAUNet(unet)


def _resolve_unet_folder(base: Path) -> Path:
    for folder in (base / "unet", base):
        if (folder / "config.json").is_file():
            return folder
    raise ModelFolderError(
        f"{base} is neither an SD1.5 diffusers folder (with unet/config.json) nor a UNet folder "
        "(with config.json); point the base model at the SD1.5 folder"
    )


def load_unet(
    base: "str | Path | UNet2DConditionModel",
    saa_checkpoint: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> SAAUNet:
    """The ``unet`` engine module: SD1.5 UNet (folder, its ``unet/`` folder, or a built module,
    which is modified in place) with the SAA checkpoint merged and installed."""
    if isinstance(base, (str, Path)):
        from diffusers import UNet2DConditionModel

        folder = _resolve_unet_folder(Path(base).expanduser())
        # fp32 first so the LoRA merge is exact; cast afterwards.
        unet = UNet2DConditionModel.from_pretrained(str(folder), torch_dtype=torch.float32)
    else:
        unet = base
    ckpt = read_saa_checkpoint(saa_checkpoint)
    model = install_saa(unet, ckpt.processors, ckpt.path)
    model.to(device=device, dtype=dtype)
    model.eval().requires_grad_(False)
    return model
