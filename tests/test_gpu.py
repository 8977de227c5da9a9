"""GPU checks (``python -m pytest -m gpu``): the CUDA paths against the CPU fp32 reference.

Deselected by default and skipped where no CUDA device is visible; the CI machine has none.
"""
from __future__ import annotations

import numpy as np
import pytest

from dynamicid_rt.contract import ENGINES

pytestmark = pytest.mark.gpu


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _ort_cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.mark.skipif(not _cuda_available(), reason="no CUDA device visible to torch")
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_torch_cuda_engines_match_cpu(tiny_bundle, precision, tolerance):
    from dynamicid_rt.backends.torch_backend import TorchBackend
    from dynamicid_rt.paths import ModelPaths

    paths = ModelPaths.from_folder(tiny_bundle)
    cpu = TorchBackend(paths, device="cpu", precision="fp32")
    gpu = TorchBackend(paths, device="cuda", precision=precision)
    for engine, spec in ENGINES.items():
        point = {"h": 32, "w": 40, "N": 3, "M": 3} if engine == "unet" else {"h": 32, "w": 40} if engine == "vae_decoder" else {}
        inputs = spec.sample_inputs(cpu.dims, seed=1, **point)
        ref, out = cpu.run(engine, inputs), gpu.run(engine, inputs)
        for name in spec.output_names:
            assert np.all(np.isfinite(out[name])), (engine, name)
            assert _rel(out[name], ref[name]) < tolerance, (engine, name)


@pytest.mark.skipif(not _ort_cuda_available(), reason="onnxruntime-gpu with the CUDA provider is not installed")
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_onnxruntime_cuda_matches_cpu(tiny_bundle, tiny_engines, tmp_path, precision, tolerance):
    from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend
    from dynamicid_rt.paths import ModelPaths

    paths = ModelPaths.from_folder(tiny_bundle)
    cpu = OnnxRuntimeBackend(paths, device="cpu", engine_dir=tiny_engines)
    gpu = OnnxRuntimeBackend(paths, device="cuda", precision=precision, engine_dir=tmp_path / "engines")
    inputs = ENGINES["unet"].sample_inputs(cpu.dims, seed=2, h=32, w=32, N=2, M=2)
    constant = {k: v for k, v in inputs.items() if k not in ("sample", "timestep", "id_boost")}
    step = gpu.bind("unet", constant)
    out = step({k: inputs[k] for k in ("sample", "timestep", "id_boost")})["noise_pred"]
    assert _rel(out, cpu.run("unet", inputs)["noise_pred"]) < tolerance
