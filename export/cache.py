"""The engine cache: one folder per (engine, precision) holding the ONNX graph and a manifest.

An entry is valid when its manifest matches what would be built now (engine contract version of
SPEC §4, source weight fingerprint, exporter, opset, torch/onnx versions, precision, the contract's
names and shape ranges) and every file it lists has the recorded size and SHA-256. Entries are
written in a temporary folder, the manifest last, then renamed into place, so an interrupted build
never leaves a valid-looking entry.

This module imports neither torch nor the exporter at import time: reusing a cache needs only numpy
and the standard library (the ONNX Runtime backend runs without torch installed).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from filelock import FileLock

from dynamicid_rt.contract import CONTRACT_CHANGES, CONTRACT_VERSION, ENGINES, ModelDims
from dynamicid_rt.atomic import write_error
from dynamicid_rt.errors import DynamicIDError, ModelFolderError
from dynamicid_rt.preflight import check_before_export
from dynamicid_rt.paths import ModelPaths
from dynamicid_rt.stamps import first_mismatch, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
FORMAT_VERSION = 1
# Bump when the export procedure changes in a way that changes the graphs.
EXPORTER_VERSION = "dynamicid_rt.export/2"  # 2: fp32 islands in fp16 graphs, fp32 VAE in fp16 caches
OPSET = 18
PRECISIONS = ("fp32", "fp16")
# Engines whose graph stays fp32 in an fp16 cache: SD1.5's VAE overflows in fp16 (and ORT's CPU
# provider, which checks builds, computes fp16 MatMuls in fp32, so it cannot see the overflow).
FP32_IN_FP16_CACHES = frozenset({"vae_decoder"})
# fp16 entries of these engines also hold CUDA_MODEL_FILE: attention fused into MultiHeadAttention
# (export/fused_attention.py), so ONNX Runtime's CUDA provider never stores the score tensors.
# TensorRT has no importer for that contrib op: it and ORT's TensorRT provider read MODEL_FILE.
FUSED_ATTENTION_ENGINES = frozenset({"unet"})
CUDA_MODEL_FILE = "model.cuda.onnx"
# fp32 graphs must match the PyTorch module this closely at build time (max abs error over max |ref|).
BUILD_TOLERANCE = 1e-3
_SAMPLE_BYTES = 8 << 20  # per sampled chunk of a large weight file
_FULL_HASH_LIMIT = 256 << 20

# progress(engine, index, total, status): status is "checking", "building", "built" or "reused".
Progress = Callable[[str, int, int, str], None]


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
    def cuda_onnx(self) -> Path:
        """The graph for ONNX Runtime's CUDA provider: the fused-attention one where the entry has it."""
        name = self.manifest.get("cuda_graph")
        return self.path / name if name else self.onnx

    @property
    def dims(self) -> ModelDims:
        return ModelDims(**self.manifest["dims"])


def default_engine_dir(paths: ModelPaths) -> Path:
    """``<user cache>/dynamicid-rt/engines/<hash of the model folder's resolved paths>``."""
    import platformdirs

    parts = {k: (str(Path(v).resolve()) if v is not None else None) for k, v in asdict(paths).items()}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("dynamicid-rt")) / "engines" / key


def default_engines(paths: ModelPaths) -> list[str]:
    """Every engine of the contract this model folder can provide (imr only with IMR weights)."""
    return [name for name in ENGINES if name != "imr" or paths.has_imr]


def _base_part(paths: ModelPaths, part: str) -> Path:
    if paths.base_is_single_file:
        return paths.base
    if (paths.base / part).is_dir():
        return paths.base / part
    return paths.base  # a bare unet/ folder given as base


def source_files(paths: ModelPaths, engine: str) -> list[Path]:
    """The weight and config files an engine is built from."""
    if engine == "unet":
        roots = [_base_part(paths, "unet"), paths.saa]
    elif engine == "text_encoder":
        roots = [_base_part(paths, "text_encoder")]
    elif engine == "vae_decoder":
        roots = [paths.vae or _base_part(paths, "vae")]
    elif engine == "image_encoder":
        roots = [paths.image_encoder]
    elif engine == "face_projector":
        roots = [paths.saa, paths.projector]
    elif engine == "imr":
        roots = [paths.imr, paths.keypoint_encoder]
    else:
        raise KeyError(f"unknown engine {engine!r}; the contract has {', '.join(ENGINES)}")
    files: list[Path] = []
    for root in roots:
        if root is None:
            continue
        root = Path(root)
        if root.is_dir():
            files += sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif root.is_file():
            files.append(root)
        else:
            raise ModelFolderError(f"{engine} needs {root}, which does not exist; check the model folder")
    return files


