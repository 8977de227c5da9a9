"""ONNX export and the engine cache: parity with the PyTorch modules, TensorRT-parsable graphs,
reuse, corruption and interrupted builds."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dynamicid_rt.contract import ENGINES, ModelDims
from dynamicid_rt.export import build_engines, cache, find_entry, onnx_export
from dynamicid_rt.cli.build_engines import register
from dynamicid_rt.models import load_engine_module
from dynamicid_rt.tiny.bundle import write_tiny_bundle

TRT_OPS = json.loads((Path(onnx_export.__file__).parent / "tensorrt_onnx_ops.json").read_text())

# Shape points per engine over the dynamic ranges: batch sizes, square and non-square latents,
# 1-4 identities, one box with 2 identities (ID mixing), gating off.
POINTS = {
    "text_encoder": [{"B": 1}, {"B": 3}],
    "image_encoder": [{"B": 1}, {"B": 2}],
    "face_projector": [{"B": 1}, {"B": 3}],
    "imr": [{}],
    "unet": [
        {"B": 1, "h": 32, "w": 32, "N": 1, "M": 1},
        {"B": 2, "h": 32, "w": 48, "N": 2, "M": 2},
        {"B": 3, "h": 40, "w": 32, "N": 4, "M": 4},
        {"B": 2, "h": 32, "w": 32, "N": 2, "M": 1, "mix": 1},
        {"B": 1, "h": 32, "w": 40, "N": 3, "M": 3, "gating": 0},
    ],
    "vae_decoder": [{"B": 2, "h": 32, "w": 32}, {"B": 1, "h": 40, "w": 32}],
    "vae_encoder": [{"B": 2, "h": 32, "w": 32}, {"B": 1, "h": 40, "w": 32}],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_bundle(tmp_path_factory.getbasetemp() / "tiny-bundle")


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "engines"


@pytest.fixture(scope="module")
def entries(tiny, engine_dir):
    # Shared with test_onnxruntime_backend.py through the folder: whichever runs first builds.
    return {e.engine: e for e in build_engines(tiny, engine_dir)}


@pytest.fixture(scope="module")
def modules():
    return {}  # engine -> PyTorch module, loaded on first use


def _module(modules, tiny, engine):
    if engine not in modules:
        modules[engine] = load_engine_module(tiny, engine, torch.float32, "cpu")
    return modules[engine]


def _inputs(engine: str, dims: ModelDims, point: dict, seed: int) -> dict[str, np.ndarray]:
    point = dict(point)
    mix, gating = point.pop("mix", None), point.pop("gating", None)
    inputs = ENGINES[engine].sample_inputs(dims, seed=seed, **point)
    if engine == "unet":
        rng = np.random.default_rng(seed)
        inputs["timestep"] = rng.integers(0, 1000, size=inputs["timestep"].shape).astype(np.float32)
        inputs["id_scale"] = rng.uniform(0.0, 1.5, size=inputs["id_scale"].shape).astype(np.float32)  # per person
        if mix is not None:
            inputs["id_mix"] = np.array([0.3], np.float32)
            inputs["id_boxes"] = np.array([[0.1, 0.2, 0.9, 0.7]], np.float32)
        if gating is not None:
            inputs["id_gating"] = np.array([float(gating)], np.float32)
            inputs["id_boost"] = np.array([0.0], np.float32)
    return inputs


def _torch_reference(module, engine: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(inputs[n]) for n in ENGINES[engine].input_names))
    return [t.numpy() for t in ((out,) if isinstance(out, torch.Tensor) else out)]


@pytest.mark.parametrize("engine", list(POINTS))
def test_onnx_matches_torch_over_dynamic_ranges(engine, entries, tiny, modules):
    entry = entries[engine]
    session = ort.InferenceSession(str(entry.onnx), providers=["CPUExecutionProvider"])
    module = _module(modules, tiny, engine)
    for seed, point in enumerate(POINTS[engine]):
        inputs = _inputs(engine, entry.dims, point, seed)
        got = session.run(None, inputs)
        ref = _torch_reference(module, engine, inputs)
        assert len(got) == len(ref) == len(ENGINES[engine].outputs)
        for g, r, name in zip(got, ref, ENGINES[engine].output_names):
            assert g.shape == r.shape, (engine, point, name)
            err = np.abs(g.astype(np.float64) - r).max() / np.abs(r).max()
            assert err <= 1e-4, f"{engine} {point} {name}: relative error {err:.2e}"


def _graph_ops(model: onnx.ModelProto) -> set[str]:
    ops: set[str] = set()
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}")
            stack += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return ops


def test_graphs_are_valid_and_parse_in_tensorrt(entries):
    supported = set(TRT_OPS["supported"])
    for name, entry in entries.items():
        model = onnx.load(str(entry.onnx))
        onnx.checker.check_model(model, full_check=True)
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert 17 <= opset <= TRT_OPS["opset_max"], (name, opset)
        assert [i.name for i in model.graph.input] == ENGINES[name].input_names
        assert [o.name for o in model.graph.output] == ENGINES[name].output_names  # contract v2: no renames
        unsupported = _graph_ops(model) - supported
        assert not unsupported, f"{name} uses ops TensorRT's ONNX parser lacks: {sorted(unsupported)}"


def test_unet_has_no_data_dependent_output_shapes(entries):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(entries["unet"].onnx)), strict_mode=True)
    data_dependent = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "Loop", "Scan", "If", "TopK"}
    assert not (_graph_ops(model) & data_dependent)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    out = model.graph.output[0]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    # noise_pred is (B, 4, h, w) with the very symbols of `sample`: its shape follows the inputs.
    assert out_dims == dims["sample"] == ["B", 4, "h", "w"]
    # Every Reshape target and Expand shape is computed from shapes, never from tensor values.
    value_inputs = {"id_boxes", "id_scale", "id_boost", "id_gating", "id_mix", "timestep"}
    producers = {o: n for n in model.graph.node for o in n.output}

    def depends_on_values(name: str, seen: set[str]) -> bool:
        if name in value_inputs:
            return True
        node = producers.get(name)
        if node is None or name in seen or node.op_type == "Shape":
            return False
        seen.add(name)
        return any(depends_on_values(i, seen) for i in node.input if i)

    # Inputs that set an output shape: never computed from the values of the per-call inputs.
    shape_inputs = {
        "Reshape": [1], "Expand": [1], "ConstantOfShape": [0], "Tile": [1], "Resize": [2, 3], "Slice": [1, 2, 3, 4],
        "Range": [0, 1, 2], "Pad": [1], "Split": [1], "Squeeze": [1], "Unsqueeze": [1], "OneHot": [1],
    }
    checked = 0
    for node in model.graph.node:
        for i in shape_inputs.get(node.op_type, ()):
            if i < len(node.input) and node.input[i]:
                checked += 1
                assert not depends_on_values(node.input[i], set()), (node.name, node.op_type)
    assert checked > 0


def test_build_reuses_valid_entries_quickly(tiny, engine_dir, entries):
    import time

    started = time.perf_counter()
    again = build_engines(tiny, engine_dir)
    assert time.perf_counter() - started < 5.0
    assert all(e.reused for e in again)
    assert [e.engine for e in again] == list(entries)
    for e in again:
        assert e.manifest["files"]["model.onnx"]["sha256"] == entries[e.engine].manifest["files"]["model.onnx"]["sha256"]


def _copy_entry(engine_dir: Path, target: Path, engine: str) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(engine_dir / f"{engine}-fp32", target / f"{engine}-fp32")
    return target / f"{engine}-fp32"


def test_corrupt_entry_is_detected_and_rebuilt(tiny, engine_dir, entries, tmp_path, caplog):
    folder = _copy_entry(engine_dir, tmp_path, "face_projector")
    assert find_entry(tiny, "face_projector", "fp32", tmp_path) is not None
    model = folder / "model.onnx"
    stat = model.stat()
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, different content
    model.write_bytes(bytes(data))
    expected = cache.expected_manifest(tiny, "face_projector", "fp32")
    # A modification time put back is no proof: the change time differs from the stamp, so it is hashed.
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.check_entry(folder, expected)[0] is None
    manifest, why = cache.check_entry(folder, expected, verify=True)
    assert manifest is None and "SHA-256" in why
    os.utime(model)  # as after any ordinary write: hashed and found corrupt without verify
    assert find_entry(tiny, "face_projector", "fp32", tmp_path) is None
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.export.cache"):
        (entry,) = build_engines(tiny, tmp_path, engines=["face_projector"])
    assert not entry.reused
    assert "SHA-256" in caplog.text and "rebuilding face_projector" in caplog.text
    assert find_entry(tiny, "face_projector", "fp32", tmp_path) is not None
    (folder / "model.onnx").write_bytes(b"")  # truncated
    assert "truncated" in cache.check_entry(folder, expected)[1]


def test_stale_manifest_is_rebuilt_with_reason(tiny, engine_dir, entries, tmp_path, caplog):
    folder = _copy_entry(engine_dir, tmp_path, "imr")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["exporter"] = "dynamicid_rt.export/0"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.export.cache"):
        (entry,) = build_engines(tiny, tmp_path, engines=["imr"])
    assert not entry.reused and "exporter changed" in caplog.text
    (folder / "manifest.json").write_text("{not json")
    assert cache.check_entry(folder, cache.expected_manifest(tiny, "imr", "fp32"))[0] is None


def test_interrupted_build_leaves_no_valid_entry(tiny, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "compare_with_torch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_engines(tiny, tmp_path, engines=["face_projector"])
    assert find_entry(tiny, "face_projector", "fp32", tmp_path) is None
    assert not (tmp_path / "face_projector-fp32").exists()
    assert not list(tmp_path.glob(".building-*"))
    # A build killed outright leaves its temporary folder (with a manifest, even): never taken for
    # an entry, and removed by the next build since its process is gone.
    dead = tmp_path / ".building-face_projector-fp32-999999999-0badf00d"
    dead.mkdir()
    (dead / "manifest.json").write_text("{}")
    monkeypatch.undo()
    (entry,) = build_engines(tiny, tmp_path, engines=["face_projector"])
    assert not entry.reused and not dead.exists()


def test_fp16_variant_keeps_sensitive_ops_in_fp32(tiny, engine_dir, entries, modules):
    (entry,) = build_engines(tiny, engine_dir, precision="fp16", engines=["unet"])
    model = onnx.shape_inference.infer_shapes(onnx.load(str(entry.onnx)))
    elem = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in model.graph.input if i.name != "timestep")
    init_type = {i.name: i.data_type for i in model.graph.initializer}
    weights = [n.input[1] for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and n.input[1] in init_type]
    assert weights and all(init_type[w] == onnx.TensorProto.FLOAT16 for w in weights)
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax and all(elem[n.input[0]] == onnx.TensorProto.FLOAT for n in softmax)
    for op in ("ReduceMin", "ReduceMax", "LayerNormalization"):
        for n in (n for n in model.graph.node if n.op_type == op):
            assert elem[n.input[0]] == onnx.TensorProto.FLOAT, (op, n.name)
    inputs = _inputs("unet", entry.dims, {"B": 2, "h": 32, "w": 32, "N": 2, "M": 2}, 7)
    got = ort.InferenceSession(str(entry.onnx), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    ref = _torch_reference(_module(modules, tiny, "unet"), "unet", inputs)[0]
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 2e-2


def test_cli_build_engines(tiny, engine_dir, entries, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["build-engines", "--models", str(tiny.root), "--engine-dir", str(engine_dir), "--engines", "face_projector", "imr"]
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "face_projector" in out and "imr" in out and out.count("reused") == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["build-engines", "--models", str(tiny.root), "--precision", "int8"])


@pytest.mark.slow
def test_full_size_unet_exports_with_external_data(tmp_path):
    """SD1.5-width UNet with random weights (3.4 GB in fp32): external data, ORT CPU vs torch."""
    from diffusers import UNet2DConditionModel

    from dynamicid_rt.models.saa import install_saa

    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
    processors = _random_saa_processors(unet, rank=128, context=768)
    module = install_saa(unet, processors, source="random").eval()
    dims = ModelDims()
    out = onnx_export.export_engine(module, ENGINES["unet"], dims, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx.data").stat().st_size > 2**31
    assert out.stat().st_size < 2**27
    inputs = _inputs("unet", dims, {"B": 2, "h": 32, "w": 32, "N": 2, "M": 2}, 3)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    ref = _torch_reference(module, "unet", inputs)[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4


def _random_saa_processors(unet, rank: int, context: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.rsplit(".", 1)[0])
        for proj, layer in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0])):
            out[f"{i}.{proj}_lora.down.weight"] = torch.randn(rank, layer.in_features, generator=gen) * 0.01
            out[f"{i}.{proj}_lora.up.weight"] = torch.randn(layer.out_features, rank, generator=gen) * 0.01
        if attn.is_cross_attention:
            out[f"{i}.to_k_ip.weight"] = torch.randn(attn.to_k.out_features, context, generator=gen) * 0.02
            out[f"{i}.to_v_ip.weight"] = torch.randn(attn.to_v.out_features, context, generator=gen) * 0.02
    return out
