"""A bounded reader of ``.safetensors`` float tensors that needs no framework: the header is
checked as :mod:`dynamicid_rt.modelfiles.weightcheck` checks it, and each tensor is read in its own dtype
(bf16 included, which safetensors' numpy framework cannot give) and widened to float32.

Used for user LoRA files, which come from outside: the file must be a regular file (a FIFO or a
device would block or never end), the header is capped, and the whole read is one linear pass
that also yields the file's hashes (its SHA-256 and A1111's short hash of the data).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DynamicIDError
from ..files.checks import check_regular_file
from .weightcheck import DTYPE_BYTES, MAX_HEADER_BYTES, tensor_span

# The float dtypes a weight file may hold, as little-endian numpy types (BF16: see _bf16).
_FLOATS = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "BF16": None}


@dataclass(frozen=True)
class TensorFile:
    tensors: dict[str, np.ndarray]  # float32, in the file's shapes
    dtypes: dict[str, str]  # the file's own dtype of each tensor ("BF16", "F16", ...)
    metadata: dict[str, str]
    sha256: str  # of the whole file
    data_sha256: str  # of what follows the header (A1111's short hash is its first 12 digits)


def _open_regular(path: Path, what: str, error: type[DynamicIDError]):
    """``path`` (checked by ``check_regular_file``) opened for reading without ever blocking:
    O_NONBLOCK makes opening a FIFO return at once, and the open file itself (not the name, which
    may have changed since the check) must be a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({exc.strerror}); check its permissions") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{what} {path} is not a regular file (it is a FIFO, device or socket); give the path of a file")
    return os.fdopen(fd, "rb")


def file_hashes(path: str | Path, what: str, error: type[DynamicIDError]) -> tuple[str, str]:
    """(SHA-256 of the file, SHA-256 of what follows its safetensors header), refusing anything that
    is not a regular file; a header length past the end hashes no data."""
    path = check_regular_file(path, what, error)
    whole, data = hashlib.sha256(), hashlib.sha256()
    with _open_regular(path, what, error) as f:
        head = f.read(8)
        whole.update(head)
        if len(head) == 8:
            whole.update(f.read(min(struct.unpack("<Q", head)[0], MAX_HEADER_BYTES)))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            whole.update(chunk)
            data.update(chunk)
    return whole.hexdigest(), data.hexdigest()


def _bf16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) as float32: bf16 is the upper half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_float_tensors(path: str | Path, what: str, error: type[DynamicIDError]) -> TensorFile:
    """Every tensor of the safetensors file at ``path`` as float32; ``error`` (one line, naming the
    file) for anything that is not a complete safetensors file of float tensors."""
    path = check_regular_file(path, what, error)
    with _open_regular(path, what, error) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise error(f"{what} {path} has {size} bytes, too short for a .safetensors file; download it again")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise error(f"{what} {path} is not a complete .safetensors file (its header claims {header_len} bytes); download it again")
        header_bytes = f.read(header_len)
        data = f.read()
    try:
        header = json.loads(header_bytes)
    except (ValueError, RecursionError):
        raise error(f"{what} {path} has an unreadable .safetensors header (corrupt, or not a .safetensors file); download it again") from None
    if not isinstance(header, dict):
        raise error(f"{what} {path} has a malformed .safetensors header (not a JSON object); download it again")
    raw_meta = header.pop("__metadata__", None)
    metadata = {str(k): v for k, v in raw_meta.items() if isinstance(v, str)} if isinstance(raw_meta, dict) else {}
    tensors, dtypes = {}, {}
    for name, info in header.items():
        span = tensor_span(name, info)
        if isinstance(span, str):
            raise error(f"{what} {path} {span}; download it again")
        begin, end = span
        if end > len(data):
            raise error(f"{what} {path} is truncated: tensor {name!r} ends at byte {end} of {len(data)} of data; download it again")
        dtype = info["dtype"]
        if dtype not in _FLOATS:
            raise error(f"{what} {path}: tensor {name!r} holds {dtype} values, not floats; this is not a weight file")
        count = (end - begin) // DTYPE_BYTES[dtype]
        if dtype == "BF16":
            values = _bf16(np.frombuffer(data, "<u2", count, begin))
        else:
            with np.errstate(over="ignore"):  # F64 beyond float32's range becomes inf, caught by the finiteness check
                values = np.frombuffer(data, _FLOATS[dtype], count, begin).astype(np.float32)
        tensors[name] = values.reshape(info["shape"])
        dtypes[name] = dtype
    whole = hashlib.sha256(head)
    whole.update(header_bytes)
    whole.update(data)
    return TensorFile(tensors, dtypes, metadata, whole.hexdigest(), hashlib.sha256(data).hexdigest())
