"""Cheap integrity checks of weight files (no tensor is loaded): a truncated download, a
safetensors header that lies about its length or its tensors' offsets, a zip index that points
past the end. Every reader here takes hostile bytes: it caps what it reads, runs in time linear
in the header, and reports a problem as text; it never raises."""
from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path

from .paths import ModelPaths

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
MAX_ZIP_ENTRIES = 1_000_000
MAX_DIMS = 16  # no weight has more; bounds the size arithmetic on a hostile shape
# Bytes per element of each safetensors dtype.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def tensor_span(name: str, info: object) -> tuple[int, int] | str:
    """(begin, end) of one header entry, or why it is malformed."""
    if not isinstance(info, dict):
        return f"has a malformed safetensors header (entry {name!r} is not an object)"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        return f"has a malformed safetensors header (tensor {name!r}: unknown dtype {dtype!r})"
    ints = (lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v))
    if not ints(shape) or len(shape) > MAX_DIMS or not ints(offsets) or len(offsets) != 2 or offsets[1] < offsets[0]:
        return f"has a malformed safetensors header (tensor {name!r}: bad shape {shape!r} or data_offsets {offsets!r})"
    if math.prod(shape) * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        return (f"is corrupt: tensor {name!r} ({dtype} {shape}) needs {math.prod(shape) * DTYPE_BYTES[dtype]} bytes "
                f"but its data_offsets span {offsets[1] - offsets[0]}")
    return offsets[0], offsets[1]


def _safetensors_problem(path: Path, size: int) -> str | None:
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"has {size} bytes, too short for a safetensors file (truncated)"
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            return f"is truncated: its header alone needs {header_len + 8} bytes, the file has {size}"
        if header_len > MAX_HEADER_BYTES:
            return f"has a {header_len}-byte safetensors header, more than the format allows ({MAX_HEADER_BYTES})"
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
            return "has an unreadable safetensors header (corrupt)"
    if not isinstance(header, dict):
        return "has a malformed safetensors header (not a JSON object)"
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        span = tensor_span(name, info)
        if isinstance(span, str):
            return span
        spans.append((span, name))
    spans.sort()
    position = 0
    for (begin, end), name in spans:  # the data must be covered exactly, in order, without overlaps
        if begin != position:
            return f"is corrupt: tensor {name!r} starts at byte {begin} of the data, expected {position} (overlap or gap)"
        position = end
    expected = 8 + header_len + position
    if expected != size:
        return f"is truncated or corrupt: its header promises {expected} bytes, the file has {size}"
    return None


def _zip_problem(path: Path, size: int) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile:
        with path.open("rb") as f:
            started_as_zip = f.read(4) == b"PK\x03\x04"
        # torch's zip format: a file that starts as one but has no readable index was cut short.
        return "is truncated or corrupt (its zip index is missing)" if started_as_zip else None
    except (ValueError, EOFError, struct.error, NotImplementedError, OverflowError) as exc:  # a hostile index
        return f"is corrupt (its zip index is unreadable: {type(exc).__name__})"
    if len(infos) > MAX_ZIP_ENTRIES:
        return f"is not a checkpoint (its zip index lists {len(infos)} entries)"
    end = max((i.header_offset + i.compress_size for i in infos), default=0)
    return f"is truncated: its entries need {end} bytes, the file has {size}" if end > size else None


def header_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """{tensor name: shape} from a safetensors header (no tensor read); None when it cannot be read."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    out = {}
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            out[name] = tuple(shape)
    return out


def weight_file_problem(path: str | Path) -> str | None:
    """Why the weight file at ``path`` is unusable (truncated, corrupt index), or None. Formats
    without an index (legacy pickles) pass here and are judged when loaded."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:  # a symlink loop, a vanished file
        return f"cannot be read ({exc.strerror})"
    if size == 0:
        return "is empty (0 bytes)"
    try:
        if path.suffix == ".safetensors":
            return _safetensors_problem(path, size)
        if path.suffix in WEIGHT_SUFFIXES:
            return _zip_problem(path, size)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None


def weight_files(paths: ModelPaths) -> list[Path]:
    """Every weight file the loaders read (not the variants and extras real repos carry beside them)."""
    from .part_files import model_files

    return [p for p in model_files(paths) if p.suffix in WEIGHT_SUFFIXES]


def broken_links(paths: ModelPaths) -> list[Path]:
    """Symlinks in the model folder's parts that lead nowhere: dangling, or a loop."""
    out = []
    for part in (paths.base, paths.vae, paths.tokenizer, paths.image_encoder, paths.saa, paths.projector, paths.imr,
                 paths.keypoint_encoder):
        if part is None:
            continue
        candidates = [part, *part.rglob("*")] if part.is_dir() else [part]
        out += [p for p in candidates if p.is_symlink() and not p.exists()]
    return out


def weight_problems(paths: ModelPaths) -> list[str]:
    """One line per unusable weight file of the model folder."""
    out = [f"{path} is a broken symlink or a symlink loop; point it at the real file" for path in broken_links(paths)]
    for path in weight_files(paths):
        problem = weight_file_problem(path)
        if problem is not None:
            out.append(f"weight file {path} {problem}; download or copy it again")
    return out
