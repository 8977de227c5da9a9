"""Engine cache entries with user LoRAs merged: the base entry's graph with new weights.

Re-exporting torch→ONNX for every LoRA set is the slow way (the full-size fp32 engines took 1455 s
here). A LoRA changes weights only, so a LoRA'd entry is the base entry's graph with the touched
initializers rewritten: each weight a LoRA changes is found among the base graph's initializers by
value (the exporter renames linear weights and stores them transposed for MatMul), the summed fp32
deltas of :func:`dynamicid_rt.modelfiles.lora.weight_deltas` are added, and the graph is saved as an entry of
its own, keyed by each LoRA's content hash and scale (``<engine>-<precision>-lora-<key>``), so that
switching back to a set finds it on disk. A weight the graph does not hold as one initializer of
its own falls back to a full export of the merged module. fp16 entries are converted from the
LoRA'd fp32 one, as the plain fp16 entries are from theirs.

Reusing an entry imports neither torch nor onnx; building one imports both.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from dynamicid_rt.contract import ENGINES, LORA_ENGINES, ModelDims
from dynamicid_rt.files.atomic import disk_error
from dynamicid_rt.modelfiles.lora import LoraFile, cache_key
from dynamicid_rt.modelfiles.paths import ModelPaths

from .cache_admin import evict_beyond_budget, mark_used
from .cache import CacheEntry, build_engines, check_entry, contract_record, default_engine_dir, expected_manifest
from .recipes import CUDA_MODEL_FILE, MODEL_FILE, cuda_graph
from .store import build_folder, build_lock

log = logging.getLogger(__name__)

PATCH_VERSION = 1  # bump when the way LoRA'd graphs are written changes


def lora_entry_dir(engine_dir: Path, engine: str, precision: str, key: list[list]) -> Path:
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    return Path(engine_dir) / f"{engine}-{precision}-lora-{digest}"


def lora_entries(
    paths: ModelPaths, engine_dir: Path | None, precision: str, loras: Sequence[tuple[LoraFile, float]],
    engines: Sequence[str] = LORA_ENGINES,
) -> dict[str, CacheEntry]:
    """The entry each of ``engines`` runs with these LoRAs: the plain one where no LoRA changes
    the engine, else the LoRA'd entry, reused when valid and built when not."""
    engine_dir = Path(engine_dir) if engine_dir is not None else default_engine_dir(paths)
    out = {}
    for engine in engines:
        key = cache_key(loras, engine)
        if not key:
            (out[engine],) = build_engines(paths, engine_dir, precision, [engine])
            continue
        try:
            with build_lock(engine_dir, f"{engine}-{precision}-lora"):
                out[engine] = _ensure(paths, engine_dir, engine, precision, loras, key)
        except Exception as exc:  # a full disk, whatever the library that met it reports
            error = disk_error(engine_dir, exc)
            if error is None:
                raise
            raise error from exc
    return out


def _expected(paths: ModelPaths, engine: str, precision: str, key: list[list]) -> dict[str, Any]:
    return expected_manifest(paths, engine, precision) | {"loras": key, "lora_patch": PATCH_VERSION}


