"""Make sure every engine has a valid TensorRT plan: reuse, refit or build, one engine at a time.

The ONNX entries come from ``dynamicid_rt.export`` (built first when missing). TensorRT is checked
for before any export starts, so a missing library is reported at once. A file lock per plan folder
lets two processes share a cache: the second waits, then finds the plan the first one built.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

from dynamicid_rt.atomic import atomic_write
from dynamicid_rt.contract import ENGINES
from dynamicid_rt.errors import RequestError
from dynamicid_rt.paths import ModelPaths

from .builder import BuildSettings, EngineBuildError, build_plan
from .library import import_tensorrt
from .plans import (
    LOCK_FILE, TIMING_CACHE, GpuInfo, check_plan, plan_folder, plan_key, plan_tag, read_manifest, stale_fields, write_plan,
)
from .profiles import SIZED_ENGINES, StaticSize, check_static_size, engine_profile
from .refit import refit_plan, structure_hash

log = logging.getLogger(__name__)

# Engines built refittable: the UNet carries the checkpoint-specific weights (fine-tune + SAA LoRA).
REFITTABLE = ("unet",)

# progress(engine, tag, status): status is "checking", "building", "refitting", "built", "refit" or "reused".
PlanProgress = Callable[[str, str, str], None]


@dataclass(frozen=True)
class PlanEntry:
    """A valid plan: ``path`` to load, ``manifest`` its key and build record."""

    engine: str
    precision: str
    tag: str
    folder: Path
    manifest: dict[str, Any]
    status: str
    entry: Any  # the export.cache.CacheEntry (ONNX graph) the plan was built from

    @property
    def path(self) -> Path:
        return self.folder / f"{self.tag}.plan"


def build_plans(
    paths: ModelPaths,
    engine_dir: Path | None = None,
    precision: str = "fp16",
    engines: Sequence[str] | None = None,
    static: StaticSize | None = None,
    settings: BuildSettings = BuildSettings(),
    force: bool = False,
    verify: bool = False,
    progress: PlanProgress | None = None,
    trt: ModuleType | None = None,
    gpu: GpuInfo | None = None,
) -> list[PlanEntry]:
    """The plans of ``engines`` (default: all the model folder provides) at ``precision``: the dynamic
    plan of each and, with ``static``, a static plan of each size-dependent engine (unet, vae_decoder)."""
    from dynamicid_rt.export.cache import build_engines, default_engine_dir, default_engines

    trt = trt or import_tensorrt("building TensorRT plans")
    settings.check()
    names = list(engines) if engines is not None else default_engines(paths)
    if static is not None:
        for name in SIZED_ENGINES:
            check_static_size(ENGINES[name], static)
    if gpu is None:
        from .cuda import gpu_info

        gpu = gpu_info()
    engine_dir = Path(engine_dir) if engine_dir is not None else default_engine_dir(paths)
    entries = build_engines(paths, engine_dir, precision, names)
    out = []
    for entry in entries:
        sizes = [None] + ([static] if static is not None and entry.engine in SIZED_ENGINES else [])
        for size in sizes:
            out.append(ensure_plan(trt, gpu, entry, engine_dir, size, settings, force, verify, progress))
    return out


def ensure_plan(
    trt: ModuleType, gpu: GpuInfo, entry: Any, engine_dir: Path, static: StaticSize | None, settings: BuildSettings,
    force: bool = False, verify: bool = False, progress: PlanProgress | None = None,
) -> PlanEntry:
    """Reuse the valid plan of one ONNX cache entry, refit a stale one whose graph kept its
    structure, or build it; ``entry`` is an ``export.cache.CacheEntry``."""
    from filelock import FileLock

    report = progress or (lambda *_: None)
    engine, precision = entry.engine, entry.precision
    settings = replace(settings, refittable=engine in REFITTABLE)
    profile = engine_profile(ENGINES[engine], entry.dims, static)
    key = plan_key(engine, precision, entry.manifest, trt.__version__, gpu, profile)
    folder, tag = plan_folder(engine_dir, engine, precision), plan_tag(static)
    folder.mkdir(parents=True, exist_ok=True)
    report(engine, tag, "checking")
    with FileLock(str(folder / LOCK_FILE)):
        manifest, why = (None, "--force") if force else check_plan(folder, tag, key, verify)
        if manifest is not None:
            report(engine, tag, "reused")
            return PlanEntry(engine, precision, tag, folder, manifest, "reused", entry)
        old, _ = read_manifest(folder, tag)
        structure = structure_hash(entry.onnx)
        if not force and old is not None and _refittable(old, key, structure):
            report(engine, tag, "refitting")
            try:
                plan = refit_plan(trt, (folder / f"{tag}.plan").read_bytes(), entry.onnx)
            except (EngineBuildError, OSError) as exc:
                log.info("%s %s: refit failed (%s); rebuilding", engine, tag, exc)
            else:
                log.info("%s %s (%s): refitted with the new weights (%s)", engine, tag, precision, why)
                manifest = write_plan(folder, tag, plan, key, _record(old["settings"], structure, refit=True))
                report(engine, tag, "refit")
                return PlanEntry(engine, precision, tag, folder, manifest, "refit", entry)
        log.info("building TensorRT plan %s %s (%s): %s", engine, tag, precision, why)
        report(engine, tag, "building")
        timing_path = folder / TIMING_CACHE
        timing = timing_path.read_bytes() if timing_path.is_file() else b""
        started = time.perf_counter()
        plan, timing = build_plan(trt, entry.onnx, precision, profile, settings, timing, desc=f"{engine} {tag}")
        with atomic_write(timing_path) as f:
            f.write(timing)
        manifest = write_plan(folder, tag, plan, key, _record(asdict(settings), structure, refit=False))
        log.info("built %s %s (%s) in %.1f s", engine, tag, precision, time.perf_counter() - started)
        report(engine, tag, "built")
        return PlanEntry(engine, precision, tag, folder, manifest, "built", entry)


def _refittable(old: dict[str, Any], key: dict[str, Any], structure: str) -> bool:
    """Only the weights changed (same graph structure, TensorRT, GPU, profile), and the plan was
    built refittable."""
    return (
        stale_fields(old, key) == ["onnx_sha256"]
        and bool(old.get("settings", {}).get("refittable"))
        and old.get("structure_sha256") == structure
    )


def _record(settings: dict[str, Any], structure: str, refit: bool) -> dict[str, Any]:
    return {
        "settings": settings,
        "structure_sha256": structure,
        "refitted": refit,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def find_static_plans(engine_dir: Path, entry: Any, trt_version: str, gpu: GpuInfo) -> list[PlanEntry]:
    """Valid static plans stored beside the dynamic plan of ``entry`` (built with ``--static``)."""
    folder = plan_folder(engine_dir, entry.engine, entry.precision)
    found = []
    for manifest_path in sorted(folder.glob("static-*.json")):
        tag = manifest_path.stem
        try:
            size = StaticSize.parse(tag.removeprefix("static-"))
        except RequestError:  # a stray file, not one of ours
            continue
        profile = engine_profile(ENGINES[entry.engine], entry.dims, size)
        manifest, why = check_plan(folder, tag, plan_key(entry.engine, entry.precision, entry.manifest, trt_version, gpu, profile))
        if manifest is None:
            log.info("%s %s: not used (%s); rebuild it with build-engines --backend tensorrt --static %s", entry.engine, tag, why, size.tag)
            continue
        found.append(PlanEntry(entry.engine, entry.precision, tag, folder, manifest, "reused", entry))
    return found
