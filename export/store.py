"""A verified store: files kept beside a JSON manifest that records each one's size, modification
time and SHA-256, so a reader trusts only what a finished write left.

Two layouts share it. A *folder entry* (the ONNX cache) is built in a temporary folder
``.building-<name>-<pid>-<random>`` beside its place, its manifest written last, then renamed into
place (:func:`build_folder`); a folder without a manifest is never valid, and temporary folders
of dead processes are removed (:func:`remove_abandoned_builds`). A *single file* (a TensorRT plan,
a runtime cache) sits beside a manifest of the same stem that is removed before the file is
rewritten and written after it (:func:`write_manifest`). :func:`build_lock` serialises builders of
one entry across processes.

Checks: a listed file must exist with its recorded size; its content is verified by SHA-256,
re-hashed for folder entries when its stamp (``dynamicid_rt.files.stamps``) differs, for single files
when its modification time differs from the record. Neither torch nor numpy is imported.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from filelock import FileLock

from dynamicid_rt.files.atomic import atomic_write, pid_alive
from dynamicid_rt.files.stamps import FILE_STAMP, first_mismatch, sha256_file, stamp_hashed

MANIFEST = "manifest.json"
BUILDING = ".building-"
_OLD = ".old-"

FileRecord = dict[str, Any]  # {"size", "mtime_ns", "sha256"}


def file_record(path: Path, sha256: str | None = None) -> FileRecord:
    """What the manifest keeps of one file; ``sha256`` where the caller has just computed it."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256 or sha256_file(path)}


def file_table(folder: Path) -> dict[str, FileRecord]:
    """The record of every plain file directly in ``folder``, by name."""
    return {p.name: file_record(p) for p in sorted(folder.iterdir()) if p.is_file()}


def size_problem(path: Path, record: Mapping[str, Any], what: str) -> str:
    """Empty when ``path`` exists with the recorded size, else why not."""
    if not path.is_file():
        return f"{what} is missing"
    size = path.stat().st_size
    if size != record.get("size"):
        return f"{what} has {size} bytes, its manifest says {record.get('size')} (truncated or corrupt)"
    return ""


def check_files(folder: Path, files: Mapping[str, Mapping[str, Any]], verify: bool = False) -> str:
    """Empty when every file of a folder entry's table matches, else why not. A file unchanged since
    its last verification (its stamp includes the ctime, which no tool can put back) is not hashed
    again unless ``verify``."""
    for name, record in files.items():
        problem = size_problem(folder / name, record, name)
        if problem:
            return problem
    bad = first_mismatch(folder, {name: record["sha256"] for name, record in files.items()}, rehash=verify)
    return f"{bad} does not match its SHA-256 (corrupt)" if bad is not None else ""


def check_file(path: Path, record: Mapping[str, Any], what: str, verify: bool = False) -> str:
    """Empty when a single stored file matches its record, else why not. The rule of folder entries
    (:func:`check_files`): hashed unless its stamp (size, mtime, ctime, inode: a ctime no tool can
    put back) shows it unchanged since it last matched, and always when ``verify``."""
    problem = size_problem(path, record, what)
    if problem:
        return problem
    if first_mismatch(path.parent, {path.name: str(record.get("sha256"))}, rehash=verify, stamp=FILE_STAMP) is not None:
        return f"{what} does not match its SHA-256 (corrupt)"
    return ""


def read_manifest(path: Path, table: str) -> tuple[dict[str, Any] | None, str]:
    """``(manifest, "")``, or ``(None, why)`` when ``path`` is not a JSON object with a ``table``
    object (the files it vouches for). The caller says why a manifest is absent."""
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        return None, f"manifest is unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get(table), dict):
        return None, f"manifest is unreadable (no {table} record)"
    return manifest, ""


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``manifest`` atomically: the last write of an entry, which makes it valid."""
    with atomic_write(path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


def build_lock(parent: Path, name: str) -> FileLock:
    """One builder of entry ``name`` at a time across processes sharing ``parent``."""
    return FileLock(str(parent / f".lock-{name}"))


def build_folder(parent: Path, name: str, fill: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Build the folder entry ``parent/name``: ``fill(tmp)`` writes the files into a temporary
    folder and returns the manifest fields; the file table is added, the manifest written last and
    the folder moved into place. Returns the manifest; on any failure the temporary folder goes."""
    tmp = parent / f"{BUILDING}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fields = fill(tmp)
        started = time.perf_counter()
        manifest = fields | {"files": file_table(tmp)}
        manifest["hash_seconds"] = round(time.perf_counter() - started, 2)
        # The table has just hashed every file: stamp them, so the first start does not hash them again.
        stamp_hashed(tmp, {file: record["sha256"] for file, record in manifest["files"].items()})
        # Without its manifest the folder is never taken for a valid entry.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        replace_dir(tmp, parent / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an old ``dst`` is first renamed away (a folder cannot be replaced
    atomically when not empty), so at no time does a half-written entry sit at ``dst``."""
    if dst.exists():
        old = dst.with_name(f"{_OLD}{dst.name}-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(src, dst)


def remove_abandoned_builds(parent: Path) -> None:
    """Delete temporary folders of builds whose process is gone (killed, power loss), and replaced
    entries whose deletion was cut short."""
    for old in parent.glob(f"{_OLD}*"):
        shutil.rmtree(old, ignore_errors=True)
    for tmp in parent.glob(f"{BUILDING}*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        if not pid.isdigit() or not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