def _ensure(
    paths: ModelPaths, engine_dir: Path, engine: str, precision: str, loras: Sequence[tuple[LoraFile, float]], key: list[list]
) -> CacheEntry:
    folder = lora_entry_dir(engine_dir, engine, precision, key)
    expected = _expected(paths, engine, precision, key)
    manifest, why = check_entry(folder, expected)
    if manifest is not None:
        mark_used(folder)
        return CacheEntry(engine, precision, folder, manifest, reused=True)
    log.info("building %s (%s) with %d LoRA(s) in %s: %s", engine, precision, len(key), folder, why)
    started = time.perf_counter()

    def fill(tmp: Path) -> dict[str, Any]:
        dims = _write_graph(paths, engine_dir, engine, precision, loras, key, tmp)
        return expected | {
            "dims": dims, "contract": contract_record(engine, ModelDims(**dims)), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    manifest = build_folder(engine_dir, folder.name, fill)
    log.info("built %s (%s) with LoRAs in %.1f s", engine, precision, time.perf_counter() - started)
    evict_beyond_budget(engine_dir)  # the oldest LoRA entries and derived copies, never this one (just used)
    return CacheEntry(engine, precision, folder, manifest, reused=False)


def _write_graph(
    paths: ModelPaths, engine_dir: Path, engine: str, precision: str, loras: Sequence[tuple[LoraFile, float]],
    key: list[list], tmp: Path,
) -> dict[str, Any]:
    """Write ``tmp/model.onnx`` (and the CUDA graph of fp16 UNets); returns the entry's dims."""
    from . import onnx_export

    if precision == "fp16":
        fp32 = _ensure(paths, engine_dir, engine, "fp32", loras, key)
        onnx_export.convert_fp16(fp32.onnx, tmp / MODEL_FILE)
        if cuda_graph(engine, precision):
            from .fused_attention import write_fused_attention

            write_fused_attention(tmp / MODEL_FILE, tmp / CUDA_MODEL_FILE)
        onnx_export.check_finite(tmp / MODEL_FILE, ENGINES[engine], fp32.dims)
        return asdict(fp32.dims)
    (base,) = build_engines(paths, engine_dir, "fp32", [engine])
    _patch_initializers(paths, base, engine, loras, tmp / MODEL_FILE)
    return asdict(base.dims)


def _digest(a) -> str:
    """The shape and a 64 x 64 grid of the values: tells weights apart without hashing gigabytes (a
    transposed view samples the transposed grid, so no copy is made); a hit is confirmed on every
    value before it is patched."""
    import numpy as np

    grid = a.reshape(a.shape[0], -1) if a.ndim > 2 else a
    rows, cols = (np.unique(np.linspace(0, n - 1, 64).astype(np.int64)) for n in grid.shape)
    return hashlib.sha1(np.ascontiguousarray(grid[np.ix_(rows, cols)]).tobytes() + repr(a.shape).encode()).hexdigest()


def initializers_by_value(model) -> dict[str, list]:
    """The graph's float matrices and kernels by a digest of their values and shape."""
    import onnx
    from onnx import numpy_helper

    by_value: dict[str, list] = {}
    for init in model.graph.initializer:
        if len(init.dims) >= 2 and init.data_type == onnx.TensorProto.FLOAT:
            by_value.setdefault(_digest(numpy_helper.to_array(init)), []).append(init)
    return by_value


def _patch_initializers(paths: ModelPaths, base: CacheEntry, engine: str, loras: Sequence[tuple[LoraFile, float]], out: Path) -> None:
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    from dynamicid_rt.modelfiles.lora import weight_deltas
    from dynamicid_rt.models import load_engine_module
    from dynamicid_rt.models.lora_merge import LoraMerger, lora_root, weight_shapes

    from . import onnx_export

    module = load_engine_module(paths, engine, torch.float32, "cpu")
    root = lora_root(module, engine)
    deltas = weight_deltas(loras, engine, weight_shapes(root))  # raises for LoRAs that do not fit, before the work
    model = onnx.load(str(base.onnx), load_external_data=True)
    by_value = initializers_by_value(model)
    patches = []
    for name, delta in deltas.items():
        weight = root.get_submodule(name).weight.detach().numpy()
        hits = [(i, False) for i in by_value.get(_digest(weight), [])]
        if weight.ndim == 2:
            hits += [(i, True) for i in by_value.get(_digest(weight.T), [])]
        hits = [(i, t) for i, t in hits if np.array_equal(numpy_helper.to_array(i), weight.T if t else weight)]
        if len(hits) != 1 or any(hits[0][0] is claimed for (claimed, _), _ in patches):
            log.info("%s: weight %s is %s in the graph; exporting the merged module instead", engine, name,
                     "not one initializer" if hits else "not found")
            LoraMerger(module, engine).apply(loras)
            onnx_export.export_engine(module, ENGINES[engine], base.dims, out, onnx_export.OPSET)
            return
        patches.append((hits[0], delta))
    for (init, transposed), delta in patches:
        merged = numpy_helper.to_array(init) + (delta.T if transposed else delta)
        init.CopyFrom(numpy_helper.from_array(merged.astype(np.float32), init.name))
    onnx_export.save_model(model, out)
