"""The plan cache: TensorRT plans beside the ONNX entries they are built from.

``<engine_dir>/<backend>/<engine>-<precision>/`` (``tensorrt/`` or ``tensorrt-rtx/``) holds
``dynamic.plan`` (and ``static-WxH.plan``), each with a JSON manifest of the same stem, and, for
data-center TensorRT, the builder's ``timing.cache``. A plan is keyed by the hash of its ONNX entry,
the library and its version, the precision and the optimisation profile, and by what the plan runs
on: the GPU (name, compute capability) and driver for TensorRT's GPU-tuned plans, the target
compute capabilities for TensorRT-RTX's portable ones. Any change makes it stale, and it is rebuilt
with the reason logged. A plan is trusted only when its manifest matches that key and the file has
the recorded size and SHA-256 (re-hashed whenever its size or modification time changed).

Plans are kept in the verified store of ``export/store.py`` as single files: the old manifest is
removed first, then the plan and the manifest are each written atomically, the manifest last; so an
interrupted build leaves a plan without a manifest, which is never taken for valid.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamicid_rt.files.atomic import atomic_write
from dynamicid_rt.export.store import check_file, file_record, read_manifest as read_store_manifest, write_manifest

from .library import LoadedTensorRT
from .profiles import Profile, StaticSize

log = logging.getLogger(__name__)

PLAN_FORMAT = "dynamicid_rt.engines/2"  # bump when the plan layout or build procedure changes
TIMING_CACHE_FILE = "timing.cache"
PLAN_SUFFIX = ".plan"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class GpuInfo:
    """The GPU a plan is built for (plans run only on the GPU model and driver they were tuned on)."""

    name: str
    compute_capability: str  # "8.9"
    driver: str  # CUDA driver version, e.g. "12040"
    total_memory: int = 0  # bytes; for messages, not part of the key


def plan_root(engine_dir: Path, backend: str) -> Path:
    """Where one backend's plans live: each library's plans apart from the other's."""
    return Path(engine_dir) / backend


def plan_folder(engine_dir: Path, engine: str, precision: str, backend: str = "tensorrt") -> Path:
    return plan_root(engine_dir, backend) / f"{engine}-{precision}"


def plan_tag(static: StaticSize | None) -> str:
    return "dynamic" if static is None else f"static-{static.tag}"


def onnx_hash(entry_manifest: dict[str, Any]) -> str:
    """One hash of an ONNX cache entry's graph files, taken from the SHA-256s its manifest records
    (the entry was validated against them), so nothing is re-read."""
    files = entry_manifest["files"]
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]['sha256']}\0".encode())
    return digest.hexdigest()


