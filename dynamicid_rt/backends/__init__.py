"""Backends run the engines of the contract behind one interface (:class:`Backend`).

Each backend is declared once below by a :class:`BackendInfo` (see ``registry.py`` for the fields):
the registry imports a backend's module only when :func:`create_backend` builds it, so that the
ONNX Runtime and OpenVINO paths never import torch. A new backend needs its module and one
``register(...)`` line here; ``create_backend``, auto, the CLI, ``doctor`` and the desktop read the
declarations. ``precisions`` is the only list of what a backend runs: a new precision for one
backend is one more name in its tuple here (the backend's constructor then has to run it).
"""
from __future__ import annotations

from . import probes
from .base import Backend
from .registry import (
    AUTO, BACKEND_OPTIONS, BACKENDS, AutoChoice, BackendInfo, BackendOption, backend_info, choose_auto, create_backend,
    precision_choices, register, resolve, supports,
)

register(BackendInfo(
    name="torch",
    target="dynamicid_rt.backends.torch_backend:TorchBackend",
    extra="torch",
    requires=("torch", "diffusers"),
    precisions={"cpu": ("fp32", "bf16"), "cuda": ("fp16", "fp32", "bf16")},
    devices=probes.torch_devices,
    options=("device", "precision", "cuda_graphs"),
    capabilities=frozenset({"activation_maps", "device_bind"}),
    auto_rank={"cuda": 25, "cpu": 50},
))
register(BackendInfo(
    name="onnxruntime",
    target="dynamicid_rt.backends.onnxruntime_backend:OnnxRuntimeBackend",
    extra="cpu",
    requires=("onnxruntime",),
    precisions={"cpu": ("fp32",), "cuda": ("fp16", "fp32")},
    devices=probes.onnxruntime_devices,
    options=("device", "precision", "engine_dir", "build_progress", "trt_provider"),
    capabilities=frozenset({"device_bind"}),
    auto_rank={"cuda": 20, "cpu": 40},
))
register(BackendInfo(
    name="tensorrt",
    target="dynamicid_rt.backends.tensorrt_backend:TensorRTBackend",
    extra="tensorrt",
    requires=("tensorrt", "cuda"),  # cuda: cuda-python, for device buffers and CUDA graphs
    precisions={"cuda": ("fp16", "fp32")},
    devices=probes.cuda_only,
    options=("device", "precision", "engine_dir", "build_progress"),
    capabilities=frozenset({"device_bind"}),
    auto_rank={"cuda": 10},
    # TensorRT's wheels are per CUDA major; `dynamicid-rt doctor` names the one for this machine.
    install_hint="pip install 'dynamicid-rt[tensorrt]' tensorrt-cu12 (CUDA 12) or tensorrt-cu13 (CUDA 13)",
    preferred_over={
        "tensorrt-rtx": "data-center TensorRT tunes every kernel for this GPU when it builds, TensorRT-RTX compiles "
        "portable plans just in time",
    },
))
register(BackendInfo(
    name="tensorrt-rtx",
    target="dynamicid_rt.backends.tensorrt_backend:TensorRTRTXBackend",
    extra="tensorrt-rtx",
    requires=("tensorrt_rtx_bindings", "cuda"),  # the -bindings wheel's module; cuda: cuda-python
    precisions={"cuda": ("fp16", "fp32")},
    devices=probes.tensorrt_rtx_devices,
    options=("device", "precision", "engine_dir", "build_progress"),
    capabilities=frozenset({"device_bind"}),
    auto_rank={"cuda": 12},
    install_hint="pip install 'dynamicid-rt[tensorrt-rtx]' (CUDA 13) or 'dynamicid-rt[tensorrt-rtx-cu12]' (CUDA 12)",
    no_device_hint=probes.tensorrt_rtx_no_device,
))
register(BackendInfo(
    name="openvino",
    target="dynamicid_rt.backends.openvino_backend:OpenVinoBackend",
    extra="openvino",
    requires=("openvino",),
    # bf16 first: OpenVINO's own default on CPUs with bf16 units (offered only there), ~1.8x f32;
    # fp32 elsewhere or when asked. int8w: the UNet's weights in 8 bits (NNCF), opt-in.
    precisions={"cpu": ("bf16", "fp32", "int8w")},
    options=("device", "precision", "engine_dir", "build_progress"),
    capabilities=frozenset({"device_bind"}),
    auto_rank={"cpu": 30},
))

__all__ = [
    "AUTO", "BACKEND_OPTIONS", "BACKENDS", "AutoChoice", "Backend", "BackendInfo", "BackendOption", "backend_info",
    "choose_auto", "create_backend", "precision_choices", "register", "resolve", "supports",
]
