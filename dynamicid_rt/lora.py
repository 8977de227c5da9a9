"""User LoRAs: reading kohya and diffusers/PEFT files, checking them, and the fp32 weight deltas.

A LoRA file is read once into :class:`LoraFile`: its layers by (part, raw name) with their down/up
matrices and alpha, its content hash (the engine-cache key) and A1111's short hash (the PNG
``Lora hashes`` field). :func:`resolve` matches raw names to the model's modules and checks every
shape; :func:`weight_deltas` gives ``scale · alpha/rank · up·down`` per weight, summed over the
LoRAs in a fixed order (by content hash), so the merged weights do not depend on the order the
user listed them in. Merging into torch modules is :mod:`dynamicid_rt.models.lora_merge`; into
ONNX graphs, ``dynamicid_rt.export.lora_entries``; A1111's prompt tags, :mod:`.lora_tags`. This
module imports numpy and safetensors only.
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

from .errors import CheckpointError, RequestError
from .files import check_regular_file
from .lora_names import is_ldm_name, layers_per_block, ldm_to_diffusers
from .safetensors_reader import file_hashes as _file_hashes
from .safetensors_reader import read_float_tensors

log = logging.getLogger(__name__)

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
# Strengths a LoRA can take: 0 is off, 1 full strength; beyond 10 nothing sensible comes out (and
# 1e30 overflows the weights).
SCALE_RANGE = (0.0, 10.0)
# An upper bound of |alpha/rank * up·down| past which a layer is damaged (real LoRAs stay below 10).
MAX_LAYER_CHANGE = 1e4
# Pickle-based formats some LoRAs ship in: never unpickled, so named as unsupported.
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
# Keys only SDXL LoRAs hold (its second text encoder).
_SDXL_MARKERS = ("lora_te2_", "text_encoder_2.")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
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