def plan_key(
    engine: str, precision: str, entry_manifest: dict[str, Any], lib: LoadedTensorRT, gpu: GpuInfo | None,
    profile: Profile, targets: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Everything a plan depends on; a plan whose manifest differs in any field is stale. Portable
    plans are keyed by their ``targets``; the others by the ``gpu`` they are tuned on."""
    key = {
        "format": PLAN_FORMAT,
        "engine": engine,
        "precision": precision,
        "onnx_sha256": onnx_hash(entry_manifest),
        "library": lib.spec.name,
        "tensorrt": lib.version,
        "profile": {name: [list(s) for s in shapes] for name, shapes in profile.items()},
    }
    if lib.spec.portable_plans:
        return key | {"targets": list(targets)}
    if gpu is None:
        raise ValueError(f"{lib.spec.name} plans are keyed by the GPU they are built on")
    return key | {"gpu": gpu.name, "compute_capability": gpu.compute_capability, "driver": gpu.driver}


_REASONS = {
    "format": "plan format tag changed",
    "engine": "the plan is for another engine",
    "precision": "precision changed",
    "onnx_sha256": "the ONNX graph changed (new weights or export)",
    "library": "built by another TensorRT library",
    "tensorrt": "TensorRT version changed",
    "targets": "the target compute capabilities changed",
    "gpu": "built on another GPU",
    "compute_capability": "built for another compute capability",
    "driver": "the GPU driver changed",
    "profile": "the optimisation profile (shape ranges) changed",
}


def stale_fields(manifest: dict[str, Any], key: dict[str, Any]) -> list[str]:
    return [field for field, want in key.items() if manifest.get(field) != want]


def describe_stale(manifest: dict[str, Any], key: dict[str, Any]) -> str:
    parts = []
    for field in stale_fields(manifest, key):
        have, want = manifest.get(field), key[field]
        detail = f" ({have} -> {want})" if field in ("format", "library", "tensorrt", "gpu", "compute_capability", "driver", "precision", "targets") else ""
        parts.append(_REASONS.get(field, f"{field} changed") + detail)
    return "; ".join(parts)


def read_manifest(folder: Path, tag: str, suffix: str = PLAN_SUFFIX) -> tuple[dict[str, Any] | None, str]:
    """``(manifest, "")`` or ``(None, why)`` when there is no readable manifest for ``tag``."""
    path = folder / f"{tag}.json"
    if not path.is_file():
        if (folder / f"{tag}{suffix}").exists():
            return None, "plan without a manifest (an earlier build did not finish)"
        return None, "not built yet"
    return read_store_manifest(path, "plan")


def check_plan_file(
    folder: Path, tag: str, manifest: dict[str, Any], verify: bool = False, suffix: str = PLAN_SUFFIX
) -> str:
    """Empty when the plan file matches its manifest, else why not (missing, truncated, corrupt)."""
    return check_file(folder / f"{tag}{suffix}", manifest["plan"], "the plan", verify)


def check_plan(
    folder: Path, tag: str, key: dict[str, Any], verify: bool = False, suffix: str = PLAN_SUFFIX
) -> tuple[dict[str, Any] | None, str]:
    """``(manifest, "")`` when the plan ``tag`` in ``folder`` is valid for ``key``, else ``(None, why)``.
    ``suffix`` names other files kept the same way (TensorRT-RTX's runtime caches)."""
    manifest, why = read_manifest(folder, tag, suffix)
    if manifest is None:
        return None, why
    if stale_fields(manifest, key):
        return None, describe_stale(manifest, key)
    why = check_plan_file(folder, tag, manifest, verify, suffix)
    return (None, why) if why else (manifest, "")


def write_plan(
    folder: Path, tag: str, plan: bytes, key: dict[str, Any], extra: dict[str, Any], suffix: str = PLAN_SUFFIX
) -> dict[str, Any]:
    """Store ``plan`` and its manifest (``key`` plus ``extra``: build settings, structure hash...)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{tag}.json").unlink(missing_ok=True)  # from here until the end, no valid-looking plan
    path = folder / f"{tag}{suffix}"
    with atomic_write(path) as f:
        f.write(plan)
    manifest = key | extra | {"plan": file_record(path, hashlib.sha256(plan).hexdigest())}
    write_manifest(folder / f"{tag}.json", manifest)
    return manifest


def describe_cache(engine_dir: Path, backend: str = "tensorrt") -> list[str]:
    """One line per stored plan, for ``doctor``: engine, precision, tag, library, what it runs on, size."""
    root = plan_root(engine_dir, backend)
    lines = []
    for manifest_path in sorted(root.glob("*/*.json")):
        manifest, why = read_manifest(manifest_path.parent, manifest_path.stem)
        name = f"{manifest_path.parent.name}/{manifest_path.stem}"
        if manifest is None:
            lines.append(f"{name}: {why}")
            continue
        problem = check_plan_file(manifest_path.parent, manifest_path.stem, manifest)
        state = problem or f"{manifest['plan']['size'] / 2**20:.1f} MiB"
        runs_on = (
            f"sm {', '.join(manifest['targets'])}" if "targets" in manifest
            else f"{manifest.get('gpu')} (sm {manifest.get('compute_capability')})"
        )
        library = str(manifest.get("library", "TensorRT")).rsplit(" ", 1)[0]
        lines.append(f"{name}: {library} {manifest.get('tensorrt')}, {runs_on}, {state}")
    return lines
