"""The recipe of an ONNX cache entry: which files an engine is built from (its contract
``sources``, fingerprinted) and how its graphs are made (export through its contract ``loader``,
fp16 conversion, fused attention, the build-time parity check).

Importing this module is light (no torch): the exporter and torch are imported by :func:`export_into`.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Callable

from dynamicid_rt.contract import ENGINES, ModelDims
from dynamicid_rt.errors import DynamicIDError
from dynamicid_rt.modelfiles.part_files import engine_files
from dynamicid_rt.modelfiles.paths import ModelPaths
from dynamicid_rt.files.stamps import RememberedDigests

from .progress import StageClock

MODEL_FILE = "model.onnx"
# fp16 entries of EngineSpec.fused_attention engines also hold CUDA_MODEL_FILE: attention fused into
# MultiHeadAttention (export/fused_attention.py), so ONNX Runtime's CUDA provider never stores the
# score tensors. TensorRT has no importer for that contrib op: it and ORT's TensorRT provider read MODEL_FILE.
CUDA_MODEL_FILE = "model.cuda.onnx"
# Bump when the export procedure changes in a way that changes the graphs.
EXPORTER_VERSION = "dynamicid_rt.export/2"  # 2: fp32 islands in fp16 graphs, fp32 VAE in fp16 caches
OPSET = 18
# fp32 graphs must match the PyTorch module this closely at build time (max abs error over max |ref|).
BUILD_TOLERANCE = 1e-3
_SAMPLE_BYTES = 8 << 20  # per sampled chunk of a large weight file
_FULL_HASH_LIMIT = 256 << 20


def source_files(paths: ModelPaths, engine: str) -> list[Path]:
    """The files an engine is built from: exactly those its loader reads (the config and the
    chosen weights of each of its ``EngineSpec.sources``), not every file of their folders."""
    return engine_files(paths, engine)


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


def source_fingerprint(paths: ModelPaths, engine: str, remembered: RememberedDigests | None = None) -> str:
    """The fingerprint of an engine's source files; with ``remembered``, a file whose stat is
    unchanged since its last fingerprint is not read again (a warm start reads no weights)."""
    digest = hashlib.sha256()
    for path in source_files(paths, engine):
        file_digest = remembered.digest(path, _file_fingerprint) if remembered is not None else _file_fingerprint(path)
        digest.update(path.name.encode() + b"\0" + file_digest.encode() + b"\0")
    return digest.hexdigest()


def graph_precision(engine: str, precision: str) -> str:
    """The precision of the graph an entry holds: the cache's, except for ``fp32_in_fp16`` engines
    (SD1.5's VAE overflows in fp16; ORT's CPU provider, which checks builds, computes fp16 MatMuls
    in fp32, so it cannot see the overflow)."""
    return "fp32" if precision == "fp16" and ENGINES[engine].fp32_in_fp16 else precision


def cuda_graph(engine: str, precision: str) -> str | None:
    """The file name of the entry's fused-attention graph for the CUDA provider, if it has one."""
    return CUDA_MODEL_FILE if ENGINES[engine].fused_attention and graph_precision(engine, precision) == "fp16" else None


def export_into(
    paths: ModelPaths, engine: str, precision: str, tmp: Path, why: str, fp32_graph: Path | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[ModelDims, dict[str, Any]]:
    """Export ``engine`` into ``tmp/model.onnx``; returns the model sizes and the build record:
    ``seconds`` per stage (load, trace, fold, save, parity, check; fp16 also convert) and, for fp32,
    ``parity_relative_error``, the measured error against the PyTorch module. ``fp32_graph``: the
    valid fp32 entry's graph, which an fp16 build converts rather than exporting again. ``why``: why
    it is built; ``on_stage`` is told each stage as it starts."""
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
    record: dict[str, Any] = {"parity_relative_error": None}
    clock = StageClock(on_stage)

    def load_module() -> torch.nn.Module:
        with clock.stage("load", "loading weights"):
            return load_engine_module(paths, engine, torch.float32, "cpu")

    if precision == "fp16":
        if fp32_graph is not None:
            source = fp32_graph  # reuse the valid fp32 graph rather than exporting again
        else:
            (tmp / "fp32").mkdir()
            source = onnx_export.export_engine(
                load_module(), spec, dims, tmp / "fp32" / MODEL_FILE, OPSET, record=record, on_stage=on_stage
            )
        with clock.stage("convert", "converting to fp16"):
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
    else:
        # Traced at the opt shapes, checked at the smallest ones, on the session that folded the
        # graph: a tracer that froze a shape fails here, and the check costs no second session.
        points = [{a.name: a.min for a in spec.axes}]
        onnx_export.export_engine(
            load_module(), spec, dims, target, OPSET, check_at=points, tolerance=BUILD_TOLERANCE, record=record,
            on_stage=on_stage,
        )
    record["seconds"] = clock.seconds | record.get("seconds", {})
    return dims, record
