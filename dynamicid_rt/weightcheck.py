"""Cheap integrity checks of weight files (no tensor is loaded): a truncated download is found by
comparing the size a file's own index promises with the size on disk."""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from .paths import ModelPaths

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _safetensors_problem(path: Path, size: int) -> str | None:
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"has {size} bytes, too short for a safetensors file (truncated)"
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            return f"is truncated: its header alone needs {header_len + 8} bytes, the file has {size}"
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return "has an unreadable safetensors header (corrupt)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + header_len + max(ends, default=0)
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
    end = max((i.header_offset + i.compress_size for i in infos), default=0)
    return f"is truncated: its entries need {end} bytes, the file has {size}" if end > size else None


def weight_file_problem(path: str | Path) -> str | None:
    """Why the weight file at ``path`` is unusable (truncated, corrupt index), or None. Formats
    without an index (legacy pickles) pass here and are judged when loaded."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    if path.suffix == ".safetensors":
        return _safetensors_problem(path, size)
    if path.suffix in WEIGHT_SUFFIXES:
        return _zip_problem(path, size)
    return None


def weight_files(paths: ModelPaths) -> list[Path]:
    """Every weight file the model folder's parts hold."""
    found: list[Path] = []
    for part in (paths.base, paths.vae, paths.image_encoder, paths.saa, paths.projector, paths.imr, paths.keypoint_encoder):
        if part is None or not part.exists():
            continue
        candidates = part.rglob("*") if part.is_dir() else [part]
        found += sorted(p for p in candidates if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p not in found)
    return found


def weight_problems(paths: ModelPaths) -> list[str]:
    """One line per unusable weight file of the model folder."""
    out = []
    for path in weight_files(paths):
        problem = weight_file_problem(path)
        if problem is not None:
            out.append(f"weight file {path} {problem}; download or copy it again")
    return out
