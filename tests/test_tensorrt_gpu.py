"""The TensorRT backends for real (``python -m pytest -m tensorrt``): need a TensorRT library,
cuda-python and an NVIDIA GPU. Deselected by default; skipped where any is missing (CI has no GPU).

TensorRT (data-center 10/11) and TensorRT-RTX fp16 against ONNX Runtime CPU fp32 on the tiny bundle,
from the same seed: PSNR >= 35 dB, with the dynamic plans, and with static plans (our CUDA-graph
replay on TensorRT, the library's own on TensorRT-RTX). On TensorRT-RTX the runtime cache is saved
after the first generation and loaded by the next pipeline. On a GPU that TensorRT-RTX does not
target (H100/H200, sm90), a test records what ``ComputeCapability.CURRENT`` and
``get_engine_validity`` say there.
"""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from dynamicid_rt import Pipeline, Request
from dynamicid_rt.backends import probes

pytestmark = pytest.mark.tensorrt

if not (probes.installed("cuda") and probes.cuda_device_count()):
    pytest.skip("needs cuda-python and an NVIDIA GPU", allow_module_level=True)

_LIBRARY_MODULE = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}


def _usable(backend: str) -> bool:
    return probes.installed(_LIBRARY_MODULE[backend]) and (backend != "tensorrt-rtx" or bool(probes.tensorrt_rtx_devices()))


BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(not _usable(b), reason=f"{b}: library or target GPU missing"))
            for b in _LIBRARY_MODULE]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _image(pipe: Pipeline, samples, size: int) -> np.ndarray:
    people = [pipe.encode_identity(samples / "person_a.png"), pipe.encode_identity(samples / "person_b.png")]
    request = Request(prompt="two people at the beach", identities=people, width=size, height=size, steps=4,
                      seed=123, sampler="dpmpp_2m")
    return np.asarray(pipe.generate(request).images[0])


@pytest.fixture(scope="module")
def reference(tiny_bundle, tiny_engines, samples, tmp_path_factory) -> np.ndarray:
    with Pipeline.load(tiny_bundle, backend="onnxruntime", device="cpu", precision="fp32", onnx_cache=tiny_engines,
                       cache_dir=tmp_path_factory.mktemp("ort")) as pipe:
        return _image(pipe, samples, 256)


@pytest.fixture
def trt_engine_dir(tiny_engines, tmp_path):
    folder = tmp_path / "engines"
    shutil.copytree(tiny_engines, folder)
    return folder


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_matches_onnxruntime_cpu_fp32(backend, tiny_bundle, trt_engine_dir, samples, reference, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dynamicid_rt"):
        with Pipeline.load(tiny_bundle, backend=backend, device="cuda", precision="fp16", onnx_cache=trt_engine_dir,
                           cache_dir=tmp_path) as pipe:
            assert pipe.backend.name == backend
            image = _image(pipe, samples, 256)
    assert _psnr(image, reference) >= 35.0
    if backend == "tensorrt-rtx":
        assert "runtime cache saved for" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dynamicid_rt.engines"):
            with Pipeline.load(tiny_bundle, backend=backend, device="cuda", onnx_cache=trt_engine_dir, cache_dir=tmp_path) as pipe:
                again = _image(pipe, samples, 256)
        assert "runtime cache" in caplog.text and "loaded" in caplog.text
        assert _psnr(again, reference) >= 35.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_plans_match_onnxruntime(backend, tiny_bundle, trt_engine_dir, samples, reference, tmp_path):
    from dynamicid_rt.engines.build import build_plans
    from dynamicid_rt.engines.cuda import gpu_here
    from dynamicid_rt.engines.library import load
    from dynamicid_rt.engines.profiles import StaticSize
    from dynamicid_rt.modelfiles.paths import ModelPaths

    plans = build_plans(ModelPaths.from_folder(tiny_bundle), trt_engine_dir, "fp16", ["unet", "vae_decoder"],
                        static=StaticSize(256, 256), lib=load(backend), gpu=gpu_here())
    assert {p.tag for p in plans} == {"dynamic", "static-256x256"}
    with Pipeline.load(tiny_bundle, backend=backend, device="cuda", onnx_cache=trt_engine_dir, cache_dir=tmp_path) as pipe:
        assert pipe.backend.describe()["static plans"] == "static-256x256"
        image = _image(pipe, samples, 256)
        if backend == "tensorrt":
            assert pipe.backend.engines["unet"][0].graph is not None  # our CUDA graph replayed the UNet steps
    assert _psnr(image, reference) >= 35.0


@pytest.mark.skipif(not probes.installed("tensorrt_rtx_bindings"), reason="needs TensorRT-RTX")
def test_what_tensorrt_rtx_says_on_this_gpu(tiny_bundle, tiny_engines, tmp_path, record_property):
    """Whatever the GPU: build one small plan for CURRENT (this GPU) and for the default targets, and
    record ``get_engine_validity`` for each (on sm90 the defaults are expected to be INVALID)."""
    from dynamicid_rt.contract import ENGINES
    from dynamicid_rt.engines.builder import make_logger, parse_network
    from dynamicid_rt.engines.cuda import gpu_here
    from dynamicid_rt.engines.library import load
    from dynamicid_rt.engines.profiles import engine_profile
    from dynamicid_rt.export.cache import build_engines
    from dynamicid_rt.modelfiles.paths import ModelPaths

    lib, gpu = load("tensorrt-rtx"), gpu_here()
    trt = lib.trt
    entry = build_engines(ModelPaths.from_folder(tiny_bundle), tiny_engines, "fp32", ["face_projector"])[0]
    found = {}
    for label, targets in (("CURRENT", [trt.ComputeCapability.CURRENT]), ("defaults", None)):
        logger = make_logger(trt)
        builder = trt.Builder(logger)
        network, _parser = parse_network(lib, builder, logger, entry.onnx, "face_projector")
        config = builder.create_builder_config()
        if targets:
            config.num_compute_capabilities = 1
            config.set_compute_capability(targets[0], 0)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in engine_profile(ENGINES["face_projector"], entry.dims).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        found[label] = "build failed: " + "; ".join(logger.errors) if plan is None else str(
            trt.Runtime(make_logger(trt)).get_engine_validity(bytes(plan))
        )
    record_property("tensorrt_rtx_on_this_gpu", f"{gpu.name} sm {gpu.compute_capability}: {found}")
    print(f"TensorRT-RTX {lib.version} on {gpu.name} (sm {gpu.compute_capability}): {found}")
    assert set(found) == {"CURRENT", "defaults"}
