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

import hashlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError, RequestError

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
    """``PATH[:SCALE]`` as the CLI's ``--lora`` takes it (a Windows drive letter is no scale)."""
    path, sep, tail = text.rpartition(":")
    if sep and path and not re.fullmatch(r"[A-Za-z]", path):
        try:
            return LoraRef(Path(path), float(tail))
        except ValueError:
            pass  # "C:\\x.safetensors" or a colon in the name: all of it is the path
    return LoraRef(Path(text), 1.0)


def check_lora_refs(loras: object) -> list[LoraRef]:
    """Validate ``Request.loras`` (``LoraRef``s, ``(path, scale)`` pairs or paths) without reading
    any weights; raises RequestError naming the first bad entry."""
    if loras is None or isinstance(loras, (str, bytes, Path)) or not isinstance(loras, Sequence):
        raise RequestError(f"loras={loras!r}: give a list of (path, scale) pairs, e.g. [('style.safetensors', 0.8)]")
    refs = []
    for i, item in enumerate(loras):
        if isinstance(item, LoraRef):
            ref = item
        elif isinstance(item, (str, Path)):
            ref = LoraRef(Path(item))
        elif isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], (str, Path)):
            ref = LoraRef(Path(item[0]), item[1])
        else:
            raise RequestError(f"loras[{i}]={item!r}: expected a (path, scale) pair")
        scale = ref.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) or not math.isfinite(scale) or scale < 0:
            raise RequestError(f"loras[{i}] {ref.path.name}: scale {scale!r} must be a finite number >= 0 (1.0 is full strength)")
        path = ref.path.expanduser()
        if not path.is_file():
            raise RequestError(f"LoRA file {path} does not exist; check the path (PATH[:SCALE], e.g. style.safetensors:0.8)")
        refs.append(LoraRef(path, float(scale)))
    return refs


_memo: dict[tuple, LoraFile] = {}


def load_loras(refs: Iterable[LoraRef]) -> list[tuple[LoraFile, float]]:
    """Read each LoRA once per process (remembered by path, size and modification time)."""
    out = []
    for ref in refs:
        stat = ref.path.stat()
        key = (str(ref.path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _memo:
            _memo[key] = read_lora(ref.path)
        out.append((_memo[key], ref.scale))
    return out


def file_hashes(path: Path) -> tuple[str, str]:
    """(SHA-256 of the file, A1111's short hash: SHA-256 of what follows the safetensors header)."""
    whole, data = hashlib.sha256(), hashlib.sha256()
    with path.open("rb") as f:
        head = f.read(8)
        whole.update(head)
        header = f.read(int.from_bytes(head, "little"))
        whole.update(header)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            whole.update(chunk)
            data.update(chunk)
    return whole.hexdigest(), data.hexdigest()[:12]


def read_lora(path: str | Path) -> LoraFile:
    """Read a ``.safetensors`` LoRA (kohya or diffusers/PEFT); raises CheckpointError, one line,
    for unreadable files and for formats that are not plain LoRA (LoHa, LoKr...)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (OSError, SafetensorError, ValueError) as exc:
        raise CheckpointError(f"LoRA {path} is not a readable .safetensors file ({exc}); download it again") from exc
    for marker, what in _UNSUPPORTED:
        if any(marker in k for k in tensors):
            raise CheckpointError(f"LoRA {path.name} is in the {what} format, which is not merged; use a plain LoRA or LoCon file")
    if any(k.startswith(tuple(_KOHYA_PREFIX)) for k in tensors):
        fmt, layers = "kohya", _kohya_layers(tensors)
    else:
        fmt, layers = "diffusers", _diffusers_layers(tensors)
    if not layers:
        sample = ", ".join(sorted(tensors)[:3]) or "none"
        raise CheckpointError(f"LoRA {path.name} holds no LoRA layers this runtime knows (keys: {sample}...)")
    sha, short = file_hashes(path)
    # A1111 takes a hash the trainer stored (sd-scripts' "sshs_model_hash") over its own.
    short = str(metadata.get("sshs_model_hash") or short)[:12]
    return LoraFile(path, path.stem, sha, short, fmt, layers)


def _layer(down: np.ndarray, up: np.ndarray, alpha: np.ndarray | None) -> LoraLayer:
    a = None if alpha is None else float(np.asarray(alpha, np.float64).reshape(-1)[0])
    return LoraLayer(np.asarray(down, np.float32), np.asarray(up, np.float32), a)


def _kohya_layers(tensors: Mapping[str, np.ndarray]) -> dict[tuple[str, str], LoraLayer]:
    layers = {}
    for key, down in tensors.items():
        if not key.endswith(".lora_down.weight"):
            continue
        base = key[: -len(".lora_down.weight")]
        prefix = next(p for p in _KOHYA_PREFIX if base.startswith(p)) if base.startswith(tuple(_KOHYA_PREFIX)) else None
        up = tensors.get(base + ".lora_up.weight")
        if prefix is None or up is None:
            continue
        layers[(_KOHYA_PREFIX[prefix], base[len(prefix):])] = _layer(down, up, tensors.get(base + ".alpha"))
    return layers


def _diffusers_layers(tensors: Mapping[str, np.ndarray]) -> dict[tuple[str, str], LoraLayer]:
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
        layers[(part, name)] = _layer(down, tensors[up_key], tensors.get(module + ".alpha"))
    return layers


def _normalise(part: str, name: str, kohya: bool) -> str:
    # Kohya writes module paths with "_" for "."; text-encoder paths may or may not carry the
    # "text_model." level (transformers flattened CLIPTextModel at some version).
    key = name.replace(".", "_") if kohya else name
    strip = "text_model_" if kohya else "text_model."
    return key.removeprefix(strip) if part == "text_encoder" else key


def resolve(
    lora: LoraFile, modules: Mapping[str, Mapping[str, tuple[int, ...]]]
) -> dict[tuple[str, str], LoraLayer]:
    """Match ``lora``'s layers to module weights: ``modules[part]`` maps each module path of that
    part to its weight shape. Returns ``{(part, module path): layer}`` for the parts given. A layer
    whose delta does not fit its weight raises CheckpointError naming it (an SDXL LoRA on SD1.5);
    unmatched layers are logged with their count, and a LoRA of which none match is refused."""
    kohya = lora.format == "kohya"
    index = {part: {_normalise(part, m, kohya): m for m in names} for part, names in modules.items()}
    matched, unmatched = {}, []
    for (part, raw), layer in lora.layers.items():
        if part not in modules:
            continue
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
    if unmatched:
        log.warning("LoRA %s: %d of %d layers match no module of this model (e.g. %s)", lora.name, len(unmatched),
                    len(unmatched) + len(matched), unmatched[0])
    if not matched and any(part in modules for part, _ in lora.layers):
        raise CheckpointError(
            f"LoRA {lora.name}: none of its {len(lora.layers)} layers match this SD1.5 model (e.g. {unmatched[0]}); "
            "it was made for another model family"
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
