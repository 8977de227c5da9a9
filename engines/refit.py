"""Refit: give a built plan the weights of another checkpoint of the same architecture.

Another SD1.5 fine-tune or SAA checkpoint changes the UNet's weights but not its graph. A plan
built refittable is then refitted from the new ONNX graph (all its weights, through TensorRT's ONNX
refitter) in seconds, where a rebuild takes minutes. Whether two graphs share an architecture is
decided by :func:`structure_hash`: the nodes and the names, shapes and types of the weights, not
their values.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

import onnx

from .builder import EngineBuildError, make_logger


def structure_hash(onnx_path: Path) -> str:
    """SHA-256 of a graph's structure: nodes (with attributes) and weight names/shapes/types."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    digest = hashlib.sha256()
    for tensor in model.graph.initializer:
        digest.update(f"{tensor.name}:{tensor.data_type}:{list(tensor.dims)}\0".encode())
    for node in model.graph.node:
        digest.update(node.SerializeToString(deterministic=True))
    for value in list(model.graph.input) + list(model.graph.output):
        digest.update(value.SerializeToString(deterministic=True))
    return digest.hexdigest()


def refit_plan(trt: ModuleType, plan: bytes, onnx_path: Path) -> bytes:
    """The plan ``plan`` with every weight taken from ``onnx_path``; raises EngineBuildError when
    the graph does not supply them all (then the plan must be rebuilt)."""
    logger = make_logger(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("the plan to refit cannot be loaded; it will be rebuilt")
    refitter = trt.Refitter(engine, logger)
    parser = trt.OnnxParserRefitter(refitter, logger)
    if not parser.refit_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot refit from {onnx_path}: {errors or 'no reason given'}")
    if not refitter.refit_cuda_engine():
        missing = ", ".join(refitter.get_missing_weights()[:5])
        raise EngineBuildError(f"refitting from {onnx_path} left weights unset ({missing}); the plan will be rebuilt")
    return bytes(engine.serialize())
