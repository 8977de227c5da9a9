"""Reading a saved identity (``.npz``) as untrusted input: a regular file of bounded size, the
members an identity has, each array's size read from its header before any of it is allocated
(an ``.npy`` header can promise terabytes), no pickles. Every failure is an ImageError."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageError
from .files import check_regular_file

ARRAYS = ("tokens", "base_tokens", "landmarks", "thumbnail", "embedding")
MAX_FILE_BYTES = 64 << 20  # a saved identity is a few hundred kB (the thumbnail is most of it)
MAX_ARRAY_ELEMENTS = 4 << 20
MAX_META_BYTES = 1 << 20


def read_identity_file(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata (a JSON object) and arrays of a saved identity."""
    file = check_regular_file(path, "identity file", ImageError)
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{file} is {size} bytes, too large for a saved identity (at most {MAX_FILE_BYTES}); encode the photo again")
    try:
        with zipfile.ZipFile(file) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            unknown = set(members) - {"meta", *ARRAYS}
            if unknown or "meta" not in members:
                raise ImageError(f"{file} is not a saved identity (members {sorted(members)})")
            arrays = {name: _read_array(archive, info, file) for name, info in members.items()}
    except ImageError:
        raise
    except Exception as exc:  # zip, zlib and npy errors come in many types
        raise ImageError(f"{file} is not a saved identity ({type(exc).__name__}: {exc})") from exc
    meta_bytes = arrays.pop("meta")
    if meta_bytes.dtype != np.uint8 or meta_bytes.ndim != 1 or meta_bytes.size > MAX_META_BYTES:
        raise ImageError(f"{file} is not a saved identity (its metadata is not a JSON text)")
    try:
        meta = json.loads(meta_bytes.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise ImageError(f"{file} is not a saved identity (unreadable metadata: {type(exc).__name__})") from exc
    if not isinstance(meta, dict):
        raise ImageError(f"{file} is not a saved identity (its metadata is not a JSON object)")
    return meta, arrays


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, file: Path) -> np.ndarray:
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
        if dtype.hasobject:
            raise ImageError(f"{file}: member {info.filename} holds Python objects (a pickle); refusing to read it")
        if int(np.prod(shape, dtype=np.float64)) > MAX_ARRAY_ELEMENTS:
            raise ImageError(f"{file}: member {info.filename} has shape {shape}, too large for a saved identity")
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)