def _file_fingerprint(path: Path) -> str:
    """SHA-256 of small files; for large weight files (GBs) the size plus three 8 MiB samples,
    which tells different checkpoints apart without reading gigabytes on every start."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            return hashlib.file_digest(f, "sha256").hexdigest()
        for offset in (0, size // 2, size - _SAMPLE_BYTES):
            f.seek(offset)
            digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def source_fingerprint(paths: ModelPaths, engine: str) -> str:
    digest = hashlib.sha256()
    for path in source_files(paths, engine):
        digest.update(path.name.encode() + b"\0" + _file_fingerprint(path).encode() + b"\0")
    return digest.hexdigest()


def _version(package: str) -> str | None:
    # Read from package metadata: importing torch here would defeat the torch-free runtime.
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _contract(engine: str, dims: ModelDims) -> dict[str, Any]:
    spec = ENGINES[engine]
    return {
        "inputs": spec.input_names,
        "outputs": spec.output_names,
        "shape_ranges": {k: [list(s) for s in v] for k, v in spec.profile(dims).items()},
    }


def graph_precision(engine: str, precision: str) -> str:
    """The precision of the graph an entry holds: the cache's, except for :data:`FP32_IN_FP16_CACHES`."""
    return "fp32" if precision == "fp16" and engine in FP32_IN_FP16_CACHES else precision


def cuda_graph(engine: str, precision: str) -> str | None:
    """The file name of the entry's fused-attention graph for the CUDA provider, if it has one."""
    return CUDA_MODEL_FILE if engine in FUSED_ATTENTION_ENGINES and graph_precision(engine, precision) == "fp16" else None


def expected_manifest(paths: ModelPaths, engine: str, precision: str) -> dict[str, Any]:
    """The manifest fields an entry must carry to be reused (``dims`` and files come from the build)."""
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
        "source_sha256": source_fingerprint(paths, engine),
    }


_sha256 = sha256_file  # the name engines/plans.py imports


def entry_dir(engine_dir: Path, engine: str, precision: str) -> Path:
    return Path(engine_dir) / f"{engine}-{precision}"


