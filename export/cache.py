"""The engine cache: one folder per (engine, precision) holding the ONNX graph and a manifest.

An entry is valid when its manifest matches what would be built now (engine contract version of
SPEC §4, source weight fingerprint, exporter, opset, torch/onnx versions, precision, the contract's
names and shape ranges) and every file it lists has the recorded size and SHA-256. Entries are kept
in the verified store of :mod:`.store` (written in a temporary folder, the manifest last, then
renamed into place), so an interrupted build never leaves a valid-looking entry. What each engine
is built from and how comes from its contract declaration (``EngineSpec.sources``, ``.loader``).

This module imports neither torch nor the exporter at import time: reusing a cache needs only numpy
and the standard library (the ONNX Runtime backend runs without torch installed).
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from dynamicid_rt.files.atomic import disk_error
from dynamicid_rt.contract import CONTRACT_CHANGES, CONTRACT_VERSION, ENGINES, ModelDims, engine_spec
from dynamicid_rt.errors import DynamicIDError, ModelFolderError, OutputError
from dynamicid_rt.modelfiles.paths import ModelPaths
from dynamicid_rt.models.preflight import check_before_export
from dynamicid_rt.files.stamps import RememberedDigests

from .recipes import (
    BUILD_TOLERANCE, CUDA_MODEL_FILE, EXPORTER_VERSION, MODEL_FILE, OPSET, cuda_graph, export_into, graph_precision,
    source_files, source_fingerprint,
)
from .cache_admin import mark_used, remember_model
from .progress import BuildProgress, BuildStatus, BuildTracker
from .store import MANIFEST, build_folder, build_lock, check_files, read_manifest, remove_abandoned_builds

__all__ = [  # with the recipe's names that callers import from here
    "BUILD_TOLERANCE", "BuildProgress", "BuildStatus", "CUDA_MODEL_FILE", "EXPORTER_VERSION", "FORMAT_VERSION",
    "MANIFEST", "MODEL_FILE", "OPSET", "PRECISIONS", "CacheEntry", "build_engines", "check_entry", "contract_record",
    "cuda_graph", "default_engine_dir", "default_engines", "entry_dir", "expected_manifest", "find_entry",
    "graph_precision", "source_files", "source_fingerprint",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16")
SOURCES = "sources.json"  # the source files' fingerprints, by path and stat (stamps.RememberedDigests)


@dataclass(frozen=True)
class CacheEntry:
    """A valid cache entry: ``onnx`` is the graph to load, ``manifest`` its parsed manifest."""

    engine: str
    precision: str
    path: Path
    manifest: dict[str, Any]
    reused: bool

    @property
    def onnx(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def graph_sha256(self) -> str:
        """The SHA-256 of ``onnx`` as the manifest records it: what caches derived from the graph key on."""
        return self.manifest["files"][self.onnx.name]["sha256"]

    @property
    def cuda_onnx(self) -> Path:
        """The graph for ONNX Runtime's CUDA provider: the fused-attention one where the entry has it."""
        name = self.manifest.get("cuda_graph")
        return self.path / name if name else self.onnx

    @property
    def dims(self) -> ModelDims:
        return ModelDims(**self.manifest["dims"])


def engines_root() -> Path:
    """``<user cache>/dynamicid-rt/engines``: the default ONNX cache of every model."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("dynamicid-rt")) / "engines"


def model_key(paths: ModelPaths, root: Path | None = None) -> str:
    """16 hex digits of the content of the files the engines are built from (the model hash): the
    byte-identical model at another path has the same key, a changed weight file another. Each
    file's fingerprint is remembered by path and stat in ``root``, so a warm start reads none."""
    root = engines_root() if root is None else root
    remembered = RememberedDigests(root / SOURCES)
    digest = hashlib.sha256()
    for name in default_engines(paths):
        digest.update(f"{name}\0{source_fingerprint(paths, name, remembered)}\0".encode())
    remembered.save()
    return digest.hexdigest()[:16]


def default_engine_dir(paths: ModelPaths) -> Path:
    """``<user cache>/dynamicid-rt/engines/<model key>`` (:func:`model_key`, by content, not path)."""
    root = engines_root()
    return root / model_key(paths, root)


def default_engines(paths: ModelPaths) -> list[str]:
    """Every engine of the contract this model folder can provide (optional ones only with their weights)."""
    return [name for name in ENGINES if paths.provides(name)]


