"""Make sure every engine has a valid TensorRT plan: reuse, refit or build, one engine at a time.

The ONNX entries come from ``dynamicid_rt.export`` (built first when missing). The library is
imported before any export starts, so a missing one is reported at once. A file lock per plan
folder lets two processes share a cache: the second waits, then finds the plan the first one built.

Where a library checks plans against the GPU (TensorRT-RTX's ``Runtime.get_engine_validity``) and a
GPU is present, a stored plan is also asked whether it suits this GPU; an invalid one is rebuilt with
the library's diagnostic as the reason, or refused in one line when no rebuild can help.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from dynamicid_rt.files.atomic import atomic_write
from dynamicid_rt.contract import ENGINES
from dynamicid_rt.errors import RequestError
from dynamicid_rt.export.progress import BuildProgress
from dynamicid_rt.modelfiles.paths import ModelPaths

from .builder import BuildSettings, EngineBuildError, build_plan
from .library import TIMING_CACHE, LoadedTensorRT, load
from .plans import (
    LOCK_FILE, TIMING_CACHE_FILE, GpuInfo, check_plan, plan_folder, plan_key, plan_tag, read_manifest, stale_fields,
    write_plan,
)
from .profiles import StaticSize, check_static_size, engine_profile, sized_engines
from .refit import refit_plan, structure_hash
from .validity import plan_validity

log = logging.getLogger(__name__)

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


def can_refit(lib: LoadedTensorRT, gpu: GpuInfo | None) -> bool:
    """Whether refittable plans can be built here (TensorRT-RTX needs a GPU for them)."""
    return gpu is not None or lib.spec.refit_without_gpu


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
    lib: LoadedTensorRT | None = None,
    gpu: GpuInfo | None = None,
    export_progress: BuildProgress | None = None,
) -> list[PlanEntry]:
    """The plans of ``engines`` (default: all the model folder provides) at ``precision``: the dynamic
    plan of each and, with ``static``, a static plan of each size-dependent engine (unet, vae_decoder, vae_encoder).
    ``gpu``: the GPU plans are built on (None: none here; only libraries that build without one).
    ``progress`` follows the plans; ``export_progress`` the ONNX export before them."""
    from dynamicid_rt.export.cache import build_engines, default_engine_dir, default_engines

    lib = lib or load("tensorrt", "building TensorRT plans")
    settings.check()
    settings.targets_for(lib)  # a wrong --targets is refused before any export
    if gpu is None and lib.spec.needs_gpu_to_build:
        raise EngineBuildError(
            f"{lib.spec.name} builds plans on the GPU they will run on, and none is usable here; build on that "
            "machine, or build portable plans without a GPU with --backend tensorrt-rtx"
        )
    names = list(engines) if engines is not None else default_engines(paths)
    if static is not None:
        for name in sized_engines():
            check_static_size(ENGINES[name], static)
    refittable = [name for name in names if ENGINES[name].refittable]
    if refittable and not can_refit(lib, gpu):
        log.info(
            "%s cannot build refittable plans without a GPU: %s built non-refittable; new weights rebuild it",
            lib.spec.name, ", ".join(refittable),
        )
    engine_dir = Path(engine_dir) if engine_dir is not None else default_engine_dir(paths)
    entries = build_engines(paths, engine_dir, precision, names, progress=export_progress)
    out = []
    for entry in entries:
        sizes = [None] + ([static] if static is not None and ENGINES[entry.engine].sized else [])
        for size in sizes:
            out.append(ensure_plan(lib, gpu, entry, engine_dir, size, settings, force, verify, progress))
    return out


def ensure_plan(
    lib: LoadedTensorRT, gpu: GpuInfo | None, entry: Any, engine_dir: Path, static: StaticSize | None,
    settings: BuildSettings, force: bool = False, verify: bool = False, progress: PlanProgress | None = None,
) -> PlanEntry:
    """Reuse the valid plan of one ONNX cache entry, refit a stale one whose graph kept its
    structure, or build it; ``entry`` is an ``export.cache.CacheEntry``."""
    from filelock import FileLock

    report = progress or (lambda *_: None)
    engine, precision = entry.engine, entry.precision
    settings = replace(settings, refittable=ENGINES[engine].refittable and can_refit(lib, gpu))
    profile = engine_profile(ENGINES[engine], entry.dims, static)
    key = plan_key(engine, precision, entry.manifest, lib, gpu, profile, settings.targets_for(lib))
    folder, tag = plan_folder(engine_dir, engine, precision, lib.spec.backend), plan_tag(static)
    folder.mkdir(parents=True, exist_ok=True)
    report(engine, tag, "checking")
    with FileLock(str(folder / LOCK_FILE)):
        manifest, why = (None, "--force") if force else check_plan(folder, tag, key, verify)
        if manifest is not None:
            why = plan_validity(lib, folder / f"{tag}.plan", gpu)
            if not why:
                report(engine, tag, "reused")
                return PlanEntry(engine, precision, tag, folder, manifest, "reused", entry)
        old, _ = read_manifest(folder, tag)
        structure = structure_hash(entry.onnx)
        if not force and old is not None and settings.refittable and _refittable(old, key, structure):
            report(engine, tag, "refitting")
            try:
                plan = refit_plan(lib.trt, (folder / f"{tag}.plan").read_bytes(), entry.onnx)
            except (EngineBuildError, OSError) as exc:
                log.info("%s %s: refit failed (%s); rebuilding", engine, tag, exc)
            else:
                log.info("%s %s (%s): refitted with the new weights (%s)", engine, tag, precision, why)
                manifest = write_plan(folder, tag, plan, key, _record(old["settings"], structure, refit=True))
                report(engine, tag, "refit")
                return PlanEntry(engine, precision, tag, folder, manifest, "refit", entry)
        log.info("building %s plan %s %s (%s): %s", lib.label, engine, tag, precision, why)
        report(engine, tag, "building")
        timing_path = folder / TIMING_CACHE_FILE
        keeps_timing = lib.spec.kernel_cache == TIMING_CACHE
        timing = timing_path.read_bytes() if keeps_timing and timing_path.is_file() else b""
        started = time.perf_counter()
        plan, timing = build_plan(lib, entry.onnx, precision, profile, settings, timing, desc=f"{engine} {tag}")
        if keeps_timing:
            with atomic_write(timing_path) as f:
                f.write(timing)
        manifest = write_plan(folder, tag, plan, key, _record(asdict(settings), structure, refit=False))
        log.info("built %s %s (%s) in %.1f s", engine, tag, precision, time.perf_counter() - started)
        report(engine, tag, "built")
        return PlanEntry(engine, precision, tag, folder, manifest, "built", entry)


def _refittable(old: dict[str, Any], key: dict[str, Any], structure: str) -> bool:
    """Only the weights changed (same graph structure, library, GPU, profile), and the plan was
    built refittable."""
    return (
        stale_fields(old, key) == ["onnx_sha256"]
        and bool(old.get("settings", {}).get("refittable"))
        and old.get("structure_sha256") == structure
    )


def _record(settings: dict[str, Any], structure: str, refit: bool) -> dict[str, Any]:
    return {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "structure_sha256": structure,
        "refitted": refit,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def find_static_plans(
    engine_dir: Path, entry: Any, lib: LoadedTensorRT, gpu: GpuInfo | None, settings: BuildSettings = BuildSettings()
) -> list[PlanEntry]:
    """Valid static plans stored beside the dynamic plan of ``entry`` (built with ``--static``)."""
    folder = plan_folder(engine_dir, entry.engine, entry.precision, lib.spec.backend)
    found = []
    for manifest_path in sorted(folder.glob("static-*.json")):
        tag = manifest_path.stem
        try:
            size = StaticSize.parse(tag.removeprefix("static-"))
        except RequestError:  # a stray file, not one of ours
            continue
        profile = engine_profile(ENGINES[entry.engine], entry.dims, size)
        key = plan_key(entry.engine, entry.precision, entry.manifest, lib, gpu, profile, settings.targets_for(lib))
        manifest, why = check_plan(folder, tag, key)
        why = why or plan_validity(lib, folder / f"{tag}.plan", gpu)
        if why:
            log.info(
                "%s %s: not used (%s); rebuild it with build-engines --backend %s --static %s",
                entry.engine, tag, why, lib.spec.backend, size.tag,
            )
            continue
        found.append(PlanEntry(entry.engine, entry.precision, tag, folder, manifest, "reused", entry))
    return found
