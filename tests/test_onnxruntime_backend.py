"""The ONNX Runtime backend: contract names, parity with PyTorch, IOBinding, and no torch at inference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend
from dynamicid_rt.contract import ENGINES
from dynamicid_rt.errors import DynamicIDError
from dynamicid_rt.export import build_engines
from dynamicid_rt.models import load_engine_module
from dynamicid_rt.models.base import read_model_dims
from dynamicid_rt.tiny.bundle import write_tiny_bundle


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_bundle(tmp_path_factory.getbasetemp() / "tiny-bundle")


@pytest.fixture(scope="module")
def engine_dir(tiny, tmp_path_factory):
    # The same folder as test_export_onnx.py: engines are built once per session.
    folder = tmp_path_factory.getbasetemp() / "engines"
    build_engines(tiny, folder)
    return folder


@pytest.fixture(scope="module")
def backend(tiny, engine_dir):
    b = OnnxRuntimeBackend(tiny, device="cpu", engine_dir=engine_dir)
    yield b
    b.close()


def _torch_run(tiny, engine, inputs):
    module = load_engine_module(tiny, engine, torch.float32, "cpu")
    with torch.no_grad():
        out = module(*(torch.from_numpy(inputs[n]) for n in ENGINES[engine].input_names))
    return [t.numpy() for t in ((out,) if isinstance(out, torch.Tensor) else out)]


def _rel(a, b):
    return np.abs(a.astype(np.float64) - b).max() / np.abs(b).max()


def test_backend_describes_itself_and_reads_dims_from_the_cache(backend, tiny):
    assert backend.dims == read_model_dims(tiny)
    assert backend.has_imr == tiny.has_imr
    info = backend.describe()
    assert info["backend"] == "onnxruntime" and info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["providers"] == "CPUExecutionProvider"


@pytest.mark.parametrize("engine", ["face_projector", "imr", "text_encoder"])
def test_run_returns_contract_outputs_matching_torch(backend, tiny, engine):
    inputs = ENGINES[engine].sample_inputs(backend.dims, seed=5)
    out = backend.run(engine, inputs)
    assert list(out) == ENGINES[engine].output_names  # imr's output is edited_tokens (contract v2)
    ref = _torch_run(tiny, engine, inputs)
    for name, r in zip(ENGINES[engine].output_names, ref):
        assert out[name].shape == r.shape and out[name].dtype == np.float32
        assert _rel(out[name], r) <= 1e-4


def test_bind_keeps_constants_and_matches_run(backend):
    # run() itself is checked against PyTorch above and in test_export_onnx.py; the bound call must
    # give the same numbers while the constants stay bound across calls.
    point = {"B": 2, "h": 32, "w": 40, "N": 2, "M": 2}
    base = ENGINES["unet"].sample_inputs(backend.dims, seed=3, **point)
    constants = {k: base[k] for k in ("encoder_hidden_states", "id_tokens", "id_boxes", "id_scale", "id_gating", "id_mix")}
    call = backend.bind("unet", constants)
    rng = np.random.default_rng(0)
    previous = None
    for t, boost in [(900.0, 4.0), (500.0, 4.0), (100.0, 0.0)]:
        varying = {
            "sample": rng.standard_normal(base["sample"].shape).astype(np.float32),
            "timestep": np.full(2, t, np.float32),
            "id_boost": np.array([boost], np.float32),
        }
        bound = call(varying)["noise_pred"]
        direct = backend.run("unet", {**constants, **varying})["noise_pred"]
        assert bound.shape == (2, 4, 32, 40)
        np.testing.assert_allclose(bound, direct, rtol=0, atol=1e-6)
        assert previous is None or not np.allclose(bound, previous)  # the varying inputs do reach the graph
        previous = bound
    with pytest.raises(KeyError, match="sample"):
        call({"timestep": np.full(2, 1.0, np.float32), "id_boost": np.zeros(1, np.float32)})
    with pytest.raises(KeyError, match="no input"):
        backend.bind("unet", {"latents": base["sample"]})


def test_bad_device_precision_and_engine(tiny, engine_dir, backend):
    with pytest.raises(DynamicIDError, match="onnxruntime-gpu"):
        OnnxRuntimeBackend(tiny, device="cuda", engine_dir=engine_dir)
    with pytest.raises(DynamicIDError, match="precision"):
        OnnxRuntimeBackend(tiny, device="cpu", precision="int8", engine_dir=engine_dir)
    with pytest.raises(DynamicIDError, match="device"):
        OnnxRuntimeBackend(tiny, device="tpu", engine_dir=engine_dir)
    with pytest.raises(KeyError):
        backend.run("controlnet", {})
    with pytest.raises(KeyError, match="id_embeds"):
        backend.run("face_projector", {"clip_hidden": np.zeros((1, 257, backend.dims.clip_width), np.float32)})


def test_runs_without_torch_on_prebuilt_engines(tiny, engine_dir):
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend
        from dynamicid_rt.contract import ENGINES
        from dynamicid_rt.modelfiles.paths import ModelPaths

        backend = OnnxRuntimeBackend(ModelPaths.from_folder({str(tiny.root)!r}), device="cpu", engine_dir={str(engine_dir)!r})
        shapes = {{}}
        for engine in ENGINES:
            point = {{"h": 32, "w": 32}} if ENGINES[engine].sized else {{}}
            out = backend.run(engine, ENGINES[engine].sample_inputs(backend.dims, **point))
            shapes[engine] = {{k: list(v.shape) for k, v in out.items()}}
        inputs = ENGINES["unet"].sample_inputs(backend.dims, h=32, w=32)
        call = backend.bind("unet", {{k: inputs[k] for k in ("encoder_hidden_states", "id_tokens", "id_boxes")}})
        call(inputs)
        print(json.dumps({{"torch": "torch" in sys.modules, "diffusers": "diffusers" in sys.modules, "shapes": shapes}}))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["diffusers"] is False
    c = read_model_dims(tiny).context_dim
    assert report["shapes"]["unet"]["noise_pred"] == [2, 4, 32, 32]
    assert report["shapes"]["imr"]["edited_tokens"] == [1, 4, c]
    assert report["shapes"]["vae_decoder"]["image"] == [1, 3, 256, 256]
    assert report["shapes"]["vae_encoder"]["latent"] == [1, 4, 32, 32]


def test_missing_engine_is_built_on_load(tiny, engine_dir, tmp_path):
    import shutil

    shutil.copytree(engine_dir, tmp_path / "engines")
    shutil.rmtree(tmp_path / "engines" / "face_projector-fp32")
    b = OnnxRuntimeBackend(tiny, device="cpu", engine_dir=tmp_path / "engines")
    assert (tmp_path / "engines" / "face_projector-fp32" / "manifest.json").is_file()
    out = b.run("face_projector", ENGINES["face_projector"].sample_inputs(b.dims))
    assert out["id_tokens"].shape == (1, 4, b.dims.context_dim)