def _version(package: str) -> str | None:
    # Read from package metadata: importing torch here would defeat the torch-free runtime.
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def contract_record(engine: str, dims: ModelDims) -> dict[str, Any]:
    """The contract's names and shape ranges as an entry's manifest records them."""
    spec = ENGINES[engine]
    return {
        "inputs": spec.input_names,
        "outputs": spec.output_names,
        "shape_ranges": {k: [list(s) for s in v] for k, v in spec.profile(dims).items()},
    }


def expected_manifest(
    paths: ModelPaths, engine: str, precision: str, remembered: RememberedDigests | None = None
) -> dict[str, Any]:
    """The manifest fields an entry must carry to be reused (``dims`` and files come from the build);
    ``remembered``: source fingerprints kept in the cache (:func:`build_engines`)."""
    return {
        "format": FORMAT_VERSION,
        "contract_version": CONTRACT_VERSION,  # checked first: an older contract explains every other change
        "engine": engine,
        "precision": precision,
        "exporter": EXPORTER_VERSION,
        "graph_precision": graph_precision(engine, precision),
        "cuda_graph": cuda_graph(engine, precision),
        "opset": OPSET,
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "source_sha256": source_fingerprint(paths, engine, remembered),
    }


def entry_dir(engine_dir: Path, engine: str, precision: str) -> Path:
    return Path(engine_dir) / f"{engine}-{precision}"


