"""Which weights made an identity: a fingerprint of the files identity encoding reads (SAA
projector, image encoder, IMR, insightface pack), by content, not location, so a moved model folder
keeps its saved identities and a changed checkpoint does not.

Large files are sampled (size plus three 1 MiB windows): this tells checkpoints apart without
reading gigabytes on every start. Results are remembered per process by path, size, mtime and inode.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from ..contract import ENGINES, IDENTITY_ENGINES
from .paths import ModelPaths

_WINDOW = 1 << 20
_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    digest = hashlib.sha256(str(stat.st_size).encode())
    with path.open("rb") as f:
        if stat.st_size <= 3 * _WINDOW:
            digest.update(f.read())
        else:
            for offset in (0, stat.st_size // 2, stat.st_size - _WINDOW):
                f.seek(offset)
                digest.update(f.read(_WINDOW))
    value = digest.hexdigest()
    with _memo_lock:
        _memo[key] = value
    return value


def _files(root: Path) -> list[tuple[str, Path]]:
    if root.is_dir():
        return [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return [(root.name, root)] if root.is_file() else []


def identity_parts() -> list[str]:
    """The model parts identity encoding reads: the sources of the identity engines, then the
    insightface pack (photo analysis, not an engine)."""
    parts = [part for engine in IDENTITY_ENGINES for part in ENGINES[engine].sources]
    return list(dict.fromkeys(parts + ["insightface"]))


def identity_model_fingerprint(paths: ModelPaths) -> str:
    """16 hex digits naming the weights an identity's tokens depend on."""
    digest = hashlib.sha256()
    for part in identity_parts():
        root = paths.source(part)
        if root is None:
            continue
        for name, path in _files(Path(root)):
            digest.update(f"{part}/{name}:{_file_digest(path)}\0".encode())
    return digest.hexdigest()[:16]


__all__ = ["identity_model_fingerprint"]
