"""The TensorRT backend for real (``python -m pytest -m tensorrt``): needs TensorRT, cuda-python and an
NVIDIA GPU. Deselected by default; skipped where any is missing (CI has none of them).

TensorRT fp16 against ONNX Runtime CPU fp32 on the tiny bundle, from the same seed: PSNR >= 35 dB,
with the dynamic plans, and with static plans replayed as CUDA graphs.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from dynamicid_rt import Pipeline, Request
from dynamicid_rt.backends import probes

pytestmark = pytest.mark.tensorrt

if not (probes.installed("tensorrt") and probes.installed("cuda") and probes.cuda_device_count()):
    pytest.skip("needs TensorRT, cuda-python and an NVIDIA GPU", allow_module_level=True)


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
    with Pipeline.load(tiny_bundle, backend="onnxruntime", device="cpu", precision="fp32", engine_dir=tiny_engines,
                       cache_dir=tmp_path_factory.mktemp("ort")) as pipe:
        return _image(pipe, samples, 256)


@pytest.fixture(scope="module")
def trt_engine_dir(tiny_engines, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt") / "engines"
    shutil.copytree(tiny_engines, folder)
    return folder


def test_tensorrt_fp16_matches_onnxruntime_cpu_fp32(tiny_bundle, trt_engine_dir, samples, reference, tmp_path):
    with Pipeline.load(tiny_bundle, backend="tensorrt", device="cuda", precision="fp16", engine_dir=trt_engine_dir,
                       cache_dir=tmp_path) as pipe:
        assert pipe.backend.name == "tensorrt"
        image = _image(pipe, samples, 256)
    assert _psnr(image, reference) >= 35.0


def test_static_plans_with_cuda_graphs_match_onnxruntime(tiny_bundle, trt_engine_dir, samples, reference, tmp_path):
    from dynamicid_rt.engines.build import build_plans
    from dynamicid_rt.engines.profiles import StaticSize
    from dynamicid_rt.paths import ModelPaths

    plans = build_plans(ModelPaths.from_folder(tiny_bundle), trt_engine_dir, "fp16", ["unet", "vae_decoder"],
                        static=StaticSize(256, 256))
    assert {p.tag for p in plans} == {"dynamic", "static-256x256"}
    with Pipeline.load(tiny_bundle, backend="tensorrt", device="cuda", engine_dir=trt_engine_dir, cache_dir=tmp_path) as pipe:
        assert pipe.backend.describe()["static plans"] == "static-256x256"
        image = _image(pipe, samples, 256)
        assert pipe.backend.engines["unet"][0].graph is not None  # the UNet steps were replayed as a graph
    assert _psnr(image, reference) >= 35.0