def check_entry(folder: Path, expected: dict[str, Any], verify: bool = False) -> tuple[dict[str, Any] | None, str]:
    """``(manifest, "")`` when the entry in ``folder`` is valid, else ``(None, why)``. ``verify``
    hashes every file even when its size and modification time match the manifest."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return None, "not built yet" if not folder.exists() else "no manifest (an earlier build did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
        dims = ModelDims(**manifest["dims"])
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"manifest is unreadable ({type(exc).__name__}: {exc})"
    for key, want in expected.items():
        have = manifest.get(key)
        if key == "torch" and want is None:
            continue  # torch is not installed here: the graph cannot be rebuilt anyway, keep it
        if key == "contract_version" and have != want:
            return None, _contract_change(have or 1, want)  # v1 manifests had no version field
        if have != want:
            what = "source weights changed" if key == "source_sha256" else f"{key} changed ({have} -> {want})"
            return None, what
    if manifest.get("contract") != _contract(expected["engine"], dims):
        return None, "the engine contract (names or shape ranges) changed"
    if MODEL_FILE not in files:
        return None, f"manifest lists no {MODEL_FILE}"
    for name, info in files.items():
        path = folder / name
        if not path.is_file():
            return None, f"{name} is missing"
        stat = path.stat()
        if stat.st_size != info["size"]:
            return None, f"{name} has {stat.st_size} bytes, the manifest says {info['size']} (truncated or corrupt)"
    # Content is verified by SHA-256; a file unchanged since its last verification (its stamp
    # includes the ctime, which no tool can put back) is not hashed again.
    bad = first_mismatch(folder, {name: info["sha256"] for name, info in files.items()}, rehash=verify)
    if bad is not None:
        return None, f"{bad} does not match its SHA-256 in the manifest (corrupt)"
    return manifest, ""


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
    progress: Progress | None = None,
    force: bool = False,
    verify: bool = False,
) -> list[CacheEntry]:
    """Make sure every engine in ``engines`` (default: all this model folder provides) has a valid
    cache entry at ``precision`` and return the entries, in that order. Valid entries are reused
    without loading any model; stale or corrupt ones are rebuilt and the reason logged. ``force``
    rebuilds everything; ``verify`` re-hashes every cached file (otherwise only files whose size or
    modification time changed since the build)."""
    if precision not in PRECISIONS:
        raise DynamicIDError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    names = list(engines) if engines is not None else default_engines(paths)
    for name in names:
        if name not in ENGINES:
            raise KeyError(f"unknown engine {name!r}; the contract has {', '.join(ENGINES)}")
        if name == "imr" and not paths.has_imr:
            raise ModelFolderError(
                "the imr engine needs IMR.bin and key_point_encoder.bin in the model folder's dynamicid/ "
                "folder; leave imr out of --engines or add the files"
            )
    engine_dir = Path(engine_dir) if engine_dir is not None else default_engine_dir(paths)
    expected = {name: expected_manifest(paths, name, precision) for name in names}
    to_build = [n for n in names if force or check_entry(entry_dir(engine_dir, n, precision), expected[n], verify)[0] is None]
    if to_build:  # what `inspect` would refuse is refused here, before the first export
        check_before_export(paths, [f for n in to_build for f in source_files(paths, n)])
    report = progress or (lambda *_: None)
    out = []
    try:
        engine_dir.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_builds(engine_dir)
        for i, name in enumerate(names):
            report(name, i, len(names), "checking")
            # One builder per entry across processes sharing the folder: the second waits, then reuses.
            with FileLock(str(engine_dir / f".lock-{name}-{precision}")):
                entry = _ensure_entry(paths, name, precision, engine_dir, force, verify, expected[name],
                                      lambda status: report(name, i, len(names), status))
            out.append(entry)
    except Exception as exc:  # torch and onnx report a full disk in their own exception types
        error = write_error(engine_dir, exc)
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
        report("reused")
        return CacheEntry(name, precision, folder, manifest, reused=True)
    if folder.exists() or force:
        log.info("rebuilding %s (%s) in %s: %s", name, precision, folder, why)
    else:
        log.info("building %s (%s) in %s", name, precision, folder)
    report("building")
    started = time.perf_counter()
    manifest = _build_entry(paths, name, precision, engine_dir, expected, why)
    log.info("built %s (%s) in %.1f s", name, precision, time.perf_counter() - started)
    report("built")
    return CacheEntry(name, precision, folder, manifest, reused=False)


def _tmp_prefix(engine: str, precision: str) -> str:
    return f".building-{engine}-{precision}-"


def _remove_abandoned_builds(engine_dir: Path) -> None:
    """Delete temporary folders of builds whose process is gone (killed, power loss)."""
    for old in engine_dir.glob(".old-*"):  # replaced entries whose deletion was cut short
        shutil.rmtree(old, ignore_errors=True)
    for tmp in engine_dir.glob(".building-*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build_entry(
    paths: ModelPaths, engine: str, precision: str, engine_dir: Path, expected: dict[str, Any], why: str
) -> dict[str, Any]:
    tmp = engine_dir / f"{_tmp_prefix(engine, precision)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        dims, error = _export_into(paths, engine, precision, engine_dir, tmp, why)
        files = {
            p.name: {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns, "sha256": _sha256(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        manifest = expected | {
            "dims": asdict(dims),
            "contract": _contract(engine, dims),
            "files": files,
            "parity_relative_error": error,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # The manifest is written last: without it the folder is never taken for a valid entry.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _replace_dir(tmp, entry_dir(engine_dir, engine, precision))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an old ``dst`` is first renamed away (a folder cannot be replaced
    atomically when not empty), so at no time does a half-written entry sit at ``dst``."""
    if dst.exists():
        old = dst.with_name(f".old-{dst.name}-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(src, dst)


def _export_into(
    paths: ModelPaths, engine: str, precision: str, engine_dir: Path, tmp: Path, why: str
) -> tuple[ModelDims, float | None]:
    """Export ``engine`` into ``tmp/model.onnx``; returns the model sizes and, for fp32, the
    measured relative error against the PyTorch module."""
    try:
        import onnx
        import torch

        from dynamicid_rt.models import load_engine_module
        from dynamicid_rt.models.base import read_model_dims

        from . import onnx_export
    except ModuleNotFoundError as exc:
        raise DynamicIDError(
            f"the {engine} engine must be built ({why}), which needs PyTorch ({exc}); install the torch extra "
            "(pip install 'dynamicid-rt[torch]'), or run `dynamicid-rt build-engines` where it is installed and "
            "copy the engine folder here"
        ) from exc

    spec = ENGINES[engine]
    dims = read_model_dims(paths)
    target = tmp / MODEL_FILE
    if precision == "fp16":
        fp32 = find_entry(paths, engine, "fp32", engine_dir)
        if fp32 is not None:
            source = fp32.onnx  # reuse the valid fp32 graph rather than exporting again
        else:
            (tmp / "fp32").mkdir()
            module = load_engine_module(paths, engine, torch.float32, "cpu")
            source = onnx_export.export_engine(module, spec, dims, tmp / "fp32" / MODEL_FILE, OPSET)
        if graph_precision(engine, precision) == "fp32":
            onnx_export.save_model(onnx.load(str(source), load_external_data=True), target)  # a copy
        else:
            onnx_export.convert_fp16(source, target)
        if cuda_graph(engine, precision):
            from .fused_attention import write_fused_attention

            write_fused_attention(target, tmp / CUDA_MODEL_FILE)
            onnx_export.check_finite(tmp / CUDA_MODEL_FILE, spec, dims)
        shutil.rmtree(tmp / "fp32", ignore_errors=True)
        onnx_export.check_finite(target, spec, dims)
        return dims, None
    module = load_engine_module(paths, engine, torch.float32, "cpu")
    onnx_export.export_engine(module, spec, dims, target, OPSET)
    # Traced at the opt shapes, checked at the smallest ones: a tracer that froze a shape fails here.
    points = [{a.name: a.min for a in spec.axes}]
    error = onnx_export.compare_with_torch(target, module, spec, dims, points, BUILD_TOLERANCE)
    return dims, error
