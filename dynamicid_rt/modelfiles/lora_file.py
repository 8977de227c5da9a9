"""Reading one LoRA file: kohya (diffusers' or LDM module names) or diffusers/PEFT layouts, in the
file's own dtype (:mod:`.safetensors_reader`), every layer checked as it is read (rank, matching
factors, one finite alpha, finite values, a bounded change of its weight). Matching the layers to
a model and the weight deltas are :mod:`dynamicid_rt.modelfiles.lora`'s."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import CheckpointError, RequestError
from ..files.checks import check_regular_file
from .safetensors_reader import read_float_tensors

PARTS = ("unet", "text_encoder")
_KOHYA_PREFIX = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
# Key markers of formats we recognise but do not merge, with the name users know them by.
_UNSUPPORTED = (
    ("hada_w1_a", "LoHa (LyCORIS Hadamard product)"),
    ("lokr_w1", "LoKr (LyCORIS Kronecker product)"),
    ("lora_mid", "LoCon with CP decomposition (lora_mid)"),
    ("oft_blocks", "OFT"),
    ("diff_b", "full-weight difference (diff)"),
)
# An upper bound of |alpha/rank * up·down| past which a layer is damaged (real LoRAs stay below 10).
MAX_LAYER_CHANGE = 1e4
# Pickle-based formats some LoRAs ship in: never unpickled, so named as unsupported.
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
# Keys only SDXL LoRAs hold (its second text encoder).
_SDXL_MARKERS = ("lora_te2_", "text_encoder_2.")
_PEFT_DOWN, _PEFT_UP = ".lora_A.weight", ".lora_B.weight"
# diffusers' pre-PEFT attention-processor format: "<attn>.processor.to_q_lora.down.weight".
_OLD_DIFFUSERS = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


@dataclass(frozen=True)
class LoraLayer:
    down: np.ndarray  # (rank, in) or conv (rank, in, kh, kw)
    up: np.ndarray  # (out, rank) or conv (out, rank, 1, 1)
    alpha: float | None  # None: alpha = rank (scale 1), as diffusers and kohya read a missing alpha

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass(frozen=True)
class LoraFile:
    path: Path
    name: str  # the file stem, as A1111 names it in <lora:name:scale>
    sha256: str  # of the whole file: the engine-cache key
    short_hash: str  # A1111's: 12 hex digits of the SHA-256 of the data after the header (or sshs_model_hash)
    format: str  # "kohya" or "diffusers"
    layers: Mapping[tuple[str, str], LoraLayer]  # (part, raw module name) -> layer

    def parts(self) -> set[str]:
        return {part for part, _ in self.layers}


def read_lora(path: str | Path) -> LoraFile:
    """Read a ``.safetensors`` LoRA (kohya, in diffusers' or LDM names, or diffusers/PEFT) in its own
    dtype (bf16 included) and check every layer (rank, shapes, finiteness, alpha); raises
    CheckpointError, one line naming the file and the layer, for unreadable or damaged files and for
    formats that are not plain LoRA (LoHa, LoKr, pickles, SDXL's)."""
    path = check_regular_file(path, "LoRA file", RequestError)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"LoRA {path.name}: the {path.suffix} format (a pickle) is not supported; only .safetensors LoRAs are read. "
            "Download the .safetensors version, or convert the file"
        )
    try:
        content = read_float_tensors(path, "LoRA", CheckpointError)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (not a readable .safetensors file)") from None
    tensors = content.tensors
    for marker, what in _UNSUPPORTED:
        if any(marker in k for k in tensors):
            raise CheckpointError(f"LoRA {path.name} is in the {what} format, which is not merged; use a plain LoRA or LoCon file")
    if any(k.startswith(_SDXL_MARKERS) for k in tensors):
        raise CheckpointError(f"LoRA {path.name} was made for SDXL (it holds layers of SDXL's second text encoder); use an SD1.5 LoRA")
    if any(k.startswith(tuple(_KOHYA_PREFIX)) for k in tensors):
        fmt, layers = "kohya", _kohya_layers(path, tensors)
    else:
        fmt, layers = "diffusers", _diffusers_layers(path, tensors)
    if not layers:
        sample = ", ".join(sorted(tensors)[:3]) or "none"
        raise CheckpointError(f"LoRA {path.name} holds no LoRA layers this runtime knows (keys: {sample}...); use a kohya or diffusers SD1.5 LoRA")
    # A1111 takes a hash the trainer stored (sd-scripts' "sshs_model_hash") over its own; only hex
    # digits go into the PNG parameters.
    stored = content.metadata.get("sshs_model_hash", "")
    short = stored[:12] if re.fullmatch(r"[0-9a-fA-F]{12,64}", stored) else content.data_sha256[:12]
    return LoraFile(path, path.stem, content.sha256, short, fmt, layers)


def _layer(path: Path, name: str, down: np.ndarray, up: np.ndarray, alpha: np.ndarray | None) -> LoraLayer:
    """One layer after its checks: matching 2-D (linear) or 4-D (convolution) factors of a rank
    above 0, one finite alpha, finite values and a bounded change of the weight."""
    where = f"LoRA {path.name}: layer {name}"
    fix = "the file is damaged or not an SD1.5 LoRA; download it again"
    if down.ndim not in (2, 4) or up.ndim != down.ndim or 0 in down.shape or 0 in up.shape:
        raise CheckpointError(f"{where} has lora_down {down.shape} and lora_up {up.shape}; expected non-empty 2-D or 4-D matrices ({fix})")
    rank = down.shape[0]
    if up.shape[1] != rank or (up.ndim == 4 and up.shape[2:] != (1, 1)):
        raise CheckpointError(f"{where}: lora_up {up.shape} does not fit lora_down {down.shape} (rank {rank}); {fix}")
    a = None
    if alpha is not None:
        if alpha.size != 1:
            raise CheckpointError(f"{where}: alpha has shape {alpha.shape}, expected a single number; {fix}")
        a = float(alpha.reshape(-1)[0])
        if not math.isfinite(a):
            raise CheckpointError(f"{where}: alpha is {a}; {fix}")
    for which, t in (("lora_down", down), ("lora_up", up)):
        if not np.isfinite(t).all():
            raise CheckpointError(f"{where}: {which} holds NaN or infinite values; {fix}")
    factor = abs(a / rank) if a is not None else 1.0
    bound = factor * rank * float(np.abs(up).max()) * float(np.abs(down).max())
    if bound > MAX_LAYER_CHANGE:
        raise CheckpointError(f"{where} would change its weights by up to {bound:.3g} (alpha {a}, rank {rank}); {fix}")
    return LoraLayer(down, up, a)


def _kohya_layers(path: Path, tensors: Mapping[str, np.ndarray]) -> dict[tuple[str, str], LoraLayer]:
    layers = {}
    for key, down in tensors.items():
        if not key.endswith(".lora_down.weight"):
            continue
        base = key[: -len(".lora_down.weight")]
        prefix = next(p for p in _KOHYA_PREFIX if base.startswith(p)) if base.startswith(tuple(_KOHYA_PREFIX)) else None
        up = tensors.get(base + ".lora_up.weight")
        if prefix is None or up is None:
            continue
        layers[(_KOHYA_PREFIX[prefix], base[len(prefix):])] = _layer(path, base, down, up, tensors.get(base + ".alpha"))
    return layers


def _diffusers_layers(path: Path, tensors: Mapping[str, np.ndarray]) -> dict[tuple[str, str], LoraLayer]:
    layers = {}
    for key, down in tensors.items():
        old = _OLD_DIFFUSERS.match(key)
        if key.endswith(_PEFT_DOWN):
            module, up_key = key[: -len(_PEFT_DOWN)], key[: -len(_PEFT_DOWN)] + _PEFT_UP
        elif old and old.group(3) == "down":
            target = "to_out.0" if old.group(2) == "to_out" else old.group(2)
            module, up_key = f"{old.group(1)}.{target}", key[: -len("down.weight")] + "up.weight"
        else:
            continue
        part, _, name = module.partition(".")
        if part not in PARTS or up_key not in tensors:
            continue
        layers[(part, name)] = _layer(path, module, down, tensors[up_key], tensors.get(module + ".alpha"))
    return layers
