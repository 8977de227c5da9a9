"""The faster export (issue #21) against the procedure it replaced.

The export now folds constants straight into the entry, runs the parity check on the session that
folded the graph and rewrites only the small graph proto. Checked here against an independent
re-implementation of the old procedure (trace, fold into a scratch file, load everything, save
again, parity in a fresh session): the graphs must be the same node for node and weight for weight,
and the parity check must still refuse a graph the tracer froze to one shape.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from dynamicid_rt.contract import ENGINES, Axis, EngineSpec, ModelDims, TensorSpec
from dynamicid_rt.errors import NumericalError
from dynamicid_rt.export import onnx_export
from dynamicid_rt.models import load_engine_module
from dynamicid_rt.models.base import read_model_dims
from dynamicid_rt.modelfiles.paths import ModelPaths


@pytest.fixture(scope="module")
def tiny(tiny_bundle) -> ModelPaths:
    return ModelPaths.from_folder(tiny_bundle)


def _old_procedure(module, spec: EngineSpec, dims: ModelDims, folder) -> onnx.ModelProto:
    """The export as it was: trace, ORT basic-level folding into a scratch file, then load it whole
    and save it again (the graph the old cache held)."""
    raw, folded = folder / "raw.onnx", folder / "folded.onnx"
    args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in spec.sample_inputs(dims).values())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(raw), input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes(), opset_version=18, dynamo=False, do_constant_folding=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(folded))


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("engine", ["text_encoder", "unet", "vae_decoder"])
def test_fast_export_holds_the_graph_of_the_old_procedure(engine, tiny, tmp_path):
    module = load_engine_module(tiny, engine, torch.float32, "cpu")
    spec, dims = ENGINES[engine], read_model_dims(tiny)
    record: dict = {}
    out = onnx_export.export_engine(module, spec, dims, tmp_path / "model.onnx",
                                    check_at=[{a.name: a.min for a in spec.axes}], record=record)
    (tmp_path / "old").mkdir()
    old = _old_procedure(module, spec, dims, tmp_path / "old")
    new = onnx.load(str(out))
    assert [(n.op_type, list(n.input), list(n.output)) for n in new.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in old.graph.node]
    old_w, new_w = _weights(old), _weights(new)
    assert old_w.keys() == new_w.keys() and all(np.array_equal(old_w[k], new_w[k]) for k in old_w)
    assert [o.domain for o in new.opset_import] == [o.domain for o in old.opset_import if o.domain in ("", "ai.onnx")
                                                    or o.domain in {n.domain for n in old.graph.node}]
    # The check ran, on sample inputs at the smallest shapes, and each stage was timed.
    assert 0 <= record["parity_relative_error"] <= 1e-4
    assert {"trace", "fold", "save", "parity", "check"} <= record["seconds"].keys()
    # And its figure is what a fresh session of the saved file gives (the old check), up to the
    # rounding of ORT's fused CPU kernels, which the fresh session adds.
    fresh = onnx_export.compare_with_torch(out, module, spec, dims, [{a.name: a.min for a in spec.axes}], 1e-3)
    assert fresh == pytest.approx(record["parity_relative_error"], abs=1e-6)


class _UnrolledOverBatch(torch.nn.Module):
    """A Python loop over the batch: the tracer unrolls it for the traced batch size only."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.proj(x[i]) for i in range(x.shape[0])])


def test_parity_on_the_folding_session_refuses_a_frozen_trace(tmp_path):
    spec = EngineSpec("frozen", inputs=(TensorSpec("x", ("B", 8)),), outputs=(TensorSpec("y", ("B", 8)),),
                      axes=(Axis("B", 1, 3, 4),))
    with pytest.raises(NumericalError, match="differs from the PyTorch module"):
        onnx_export.export_engine(_UnrolledOverBatch(), spec, ModelDims(), tmp_path / "model.onnx", check_at=[{"B": 1}])
    # Checked at the traced size, the same graph passes: the refusal is the shape, not the maths.
    record: dict = {}
    onnx_export.export_engine(_UnrolledOverBatch(), spec, ModelDims(), tmp_path / "again.onnx", check_at=[{"B": 3}], record=record)
    assert record["parity_relative_error"] <= 1e-6
