"""Content verification of cache files, remembered between runs.

A file is hashed in full (SHA-256) when first checked; after a match its stat (size, modification
time, change time, inode) is stamped beside it in ``verified.json``. Later checks re-hash only
files whose stat differs from the stamp. The change time (ctime) cannot be set back by tools that
restore modification times (``touch -d``, ``cp -p``, ``rsync -t``), so a file rewritten in place
and given its old mtime is hashed again, and found out. A file changed less than :data:`RACY_NS` before it was hashed is not stamped (as
git treats "racily clean" files): a rewrite within the same timestamp tick would leave its stat
unchanged, so such a file is hashed again next time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Mapping

from ..errors import OutputError
from .atomic import atomic_write

log = logging.getLogger(__name__)

STAMP = "verified.json"
# The stamps of single stored files (plans, runtime caches, compiled blobs), kept beside them under
# a name no manifest scan (``*/*.json``) picks up.
FILE_STAMP = ".verified-stamps"
RACY_NS = 2_000_000_000  # far above any file system's timestamp granularity


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _racy(path: Path) -> bool:
    """Changed too recently for its stat to be trusted (see :data:`RACY_NS`)."""
    return time.time_ns() - path.stat().st_ctime_ns <= RACY_NS


def _read_stamps(folder: Path, stamp: str = STAMP) -> dict:
    try:
        stamps = json.loads((folder / stamp).read_text())
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def first_mismatch(folder: Path, digests: Mapping[str, str], rehash: bool = False, stamp: str = STAMP) -> str | None:
    """The first file of ``digests`` (path relative to ``folder`` -> SHA-256) whose content does
    not match, or None. ``rehash`` hashes every file whatever its stamp says; ``stamp``: the file
    the stamps are kept in."""
    stamps = _read_stamps(folder, stamp)
    verified: dict[str, str] = {}
    for name, digest in digests.items():
        if not rehash and stamps.get(name) == [*_stat_key(folder / name), digest]:
            continue
        if sha256_file(folder / name) != digest:
            return name
        verified[name] = digest
    _write_stamps(folder, stamps, verified, stamp)
    return None


def stamp_hashed(folder: Path, digests: Mapping[str, str]) -> None:
    """Stamp files whose SHA-256 the caller has just computed from their content (a cache build),
    so that the first check after the build need not read them again."""
    _write_stamps(folder, _read_stamps(folder), digests)


def _write_stamps(folder: Path, stamps: dict, verified: Mapping[str, str], stamp: str = STAMP) -> None:
    changed = False
    for name, digest in verified.items():
        path = folder / name
        if not _racy(path):
            stamps[name] = [*_stat_key(path), digest]
            changed = True
    if changed:
        _write_json(folder / stamp, stamps)


def _write_json(path: Path, data: dict) -> None:
    with contextlib.suppress(OSError, OutputError):  # a read-only cache still works, it only hashes again
        with atomic_write(path, "w") as f:
            json.dump(data, f)


class RememberedDigests:
    """Digests of files outside a cache (the model folder's weights, which are never written to),
    remembered in one JSON file inside the cache, keyed by each file's absolute path and stat as
    above: a start reads none of those files again while their stat is unchanged. A racy file (see
    :data:`RACY_NS`) is not remembered; a cache that cannot be written only computes again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        self.known: dict = known if isinstance(known, dict) else {}
        self.changed = False

    def digest(self, file: Path, compute) -> str:
        """``compute(file)``, or what it gave last time for this file with this stat."""
        key = str(file.resolve())
        stat = _stat_key(file)
        record = self.known.get(key)
        if isinstance(record, list) and record[:-1] == stat:
            return record[-1]
        value = compute(file)
        if not _racy(file):
            self.known[key] = [*stat, value]
            self.changed = True
        return value

    def save(self) -> None:
        if self.changed:
            _write_json(self.path, self.known)
            self.changed = False