def check_entry(folder: Path, expected: dict[str, Any], verify: bool = False) -> tuple[dict[str, Any] | None, str]:
    """``(manifest, "")`` when the entry in ``folder`` is valid, else ``(None, why)``. ``verify``
    hashes every file even when its size and modification time match the manifest."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return None, "not built yet" if not folder.exists() else "no manifest (an earlier build did not finish)"
    manifest, why = read_manifest(manifest_path, "files")
    if manifest is None:
        return None, why
    try:
        dims = ModelDims(**manifest["dims"])
    except (KeyError, TypeError) as exc:
        return None, f"manifest is unreadable ({type(exc).__name__}: {exc})"
    files = manifest["files"]
    for key, want in expected.items():
        have = manifest.get(key)
        if key == "torch" and want is None:
            continue  # torch is not installed here: the graph cannot be rebuilt anyway, keep it
        if key == "contract_version" and have != want:
            return None, _contract_change(have or 1, want)  # v1 manifests had no version field
        if have != want:
            what = "source weights changed" if key == "source_sha256" else f"{key} changed ({have} -> {want})"
            return None, what
    if manifest.get("contract") != contract_record(expected["engine"], dims):
        return None, "the engine contract (names or shape ranges) changed"
    if MODEL_FILE not in files:
        return None, f"manifest lists no {MODEL_FILE}"
    why = check_files(folder, files, verify)
    return (None, why) if why else (manifest, "")


def _contract_change(have: Any, want: int) -> str:
    """Why an entry from another contract version is rebuilt, e.g. "engine contract v1 -> v2 (...)"."""
    changes = [CONTRACT_CHANGES[v] for v in range(have + 1, want + 1) if v in CONTRACT_CHANGES] if isinstance(have, int) else []
    return f"engine contract v{have} -> v{want}" + (f" ({'; '.join(changes)})" if changes else "")


def find_entry(paths: ModelPaths, engine: str, precision: str, engine_dir: Path | None = None) -> CacheEntry | None:
    """The valid entry for ``engine`` at ``precision``, or None (the reason is logged at debug level)."""
    engine_dir = Path(engine_dir) if engine_dir is not None else default_engine_dir(paths)
    folder = entry_dir(engine_dir, engine, precision)
    manifest, why = check_entry(folder, expected_manifest(paths, engine, precision))
    if manifest is None:
        log.debug("%s: no valid entry in %s: %s", engine, folder, why)
        return None
    return CacheEntry(engine, precision, folder, manifest, reused=True)


def build_engines(
    paths: ModelPaths,
    engine_dir: Path | None = None,
    precision: str = "fp32",
    engines: Sequence[str] | None = None,
    progress: BuildProgress | None = None,
    force: bool = False,
    verify: bool = False,
) -> list[CacheEntry]:
    """Make sure every engine in ``engines`` (default: all this model folder provides) has a valid
    cache entry at ``precision`` and return the entries, in that order. Valid entries are reused
    without loading any model; stale or corrupt ones are rebuilt and the reason logged. ``force``
    rebuilds everything; ``verify`` re-hashes every cached file (otherwise only files whose size or
    modification time changed since the build). ``progress`` gets a :class:`BuildStatus` per engine
    and stage, with an estimate of the time left; the stages are also logged at INFO."""
    if precision not in PRECISIONS:
        raise DynamicIDError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    names = list(engines) if engines is not None else default_engines(paths)
    for name in names:
        spec = engine_spec(name)
        if not paths.provides(name):
            raise ModelFolderError(f"the {name} engine needs {spec.needs}; leave {name} out of --engines or add the files")
    engine_dir = Path(engine_dir) if engine_dir is not None else default_engine_dir(paths)
    # Source fingerprints kept in the cache, so a warm start reads no weights (``verify``: all read again).
    remembered = RememberedDigests(engine_dir / SOURCES) if not verify else None
    expected = {name: expected_manifest(paths, name, precision, remembered) for name in names}
    for path in (engine_dir, *(entry_dir(engine_dir, n, precision) for n in names)):
        if path.is_symlink() and not path.exists():
            raise OutputError(f"cache folder {path} is a broken symlink or a symlink loop; remove it (or point it at a folder)")
    checked = {n: (None, "--force") if force else check_entry(entry_dir(engine_dir, n, precision), expected[n], verify) for n in names}
    to_build = [n for n in names if checked[n][0] is None]
    sources = {n: source_files(paths, n) for n in names}
    if to_build:  # what `inspect` would refuse is refused here, before the first export
        check_before_export(paths, [f for n in to_build for f in sources[n]])
    tracker = BuildTracker({n: sum(f.stat().st_size for f in sources[n]) for n in names}, set(to_build), progress)
    if not to_build:  # a complete, valid cache is used as it is: nothing written (a read-only or shared cache works)
        out = []
        for name in names:
            tracker.report(name, "checking")
            tracker.finished(name, built=False)
            out.append(CacheEntry(name, precision, entry_dir(engine_dir, name, precision), checked[name][0], reused=True))
        if remembered is not None:
            remembered.save()  # skipped quietly where the cache cannot be written
        return out
    out = []
    try:
        engine_dir.mkdir(parents=True, exist_ok=True)
        remove_abandoned_builds(engine_dir)
        for name in names:
            tracker.report(name, "checking")
            # One builder per entry across processes sharing the folder: the second waits, then reuses.
            with build_lock(engine_dir, entry_dir(engine_dir, name, precision).name):
                entry = _ensure_entry(paths, name, precision, engine_dir, force, verify, expected[name],
                                      lambda stage, name=name: tracker.report(name, stage))
            tracker.finished(name, built=not entry.reused)
            out.append(entry)
        # Once every entry is valid: a failed build leaves nothing new.
        remember_model(engine_dir, str(paths.root or paths.base))  # the name `dynamicid-rt cache` lists
        if remembered is not None:
            remembered.save()
    except Exception as exc:  # torch, onnx and ONNX Runtime report a full disk in their own exception types
        error = disk_error(engine_dir, exc)
        if error is None:
            raise
        raise error from exc
    return out


def _ensure_entry(
    paths: ModelPaths, name: str, precision: str, engine_dir: Path, force: bool, verify: bool, expected: dict[str, Any],
    report: Callable[[str], None],
) -> CacheEntry:
    folder = entry_dir(engine_dir, name, precision)
    manifest, why = (None, "--force") if force else check_entry(folder, expected, verify)
    if manifest is not None:
        mark_used(folder)
        return CacheEntry(name, precision, folder, manifest, reused=True)
    if folder.exists() or force:
        log.info("rebuilding %s (%s) in %s: %s", name, precision, folder, why)
    else:
        log.info("building %s (%s) in %s", name, precision, folder)
    report("building")
    started = time.perf_counter()
    manifest = _build_entry(paths, name, precision, engine_dir, expected, why, report)
    log.info("built %s (%s) in %.1f s", name, precision, time.perf_counter() - started)
    return CacheEntry(name, precision, folder, manifest, reused=False)


def _build_entry(
    paths: ModelPaths, engine: str, precision: str, engine_dir: Path, expected: dict[str, Any], why: str,
    report: Callable[[str], None],
) -> dict[str, Any]:
    def fill(tmp: Path) -> dict[str, Any]:
        fp32 = find_entry(paths, engine, "fp32", engine_dir) if precision == "fp16" else None
        dims, record = export_into(paths, engine, precision, tmp, why, fp32.onnx if fp32 is not None else None, report)
        return expected | {
            "dims": asdict(dims),
            "contract": contract_record(engine, dims),
            "parity_relative_error": record["parity_relative_error"],
            "build_seconds": {stage: round(s, 2) for stage, s in record["seconds"].items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    return build_folder(Path(engine_dir), entry_dir(engine_dir, engine, precision).name, fill)
