"""TensorRT-RTX's runtime cache: the kernels it compiles just in time on this GPU, kept between runs.

One file per plan and per GPU and driver, in the engine cache beside the plans:
``<engine_dir>/tensorrt-rtx/runtime-cache/<gpu>-<driver>/<engine>-<precision>-<tag>.cache``, stored
the way plans are (``plans.write_plan``: atomic writes, the manifest last, size and SHA-256
checked). It is keyed by the library version, the GPU, its compute capability, the driver and the
SHA-256 of the plan it belongs to; a cache whose key differs, or whose file is damaged, is not
used: the engine starts with an empty cache and the reason is logged. The library checks the blob
once more when it deserializes it (its format, version, GPU and driver); a blob it rejects is
dropped the same way. The cache is written after the first generation and whenever it grew.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .library import LoadedTensorRT
from .plans import GpuInfo, check_plan, check_plan_file, plan_root, read_manifest, write_plan

log = logging.getLogger(__name__)

RUNTIME_CACHE_FORMAT = "dynamicid_rt.runtime_cache/1"
RUNTIME_CACHE_DIR = "runtime-cache"
SUFFIX = ".cache"


def cache_folder(engine_dir: Path, backend: str, gpu: GpuInfo) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-") or "gpu"
    return plan_root(engine_dir, backend) / RUNTIME_CACHE_DIR / f"{slug}-{gpu.driver}"


def runtime_cache_key(lib: LoadedTensorRT, gpu: GpuInfo, plan_sha256: str) -> dict[str, Any]:
    return {
        "format": RUNTIME_CACHE_FORMAT,
        "library": lib.spec.name,
        "tensorrt": lib.version,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "driver": gpu.driver,
        "plan_sha256": plan_sha256,
    }


@dataclass
class RuntimeCacheFile:
    """The stored runtime cache of one plan on one GPU and driver."""

    folder: Path
    tag: str  # "<engine>-<precision>-<plan tag>"
    key: dict[str, Any]
    saved_sha256: str = field(default="", init=False)

    @classmethod
    def for_plan(cls, engine_dir: Path, lib: LoadedTensorRT, gpu: GpuInfo, plan_tag: str, plan_sha256: str) -> "RuntimeCacheFile":
        return cls(cache_folder(engine_dir, lib.spec.backend, gpu), plan_tag, runtime_cache_key(lib, gpu, plan_sha256))

    @property
    def path(self) -> Path:
        return self.folder / f"{self.tag}{SUFFIX}"

    def load(self) -> tuple[bytes, str]:
        """``(blob, "")`` for a valid stored cache, else ``(b"", why)``."""
        manifest, why = check_plan(self.folder, self.tag, self.key, suffix=SUFFIX)
        if manifest is None:
            return b"", why
        try:
            blob = self.path.read_bytes()
        except OSError as exc:
            return b"", f"unreadable ({exc})"
        if hashlib.sha256(blob).hexdigest() != manifest["plan"]["sha256"]:
            return b"", "the cache does not match its SHA-256 (corrupt)"
        self.saved_sha256 = manifest["plan"]["sha256"]
        return blob, ""

    def save(self, blob: bytes) -> bool:
        """Store ``blob`` when it differs from what is stored; returns whether it wrote."""
        digest = hashlib.sha256(blob).hexdigest()
        if not blob or digest == self.saved_sha256:
            return False
        write_plan(self.folder, self.tag, blob, self.key, {"saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, suffix=SUFFIX)
        self.saved_sha256 = digest
        return True


def attach(config: Any, stored: RuntimeCacheFile, what: str) -> Any:
    """A runtime cache for ``config`` (an ``IRuntimeConfig``), filled from ``stored`` when that is
    valid and the library accepts it; returns the cache object."""
    cache = config.create_runtime_cache()
    blob, why = stored.load()
    if blob and not cache.deserialize(blob):
        blob, why = b"", "TensorRT-RTX rejected it (another library build, GPU or driver)"
        stored.saved_sha256 = ""
    if why and why != "not built yet":
        log.info("%s: runtime cache %s not used (%s); kernels are compiled again", what, stored.path, why)
    elif blob:
        log.info("%s: runtime cache %s loaded (%.1f MiB)", what, stored.path, len(blob) / 2**20)
    if not config.set_runtime_cache(cache):
        log.warning("%s: TensorRT-RTX did not take the runtime cache", what)
    return cache


def describe_runtime_caches(engine_dir: Path, backend: str) -> list[str]:
    """One line per stored runtime cache, for ``doctor``: GPU folder, plan, state."""
    root = plan_root(engine_dir, backend) / RUNTIME_CACHE_DIR
    lines = []
    for manifest_path in sorted(root.glob("*/*.json")):
        folder, tag = manifest_path.parent, manifest_path.stem
        manifest, why = read_manifest(folder, tag, SUFFIX)
        name = f"{folder.name}/{tag}"
        if manifest is None:
            lines.append(f"{name}: {why}")
            continue
        state = check_plan_file(folder, tag, manifest, suffix=SUFFIX) or f"{manifest['plan']['size'] / 2**20:.1f} MiB"
        lines.append(f"{name}: {manifest.get('gpu')}, driver {manifest.get('driver')}, {state}")
    return lines
