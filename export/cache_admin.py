"""What the engine caches hold, and freeing it: ``dynamicid-rt cache`` (list, prune) and the
least-recently-used eviction of LoRA entries and derived copies beyond a budget.

The ONNX cache (:func:`.cache.engines_root`) holds one folder per model (its content key), in it
one entry per engine and precision (``unet-fp32``), per LoRA set (``unet-fp32-lora-<key>``), and
the copies backends derive from entries: ONNX Runtime's optimized graphs inside an entry
(``onnxruntime/``), TensorRT plans and OpenVINO blobs beside them. An entry's folder modification
time is its last use (:func:`mark_used`). An item is never removed while its build lock is held
or when it was used in the last :data:`IN_USE_SECONDS` (a running pipeline holds it).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .store import BUILDING, MANIFEST, build_lock

log = logging.getLogger(__name__)

MODEL_RECORD = "model.json"  # which model folder a key folder was built from, for the listing
IN_USE_SECONDS = 600
LORA_BUDGET_BYTES = 16 << 30  # LoRA entries and derived copies of one model, beyond which the oldest go
_ENTRY = re.compile(r"(?P<engine>[a-z_]+)-(?P<precision>fp16|fp32)(?:-lora-(?P<lora>[0-9a-f]+))?")


@dataclass(frozen=True)
class CachedItem:
    """One removable thing: an entry, or a copy a backend derived (``backend`` says whose)."""

    path: Path
    model: str  # the model folder it was built from, or its key
    engine: str
    precision: str
    lora: str  # the LoRA set's key, "" for none
    backend: str  # "onnx" for entries, else the deriving backend
    size: int
    last_used: float

    @property
    def evictable(self) -> bool:
        """LoRA entries and derived copies: rebuilt from what stays (the plain entries)."""
        return bool(self.lora) or self.backend != "onnx"


def mark_used(folder: Path) -> None:
    """Record a use of the entry ``folder`` (its modification time); a read-only cache skips it."""
    with contextlib.suppress(OSError):
        os.utime(folder)


def remember_model(engine_dir: Path, label: str) -> None:
    record = Path(engine_dir) / MODEL_RECORD
    if not record.is_file():
        with contextlib.suppress(OSError):
            record.write_text(json.dumps({"model": label}), encoding="utf-8")


def _size(path: Path, skip_dirs: bool = False) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for child in path.iterdir():
        if child.is_symlink():
            continue
        if child.is_dir():
            total += 0 if skip_dirs else _size(child)
        else:
            total += child.stat().st_size
    return total


def _model_label(key_dir: Path) -> str:
    try:
        return str(json.loads((key_dir / MODEL_RECORD).read_text(encoding="utf-8"))["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return key_dir.name


def scan(root: Path) -> list[CachedItem]:
    """Every entry and derived copy under ``root`` (the engines root), oldest use first."""
    items: list[CachedItem] = []
    if not Path(root).is_dir():
        return items
    for key_dir in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.is_symlink()):
        model = _model_label(key_dir)
        for child in sorted(key_dir.iterdir()):
            if not child.is_dir() or child.is_symlink() or child.name.startswith((BUILDING, ".")):
                continue
            match = _ENTRY.fullmatch(child.name)
            if match and (child / MANIFEST).is_file():
                used = child.stat().st_mtime
                items.append(CachedItem(child, model, match["engine"], match["precision"], match["lora"] or "", "onnx",
                                        _size(child, skip_dirs=True), used))
                items += [CachedItem(sub, model, match["engine"], match["precision"], match["lora"] or "", sub.name,
                                     _size(sub), max(used, sub.stat().st_mtime))
                          for sub in sorted(child.iterdir()) if sub.is_dir() and not sub.is_symlink()]
            elif not match:  # a backend's own folder beside the entries (TensorRT plans, ...)
                for sub in sorted(child.iterdir()):
                    sub_match = _ENTRY.match(sub.name) if sub.is_dir() else None
                    if sub_match:
                        items.append(CachedItem(sub, model, sub_match["engine"], sub_match["precision"],
                                                sub_match["lora"] or "", child.name, _size(sub), sub.stat().st_mtime))
    return sorted(items, key=lambda item: item.last_used)


def _remove(item: CachedItem, now: float, why: str) -> bool:
    """Delete ``item`` unless it is in use; says so in the log either way."""
    if now - item.last_used < IN_USE_SECONDS:
        log.info("keeping %s: used %.0f s ago (in use)", item.path, now - item.last_used)
        return False
    entry_dir = item.path if item.backend == "onnx" else item.path.parent
    lock = build_lock(entry_dir.parent, entry_dir.name)
    try:
        lock.acquire(timeout=0)
    except Exception:  # filelock.Timeout: being built right now
        log.info("keeping %s: it is being built", item.path)
        return False
    try:
        shutil.rmtree(item.path)
    except OSError as exc:  # open elsewhere (Windows), read-only
        log.info("keeping %s: cannot remove it (%s)", item.path, exc.strerror)
        return False
    finally:
        lock.release()
    log.info("removed %s (%s, %.1f MB): %s", item.path, item.backend, item.size / 1e6, why)
    return True


def prune(root: Path, older_than_s: float | None = None, max_bytes: int | None = None,
          only: Iterable[CachedItem] | None = None) -> list[CachedItem]:
    """Remove items unused for ``older_than_s``, then the least recently used until the cache
    holds at most ``max_bytes``; ``only``: the candidates (default: everything). Returns what went."""
    items = list(only) if only is not None else scan(root)
    now = time.time()
    gone: list[CachedItem] = []

    def remove(item: CachedItem, why: str) -> None:
        if item not in gone and _remove(item, now, why):  # an entry's derived copies go with it
            gone.extend(i for i in items if i not in gone and (i is item or i.path.is_relative_to(item.path)))

    if older_than_s is not None:
        for item in items:
            if now - item.last_used > older_than_s:
                remove(item, f"unused for {(now - item.last_used) / 86400:.1f} days")
    if max_bytes is not None:
        for item in items:
            total = sum(i.size for i in items if i not in gone)
            if total <= max_bytes:
                break
            remove(item, f"the cache holds {total / 1e9:.2f} GB, above {max_bytes / 1e9:.2f} GB")
    return gone


def evict_beyond_budget(engine_dir: Path, budget: int = LORA_BUDGET_BYTES) -> list[CachedItem]:
    """LoRA entries and derived copies of one model beyond ``budget`` bytes, least recently used first."""
    candidates = [item for item in scan(Path(engine_dir).parent) if item.path.is_relative_to(engine_dir) and item.evictable]
    if sum(i.size for i in candidates) <= budget:
        return []
    return prune(Path(engine_dir).parent, max_bytes=budget, only=candidates)


def total_line(root: Path) -> str:
    """The caches' size, for ``doctor``."""
    items = scan(root)
    return (f"engine caches: {len(items)} items, {sum(i.size for i in items) / 1e9:.2f} GB in {root} "
            "(`dynamicid-rt cache` lists them, `dynamicid-rt cache prune` frees space)")


__all__ = ["CachedItem", "LORA_BUDGET_BYTES", "evict_beyond_budget", "mark_used", "prune", "remember_model", "scan", "total_line"]
