"""User LoRAs: the references a Request holds, their checks, and the fp32 weight deltas.

A LoRA file is read once (by :mod:`.lora_file`, remembered here per file) into :class:`LoraFile`: its layers by (part, raw name) with their down/up
matrices and alpha, its content hash (the engine-cache key) and A1111's short hash (the PNG
``Lora hashes`` field). :func:`resolve` matches raw names to the model's modules and checks every
shape; :func:`weight_deltas` gives ``scale · alpha/rank · up·down`` per weight, summed over the
LoRAs in a fixed order (by content hash), so the merged weights do not depend on the order the
user listed them in. Merging into torch modules is :mod:`dynamicid_rt.models.lora_merge`; into
ONNX graphs, ``dynamicid_rt.export.lora_entries``; A1111's prompt tags, :mod:`.lora_tags`; the
check against a model before it loads, :mod:`.lora_fit`. This module imports numpy only.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError, RequestError
from ..files.checks import check_regular_file
from .lora_file import LoraFile, LoraLayer, read_lora
from .lora_names import is_ldm_name, layers_per_block, ldm_to_diffusers
from .safetensors_reader import file_hashes as _file_hashes

log = logging.getLogger(__name__)

# Strengths a LoRA can take: 0 is off, 1 full strength; beyond 10 nothing sensible comes out (and
# 1e30 overflows the weights).
SCALE_RANGE = (0.0, 10.0)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class LoraRef:
    """One LoRA of a generation: a file and its strength."""

    path: Path
    scale: float = 1.0


def parse_lora_arg(text: str) -> LoraRef:
    """``PATH[:SCALE]`` as the CLI's ``--lora`` takes it. An existing file is taken whole (a file
    named ``style:2``), a Windows drive letter is no scale, and a tail after the last colon is a
    scale only when it is written as a decimal number (``1_0``, ``inf`` and ``nan`` are refused)."""
    if not isinstance(text, str):
        raise RequestError(f"LoRA {text!r}: give PATH[:SCALE] as text, e.g. style.safetensors:0.8")
    if "\0" in text:
        raise RequestError(f"LoRA {text!r}: the path holds a NUL character")
    if Path(text).expanduser().is_file():
        return LoraRef(Path(text), 1.0)
    path, sep, tail = text.rpartition(":")
    if not sep or not path or re.fullmatch(r"[A-Za-z]", path) or re.search(r"[/\\]", tail):
        return LoraRef(Path(text), 1.0)  # no scale: "C:\\x.safetensors", or a colon inside the path
    if _NUMBER.fullmatch(tail.strip()):
        return LoraRef(Path(path), float(tail))
    try:
        float(tail)
    except ValueError:
        return LoraRef(Path(text), 1.0)  # a colon in a name that is not followed by a scale
    raise RequestError(f"LoRA {text!r}: scale {tail!r} is not a plain decimal number; write it as e.g. {path}:0.8")


def check_lora_refs(loras: object) -> list[LoraRef]:
    """Validate ``Request.loras`` (``LoraRef``s, ``(path, scale)`` pairs or paths): each file is read
    and checked (see :func:`read_lora`; remembered per file), each scale bounded. Raises a
    RequestError or CheckpointError naming the first bad entry."""
    if loras is None or isinstance(loras, (str, bytes, Path)) or not isinstance(loras, Sequence):
        raise RequestError(f"loras={loras!r}: give a list of (path, scale) pairs, e.g. [('style.safetensors', 0.8)]")
    refs = []
    for i, item in enumerate(loras):
        if isinstance(item, LoraRef):
            ref = item
        elif isinstance(item, (str, Path)):
            ref = LoraRef(Path(item))
        elif (isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) == 2
              and isinstance(item[0], (str, Path))):
            ref = LoraRef(Path(item[0]), item[1])
        else:
            raise RequestError(f"loras[{i}]={item!r}: expected a (path, scale) pair")
        if not isinstance(ref.path, (str, os.PathLike)):
            raise RequestError(f"loras[{i}]: the path {ref.path!r} must be a str or Path")
        ref = LoraRef(Path(ref.path), ref.scale)
        scale, (lo, hi) = ref.scale, SCALE_RANGE
        if (isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating))
                or not math.isfinite(float(scale)) or not lo <= float(scale) <= hi):
            raise RequestError(f"loras[{i}] {ref.path.name}: scale {scale!r} must be a finite number >= 0 and <= {hi:g} (1.0 is full strength)")
        try:
            path = check_regular_file(ref.path, "LoRA file", RequestError)
        except RequestError as exc:
            raise RequestError(f"{exc} (PATH[:SCALE], e.g. style.safetensors:0.8)") from None
        refs.append(LoraRef(path, float(scale)))
    load_loras(refs)  # reads and checks each file once per process
    return refs


_memo: dict[tuple, LoraFile] = {}


def load_loras(refs: Iterable[LoraRef]) -> list[tuple[LoraFile, float]]:
    """Read each LoRA once per process (remembered by path, size and change time)."""
    out = []
    for ref in refs:
        path = check_regular_file(ref.path, "LoRA file", RequestError)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if key not in _memo:
            _memo[key] = read_lora(path)
        out.append((_memo[key], ref.scale))
    return out


def file_hashes(path: Path) -> tuple[str, str]:
    """(SHA-256 of the file, A1111's short hash: SHA-256 of what follows the safetensors header);
    a folder, FIFO or device is refused (RequestError) before anything is read."""
    whole, data = _file_hashes(path, "LoRA file", RequestError)
    return whole, data[:12]


def _normalise(part: str, name: str, kohya: bool) -> str:
    # Kohya writes module paths with "_" for "."; text-encoder paths may or may not carry the
    # "text_model." level (transformers flattened CLIPTextModel at some version).
    key = name.replace(".", "_") if kohya else name
    strip = "text_model_" if kohya else "text_model."
    return key.removeprefix(strip) if part == "text_encoder" else key


def resolve(
    lora: LoraFile, modules: Mapping[str, Mapping[str, tuple[int, ...]]], warn: bool = True
) -> dict[tuple[str, str], LoraLayer]:
    """Match ``lora``'s layers to module weights: ``modules[part]`` maps each module path of that
    part to its weight shape. Returns ``{(part, module path): layer}`` for the parts given. A layer
    whose delta does not fit its weight raises CheckpointError naming it (an SDXL LoRA on SD1.5);
    unmatched layers are logged with their count, and a LoRA of which none match is refused."""
    kohya = lora.format == "kohya"
    index = {part: {_normalise(part, m, kohya): m for m in names} for part, names in modules.items()}
    per_block = layers_per_block(modules.get("unet", {}))
    matched, unmatched = {}, []
    for (part, raw), layer in lora.layers.items():
        if part not in modules:
            continue
        if kohya and part == "unet" and is_ldm_name(raw):
            raw = ldm_to_diffusers(raw, per_block)  # as diffusers' LoRA loader maps LDM names
        module = index[part].get(_normalise(part, raw, kohya))
        if module is None:
            unmatched.append(f"{part}:{raw}")
            continue
        want = tuple(modules[part][module])
        have = delta_shape(layer)
        if have != want and not (len(want) == 4 and len(have) == 2 and want[2:] == (1, 1) and have == want[:2]):
            raise CheckpointError(
                f"LoRA {lora.name}: layer {raw} has shape {have} but the model's {module} is {want}; "
                "the LoRA was made for another base model (SDXL?), use an SD1.5 LoRA"
            )
        matched[(part, module)] = layer
    if unmatched and matched and warn:
        log.warning("LoRA %s: %d of %d layers match no module of this model (e.g. %s)", lora.name, len(unmatched),
                    len(unmatched) + len(matched), unmatched[0])
    if not matched and any(part in modules for part, _ in lora.layers):
        raise CheckpointError(
            f"LoRA {lora.name}: none of its {len(lora.layers)} layers match this SD1.5 model (e.g. {unmatched[0]}); "
            "it was made for another model family, use an SD1.5 LoRA"
        )
    return matched


def delta_shape(layer: LoraLayer) -> tuple[int, ...]:
    """The shape of ``up·down``: (out, in) for linear layers, (out, in, kh, kw) for convolutions."""
    return (int(layer.up.shape[0]), *(int(d) for d in layer.down.shape[1:]))


def layer_delta(layer: LoraLayer, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    """``scale · alpha/rank · up·down`` in float32, shaped like the weight (``shape``)."""
    factor = scale * (layer.alpha / layer.rank if layer.alpha is not None else 1.0)
    up = layer.up.reshape(layer.up.shape[0], -1).astype(np.float32)
    down = layer.down.reshape(layer.rank, -1).astype(np.float32)
    return (np.float32(factor) * (up @ down)).reshape(shape)


def weight_deltas(
    loras: Iterable[tuple[LoraFile, float]], part: str, modules: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """``{module path: summed float32 delta}`` of every LoRA for one part; the sum runs in order of
    content hash, so the result does not depend on the order the LoRAs were given in."""
    deltas: dict[str, np.ndarray] = {}
    for lora, scale in sorted(loras, key=lambda item: (item[0].sha256, item[1])):
        for (_, module), layer in resolve(lora, {part: modules}).items():
            d = layer_delta(layer, scale, tuple(modules[module]))
            deltas[module] = deltas[module] + d if module in deltas else d
    return deltas


def cache_key(loras: Iterable[tuple[LoraFile, float]], part: str) -> list[list]:
    """The (hash, scale) pairs of the LoRAs that change ``part``, in canonical order (engine caches)."""
    return sorted([lora.sha256, float(scale)] for lora, scale in loras if part in lora.parts() and scale != 0)
