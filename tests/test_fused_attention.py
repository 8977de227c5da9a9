"""Fused attention for the CUDA graphs: every self-attention and every text branch of the
cross-attention becomes one MultiHeadAttention node, the SAA identity branch stays explicit, and
the fused graphs compute what the unfused ones and the PyTorch UNet compute (ORT's CPU provider
implements MultiHeadAttention, so this is checked here; the CUDA kernels are not)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from dynamicid_rt.contract import ENGINES
from dynamicid_rt.export import build_engines
from dynamicid_rt.export.cache import CUDA_MODEL_FILE
from dynamicid_rt.export.fused_attention import fuse_attention
from dynamicid_rt.models import load_engine_module
from dynamicid_rt.modelfiles.paths import ModelPaths

ort = pytest.importorskip("onnxruntime")

# Batch sizes, square and non-square latents, 1-4 identities and boxes, ID mixing, gating off.
POINTS = [
    {"B": 1, "h": 32, "w": 32, "N": 1, "M": 1},
    {"B": 3, "h": 40, "w": 32, "N": 4, "M": 4},
    {"B": 2, "h": 32, "w": 48, "N": 2, "M": 1, "mix": 1},
    {"B": 1, "h": 32, "w": 40, "N": 3, "M": 3, "gating": 0},
]


@pytest.fixture(scope="module")
def unet(tiny_bundle) -> torch.nn.Module:
    return load_engine_module(ModelPaths.from_folder(tiny_bundle), "unet", torch.float32, "cpu")


def _attention_layers(unet: torch.nn.Module) -> tuple[int, int]:
    """(self-attention layers, cross-attention layers) of the PyTorch UNet, counted by module path."""
    names = [name.rsplit(".", 1)[-1] for name, _ in unet.named_modules()]
    return names.count("attn1"), names.count("attn2")


def _inputs(point: dict, dims, seed: int) -> dict[str, np.ndarray]:
    point = dict(point)
    mix, gating = point.pop("mix", None), point.pop("gating", None)
    inputs = ENGINES["unet"].sample_inputs(dims, seed=seed, **point)
    rng = np.random.default_rng(seed)
    inputs["timestep"] = rng.integers(0, 1000, size=inputs["timestep"].shape).astype(np.float32)
    if mix is not None:  # one box shared by two identities
        inputs["id_mix"] = np.array([0.3], np.float32)
        inputs["id_boxes"] = np.array([[0.1, 0.2, 0.9, 0.7]], np.float32)
    if gating is not None:
        inputs["id_gating"] = np.array([float(gating)], np.float32)
    return inputs


def _session(model: onnx.ModelProto | str) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _fused(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == "com.microsoft" and n.op_type == "MultiHeadAttention"]


def _score_tensors(model: onnx.ModelProto, latent: int) -> list[str]:
    """Values of ``model`` shaped (..., L, L), L = latent² positions, by shape inference with every
    input dimension fixed (batch 1, one identity): the attention scores of the full-size level."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        fixed = {"sample": [1, 4, latent, latent]}.get(value.name, [1] * len(dims))
        for dim, size in zip(dims, fixed):
            if not dim.HasField("dim_value"):
                dim.dim_value = size
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    positions = latent * latent
    return [
        v.name for v in inferred.graph.value_info
        if [d.dim_value for d in v.type.tensor_type.shape.dim][-2:] == [positions, positions]
    ]


def _relative(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def test_fused_fp32_unet_matches_unfused_graph_and_torch(tiny_bundle, tiny_engines, unet):
    path = str(tiny_engines / "unet-fp32" / "model.onnx")
    plain = onnx.load(path)
    fused = onnx.load(path)
    count = fuse_attention(fused)
    self_layers, cross_layers = _attention_layers(unet)
    assert self_layers and cross_layers
    assert count == len(_fused(fused)) == self_layers + cross_layers
    # What is left explicit is the identity branch: one softmax per cross-attention layer.
    assert sum(n.op_type == "Softmax" for n in fused.graph.node) == cross_layers
    onnx.checker.check_model(fused, full_check=True)
    from dynamicid_rt.export.cache import find_entry

    dims = find_entry(ModelPaths.from_folder(tiny_bundle), "unet", "fp32", tiny_engines).dims
    fused_run, plain_run = _session(fused), _session(plain)
    for seed, point in enumerate(POINTS):
        inputs = _inputs(point, dims, seed)
        got = fused_run.run(None, inputs)[0]
        with torch.no_grad():
            ref = unet(*(torch.from_numpy(inputs[n]) for n in ENGINES["unet"].input_names)).numpy()
        assert _relative(got, plain_run.run(None, inputs)[0]) <= 1e-4, point
        assert _relative(got, ref) <= 1e-4, point


def test_fp16_cuda_graph_is_fused_and_the_tensorrt_graph_is_not(tiny_bundle, tiny_engines, unet):
    paths = ModelPaths.from_folder(tiny_bundle)
    (entry,) = build_engines(paths, tiny_engines, precision="fp16", engines=["unet"])
    assert entry.manifest["cuda_graph"] == CUDA_MODEL_FILE and CUDA_MODEL_FILE in entry.manifest["files"]
    assert entry.cuda_onnx == entry.path / CUDA_MODEL_FILE
    plain, fused = onnx.load(str(entry.onnx)), onnx.load(str(entry.cuda_onnx))
    assert not _fused(plain)  # TensorRT and ORT's TensorRT provider read this one
    self_layers, cross_layers = _attention_layers(unet)
    nodes = _fused(fused)
    assert len(nodes) == self_layers + cross_layers
    # fp16 in and out, as the CUDA kernels (flash / memory-efficient attention) take them.
    types = {v.name: v.type.tensor_type.elem_type for v in fused.graph.value_info}
    assert all(types[n.input[0]] == onnx.TensorProto.FLOAT16 for n in nodes)
    # The memory argument: the plain graph stores (B, heads, L, L) scores, the fused one none.
    assert _score_tensors(plain, 32) and not _score_tensors(fused, 32)
    (vae,) = build_engines(paths, tiny_engines, precision="fp16", engines=["vae_decoder"])
    assert vae.cuda_onnx == vae.onnx and vae.manifest["cuda_graph"] is None
    inputs = _inputs(POINTS[1], entry.dims, 5)
    got = _session(str(entry.cuda_onnx)).run(None, inputs)[0]
    with torch.no_grad():
        ref = unet(*(torch.from_numpy(inputs[n]) for n in ENGINES["unet"].input_names)).numpy()
    assert np.isfinite(got).all()
    assert _relative(got, ref) < 2e-2  # the unfused fp16 graph's tolerance (test_export_onnx)
