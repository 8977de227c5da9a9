"""Module names a LoRA can target: kohya's LDM spelling mapped to diffusers', and the model's
linear and convolution weights read from the safetensors headers of its files (no weight loaded),
so a LoRA is checked against the model before anything is loaded or exported.

kohya's sd-scripts name SD1.5 UNet layers either after diffusers' modules
(``lora_unet_down_blocks_0_attentions_0_...``) or after the original LDM ones
(``lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q``); :func:`ldm_to_diffusers` maps
the second spelling block by block as diffusers' LoRA loader does (``_maybe_map_sgm_blocks_to_diffusers``
and ``_convert_unet_lora_key``), so both load the same layers.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from .weightcheck import header_shapes

_LDM_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)_(\d+)(?:_(\d+))?(?:_(.*))?$")
_INNER = ("resnets", "attentions", "upsamplers")
# Inside LDM resnets and the outer layers, in underscore spelling -> diffusers'.
_RENAMES = (
    (re.compile(r"^in_layers_2(?=_|$)"), "conv1"),
    (re.compile(r"^out_layers_3(?=_|$)"), "conv2"),
    (re.compile(r"^emb_layers_1(?=_|$)"), "time_emb_proj"),
    (re.compile(r"^skip_connection(?=_|$)"), "conv_shortcut"),
)
_OUTER = {"time_embed_0": "time_embedding_linear_1", "time_embed_2": "time_embedding_linear_2", "out_2": "conv_out",
          "input_blocks_0_0": "conv_in"}


def is_ldm_name(name: str) -> bool:
    return bool(_LDM_BLOCK.match(name)) or name in _OUTER


def ldm_to_diffusers(name: str, layers_per_block: int) -> str:
    """A UNet module path in kohya's underscore spelling of LDM names as diffusers' module path in
    the same spelling (``input_blocks_1_1_proj_in`` -> ``down_blocks_0_attentions_0_proj_in``);
    other names come back as they are."""
    if name in _OUTER:
        return _OUTER[name]
    m = _LDM_BLOCK.match(name)
    if not m:
        return name
    kind, i, j, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4) or ""
    step = layers_per_block + 1
    if kind == "middle_block":
        # middle_block_<i>_<rest>: 0 and 2 are resnets, 1 the attention (the regex took rest's first
        # number as j when there is one; put it back).
        rest = f"{j}_{rest}".rstrip("_") if j is not None else rest
        head = {0: "mid_block_resnets_0", 1: "mid_block_attentions_0", 2: "mid_block_resnets_1"}.get(i)
        return name if head is None else _inner(f"{head}_{rest}".rstrip("_"))
    if j is None:
        return name
    j = int(j)
    if kind == "input_blocks":
        if i == 0:
            return f"conv_in_{rest}".rstrip("_") if rest else "conv_in"
        block, layer = (i - 1) // step, (i - 1) % step
        if rest == "op" or rest.startswith("op_"):
            return f"down_blocks_{block}_downsamplers_0_conv{rest[2:]}"
        if j >= len(_INNER):
            return name
        return _inner(f"down_blocks_{block}_{_INNER[j]}_{layer}_{rest}".rstrip("_"))
    block, layer = i // step, i % step
    if j >= len(_INNER):
        return name
    return _inner(f"up_blocks_{block}_{_INNER[j]}_{layer if j < 2 else 0}_{rest}".rstrip("_"))


def _inner(path: str) -> str:
    """Resnet-internal LDM names (``in_layers_2``...) as diffusers'."""
    head = re.match(r"^((?:down|up)_blocks_\d+_resnets_\d+_|mid_block_resnets_\d+_)(.*)$", path)
    if not head:
        return path
    tail = head.group(2)
    for pattern, new in _RENAMES:
        tail = pattern.sub(new, tail)
    return head.group(1) + tail


# diffusers' UNet module-path words that hold an underscore, to put the dots back.
_WORDS = ("down_blocks", "up_blocks", "mid_block", "transformer_blocks", "conv_in", "conv_out", "conv_shortcut",
          "time_embedding", "linear_1", "linear_2", "time_emb_proj", "proj_in", "proj_out", "to_q", "to_k", "to_v",
          "to_out")


def _dotted(flat: str) -> str:
    """A diffusers UNet module path from its underscore spelling."""
    dotted = flat.replace("_", ".")
    for word in _WORDS:
        dotted = re.sub(rf"(?<![^.]){re.escape(word.replace('_', '.'))}(?![^.])", word, dotted)
    return dotted


def layers_per_block(unet_modules: Mapping[str, object]) -> int:
    """Resnets per down block of a diffusers UNet, read from its module paths (SD1.5: 2)."""
    found = {int(m.group(1)) for name in unet_modules for m in [re.match(r"^down_blocks\.0\.resnets\.(\d+)\.", name)] if m}
    return max(found) + 1 if found else 2


def _weights(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    """Module path -> weight shape of the 2-D and 4-D ``.weight`` tensors under ``prefix``."""
    return {name[len(prefix):-len(".weight")]: shape for name, shape in shapes.items()
            if name.startswith(prefix) and name.endswith(".weight") and len(shape) in (2, 4) and "embeddings" not in name}


def model_layer_shapes(base: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{part: {diffusers module path: weight shape}}`` for ``unet`` and ``text_encoder`` of an SD1.5
    base (a diffusers folder or a single-file checkpoint), from the file headers alone. A part whose
    weights are not in a readable ``.safetensors`` file is left out (checked when loaded)."""
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    if base.is_file():
        shapes = header_shapes(base) or {}
        unet = _weights(shapes, "model.diffusion_model.")
        if unet:
            # The first downsampler sits at input_blocks.<layers_per_block + 1>.
            first_down = min((int(m.group(1)) for n in unet for m in [re.match(r"^input_blocks\.(\d+)\.0\.op$", n)] if m), default=3)
            per_block = max(first_down - 1, 1)
            out["unet"] = {_dotted(ldm_to_diffusers(name.replace(".", "_"), per_block)): shape for name, shape in unet.items()}
        text = _weights(shapes, "cond_stage_model.transformer.")
        if text:
            out["text_encoder"] = text
        return out
    folder = base if base.name == "unet" else base / "unet"
    unet_file = folder / "diffusion_pytorch_model.safetensors"
    if unet_file.is_file():
        shapes = header_shapes(unet_file)
        if shapes:
            out["unet"] = _weights(shapes, "")
    text_file = base / "text_encoder" / "model.safetensors"
    if base.name != "unet" and text_file.is_file():
        shapes = header_shapes(text_file)
        if shapes:
            out["text_encoder"] = _weights(shapes, "")
    return out
