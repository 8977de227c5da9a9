"""Adding a seventh engine touches the contract and its recipe only.

A dummy engine (one linear layer over one input, its weights in a file of its own) is declared with
an ``EngineSpec`` and added with ``register_engine``; nothing else learns its name. The real
exporter must then build and reuse its cache entry, and the ONNX Runtime and torch backends must run
it, matching the layer computed here from the weight file. A consumer that still lists the engines
by hand (sources, loaders, the engines a backend opens) fails this test.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from dynamicid_rt.contract import ENGINES, Axis, EngineSpec, TensorSpec, register_engine
from dynamicid_rt.modelfiles.paths import ModelPaths

NAME = "seventh"
FEATURES = 8
WEIGHTS = "linear.safetensors"

SPEC = EngineSpec(
    NAME,
    inputs=(TensorSpec("features", ("B", FEATURES)),),
    outputs=(TensorSpec("projected", ("B", FEATURES)),),
    axes=(Axis("B", 1, 2, 4),),
    loader=f"{__name__}:load_seventh",
    sources=(f"base/{NAME}",),
)


def load_seventh(paths: ModelPaths, dtype: torch.dtype, device: str | torch.device) -> torch.nn.Module:
    """The seventh engine's loader, as the contract names it: a linear layer read from its source file."""
    state = load_file(str(paths.source(f"base/{NAME}") / WEIGHTS))
    layer = torch.nn.Linear(FEATURES, FEATURES)
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return layer.to(device=device, dtype=dtype)


@pytest.fixture
def seventh():
    register_engine(SPEC)
    try:
        yield SPEC
    finally:
        ENGINES.pop(NAME)


@pytest.fixture
def folder(tiny_bundle, tiny_engines, tmp_path) -> tuple[ModelPaths, Path, dict[str, np.ndarray]]:
    """A copy of the tiny bundle with the seventh engine's weights, and a copy of its engine cache."""
    root = tmp_path / "models"
    shutil.copytree(tiny_bundle, root)
    rng = np.random.default_rng(7)
    weights = {"weight": rng.standard_normal((FEATURES, FEATURES)).astype(np.float32),
               "bias": rng.standard_normal(FEATURES).astype(np.float32)}
    (root / "base" / NAME).mkdir()
    save_file(weights, str(root / "base" / NAME / WEIGHTS))
    engine_dir = tmp_path / "engines"
    shutil.copytree(tiny_engines, engine_dir)
    return ModelPaths.from_folder(root), engine_dir, weights


def test_register_refuses_a_taken_name_and_a_bad_loader(seventh):
    with pytest.raises(ValueError, match="already"):
        register_engine(SPEC)
    with pytest.raises(ValueError, match="module:function"):
        register_engine(EngineSpec("eighth", SPEC.inputs, SPEC.outputs, SPEC.axes, loader="no colon"))
    assert "eighth" not in ENGINES


def test_seventh_engine_is_exported_cached_and_run(seventh, folder):
    from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend
    from dynamicid_rt.backends.torch_backend import TorchBackend
    from dynamicid_rt.export import build_engines, cache

    paths, engine_dir, weights = folder
    assert NAME in cache.default_engines(paths)
    assert cache.source_files(paths, NAME) == [paths.base / NAME / WEIGHTS]

    (built,) = build_engines(paths, engine_dir, engines=[NAME])
    assert not built.reused and built.onnx.is_file() and built.manifest["engine"] == NAME
    manifest, why = cache.check_entry(built.path, cache.expected_manifest(paths, NAME, "fp32"), verify=True)
    assert manifest is not None, why
    (again,) = build_engines(paths, engine_dir, engines=[NAME])
    assert again.reused and again.path == built.path

    x = np.random.default_rng(3).standard_normal((3, FEATURES)).astype(np.float32)
    reference = x @ weights["weight"].T + weights["bias"]  # the layer, computed from the weight file
    backend = OnnxRuntimeBackend(paths, device="cpu", precision="fp32", engine_dir=engine_dir)
    try:
        out = backend.run(NAME, {"features": x})
        np.testing.assert_allclose(out["projected"], reference, rtol=1e-5, atol=1e-5)
        bound = backend.bind(NAME, {})({"features": x})
        np.testing.assert_array_equal(bound["projected"], out["projected"])
        with pytest.raises(KeyError, match="features"):
            backend.run(NAME, {})
    finally:
        backend.close()

    torch_backend = TorchBackend(paths, device="cpu", precision="fp32")
    try:
        np.testing.assert_allclose(torch_backend.run(NAME, {"features": x})["projected"], reference, rtol=1e-5, atol=1e-5)
    finally:
        torch_backend.close()
