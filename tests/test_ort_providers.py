"""ONNX Runtime providers are verified, not assumed; TensorRT is opt-in; the VAE stays fp32 in
fp16 caches and a decode that overflows is retried in fp32.

This machine has CPU-only onnxruntime. A GPU wheel whose CUDA libraries fail to load is simulated
by listing CUDA (and TensorRT) in ``get_available_providers`` while the real session gets only the
CPU provider, which is what ORT does in that case. These tests check our side: the options we pass,
the check after the session is created and the error a user sees.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from dynamicid_rt.backends.ort_providers import CPU, CUDA, TENSORRT, ProviderError
from dynamicid_rt.contract import ENGINES
from dynamicid_rt.export import build_engines
from dynamicid_rt.modelfiles.paths import ModelPaths

ort = pytest.importorskip("onnxruntime")


@pytest.fixture()
def gpu_wheel_without_libraries(monkeypatch):
    """ORT lists GPU providers it cannot load; records the sessions created (path, options, providers)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    sessions = []
    real = ort.InferenceSession

    def session(path, options=None, providers=None, **kwargs):
        sessions.append((path, options, providers))
        return real(path, options, providers=[CPU])  # what ORT falls back to when CUDA cannot load

    monkeypatch.setattr(ort, "InferenceSession", session)
    return sessions


def _backend(tiny_bundle, tiny_engines, **kwargs):
    from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(ModelPaths.from_folder(tiny_bundle), engine_dir=tiny_engines, precision="fp32", **kwargs)


def test_cuda_that_cannot_load_is_a_clear_error_not_a_cpu_run(tiny_bundle, tiny_engines, gpu_wheel_without_libraries):
    backend = _backend(tiny_bundle, tiny_engines, device="cuda:1")
    inputs = ENGINES["text_encoder"].sample_inputs(backend.dims, seed=0)
    with pytest.raises(ProviderError) as info:
        backend.run("text_encoder", inputs)
    message = str(info.value)
    assert "\n" not in message and "could not load the CUDA provider" in message
    assert "cuDNN" in message and "--device cpu" in message and "CPUExecutionProvider" in message
    (_, options, providers), = gpu_wheel_without_libraries
    assert options.log_severity_level == 2  # ORT's own reason for the failure reaches the user
    # cuda:1 is honoured, and TensorRT was not asked for.
    assert providers == [(CUDA, {"device_id": 1}), CPU]


def test_tensorrt_is_opt_in_and_checked(tiny_bundle, tiny_engines, gpu_wheel_without_libraries, caplog):
    backend = _backend(tiny_bundle, tiny_engines, device="cuda", trt_provider=True)
    inputs = ENGINES["text_encoder"].sample_inputs(backend.dims, seed=0)
    with caplog.at_level(logging.WARNING), pytest.raises(ProviderError, match="could not load the TensorRT provider"):
        backend.run("text_encoder", inputs)
    assert "TensorRT builds its engine" in caplog.text  # said before the long build, not after
    (_, _, providers), = gpu_wheel_without_libraries
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == [TENSORRT, CUDA, CPU]
    trt_options = providers[0][1]
    assert trt_options["device_id"] == 0 and not any(k.startswith("trt_profile") for k in trt_options)


def test_tensorrt_needs_cuda_and_the_provider(tiny_bundle, tiny_engines, monkeypatch):
    with pytest.raises(ProviderError, match="CUDA devices only"):
        _backend(tiny_bundle, tiny_engines, device="cpu", trt_provider=True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with pytest.raises(ProviderError, match="lacks"):
        _backend(tiny_bundle, tiny_engines, device="cuda", trt_provider=True)


def _float_types(path) -> set[int]:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    values = list(g.input) + list(g.value_info) + list(g.output)
    types = {v.type.tensor_type.elem_type for v in values} | {i.data_type for i in g.initializer}
    return types & {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


def test_vae_is_fp32_in_every_cache_variant(tiny_bundle, tiny_engines):
    paths = ModelPaths.from_folder(tiny_bundle)
    (vae32,) = build_engines(paths, tiny_engines, "fp32", ["vae_decoder"])
    (vae16,) = build_engines(paths, tiny_engines, "fp16", ["vae_decoder"])
    assert vae32.manifest["graph_precision"] == "fp32" and vae16.manifest["graph_precision"] == "fp32"
    assert _float_types(vae16.onnx) == {onnx.TensorProto.FLOAT}
    (unet16,) = build_engines(paths, tiny_engines, "fp16", ["unet"])
    assert unet16.manifest["graph_precision"] == "fp16" and onnx.TensorProto.FLOAT16 in _float_types(unet16.onnx)


def test_torch_fp32_retry_of_a_reduced_precision_vae(tiny_bundle):
    from dynamicid_rt.backends.torch_backend import TorchBackend

    paths = ModelPaths.from_folder(tiny_bundle)
    inputs = ENGINES["vae_decoder"].sample_inputs(TorchBackend(paths, "cpu", "fp32").dims, seed=3)
    bf16 = TorchBackend(paths, device="cpu", precision="bf16")
    reference = TorchBackend(paths, device="cpu", precision="fp32").run("vae_decoder", inputs)["image"]
    assert np.array_equal(bf16.run_fp32("vae_decoder", inputs)["image"], reference)
    assert not np.array_equal(bf16.run("vae_decoder", inputs)["image"], reference)  # bf16 really is bf16


def test_decode_with_nan_is_retried_once_in_fp32(monkeypatch, tiny_pipeline, caplog):
    from dynamicid_rt import Request

    request = Request(prompt="x", width=256, height=256, steps=1, seed=2, sampler="euler")
    expected = np.asarray(tiny_pipeline.generate(request).images[0])
    run = tiny_pipeline.backend.run
    overflowed = []

    def overflowing_vae(engine, inputs):
        out = run(engine, inputs)
        if engine == "vae_decoder" and not overflowed:
            overflowed.append(True)
            out = {"image": np.full_like(out["image"], np.nan)}
        return out

    retries = []
    monkeypatch.setattr(tiny_pipeline.backend, "run", overflowing_vae)
    monkeypatch.setattr(tiny_pipeline.backend, "run_fp32", lambda engine, inputs: retries.append(engine) or run(engine, inputs))
    with caplog.at_level(logging.WARNING):
        image = np.asarray(tiny_pipeline.generate(request).images[0])
    assert retries == ["vae_decoder"] and "again in fp32" in caplog.text
    assert np.array_equal(image, expected)
