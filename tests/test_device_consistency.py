"""Every tensor a module makes follows its inputs' device and dtype.

The ``meta`` device stands in for CUDA on this CPU-only machine: a tensor made on the CPU inside a
module (a size, a mask, a constant) meets a meta input and fails exactly where it would fail on a
GPU, and a host round trip (``.item()``, a Python branch on a value) fails too. The runs go through
the backend's own module loading, input conversion and bound UNet step, as on CUDA. The reduced
precisions run on the CPU against the fp32 modules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dynamicid_rt.backends.torch_backend import TorchBackend
from dynamicid_rt.backends.torch_bound import STEP_INPUTS, BoundUNet
from dynamicid_rt.contract import ENGINES
from dynamicid_rt.models.engines import load_engine_module
from dynamicid_rt.modelfiles.paths import ModelPaths

ENGINE_POINTS = {
    "unet": {"B": 2, "h": 24, "w": 40, "N": 2, "M": 2},
    "face_projector": {"B": 2},
    "imr": {},
}


@pytest.fixture(scope="module")
def paths(tiny_bundle) -> ModelPaths:
    return ModelPaths.from_folder(tiny_bundle)


@pytest.fixture(scope="module")
def meta_backend(paths) -> TorchBackend:
    return TorchBackend(paths, device="meta", precision="fp32")


def _inputs(backend: TorchBackend, engine: str, module: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    arrays = ENGINES[engine].sample_inputs(backend.dims, seed=seed, **ENGINE_POINTS[engine])
    return {name: backend._tensor(ENGINES[engine], name, arrays[name], module) for name in ENGINES[engine].input_names}


@pytest.mark.parametrize("engine", ENGINE_POINTS)
def test_engines_run_on_the_meta_device(meta_backend, engine):
    module = meta_backend.module(engine)
    assert {p.device.type for p in module.parameters()} == {"meta"}
    inputs = _inputs(meta_backend, engine, module)
    with torch.inference_mode():
        out = module(*inputs.values())
    spec_out = ENGINES[engine].shapes(meta_backend.dims, **ENGINE_POINTS[engine])
    name = ENGINES[engine].output_names[0]
    assert out.device.type == "meta" and tuple(out.shape) == spec_out[name]


def test_bound_unet_and_activation_maps_on_the_meta_device(meta_backend):
    module = meta_backend.module("unet")
    inputs = _inputs(meta_backend, "unet", module)
    bound = BoundUNet(module, {k: v for k, v in inputs.items() if k not in STEP_INPUTS})
    out = bound.step(*(inputs[k] for k in STEP_INPUTS))
    assert out.device.type == "meta" and out.shape == inputs["sample"].shape
    # The prepared masks and projections live on the inputs' device too.
    _, saa = bound._prepared
    tensors = [saa.token_scale, saa.token_mix, saa.gate] + [t for pair in saa.levels.values() for t in pair]
    tensors += [t for pair in saa.token_kv.values() for t in pair]
    assert {t.device.type for t in tensors} == {"meta"}
    with torch.inference_mode():
        maps = module.activation_maps(*inputs.values())
    assert maps.device.type == "meta" and tuple(maps.shape) == (2, 2, 24, 40)


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


# bf16 keeps 8 mantissa bits (rounding ~4e-3 per op), fp16 11 bits (~5e-4); errors add up over the layers.
@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("engine", ENGINE_POINTS)
def test_reduced_precision_on_cpu_matches_fp32(paths, engine, dtype, tolerance):
    reference = TorchBackend(paths, device="cpu", precision="fp32")
    arrays = ENGINES[engine].sample_inputs(reference.dims, seed=2, **ENGINE_POINTS[engine])
    ref = reference.run(engine, arrays)
    module = load_engine_module(paths, engine, dtype=dtype, device="cpu")
    inputs = [reference._tensor(ENGINES[engine], name, arrays[name], module) for name in ENGINES[engine].input_names]
    with torch.inference_mode():
        out = module(*inputs)
    assert out.dtype == dtype  # activations in the module's precision, control inputs made to follow
    got = out.float().numpy()
    assert np.isfinite(got).all()
    name = ENGINES[engine].output_names[0]
    err = _rel(got, ref[name])
    assert err < tolerance, f"{engine} in {dtype}: relative error {err:.2e}"
    assert err > 0  # really ran in reduced precision
