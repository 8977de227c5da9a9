"""ONNX Runtime execution providers: what a session asks for, and proof that it got it.

``onnxruntime.get_available_providers()`` lists CUDA and TensorRT for any onnxruntime-gpu wheel,
whether their libraries load or not; when they don't, ORT logs the failure and quietly runs the
session on the CPU. So every session is checked after it is created (:func:`check_session`): a
provider asked for and missing from ``session.get_providers()`` is a one-line error saying what
failed to load and how to fix it, never a silent CPU run. TensorRT is used only when asked for
(its first engine build takes minutes), with the profile TensorRT derives from the request's
own shapes. This module imports neither torch nor onnxruntime at import time.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from ..errors import BackendError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# ORT's own messages at warning level and above reach stderr (0 verbose ... 3 error, 4 fatal).
ORT_LOG_SEVERITY = 2
_SHORT_NAMES = {CUDA: "CUDA", TENSORRT: "TensorRT"}


class ProviderError(BackendError):
    """An ONNX Runtime execution provider that was asked for did not load."""


def session_providers(device_type: str, device_id: int, fp16: bool, tensorrt: bool, plan_dir: Path) -> list[Any]:
    """The provider list for one session, most preferred first. The device id goes to every GPU
    provider, so ``cuda:1`` runs on GPU 1. The CPU provider stays last: ORT places the few ops
    without a GPU kernel (shape arithmetic) there, which :func:`check_session` allows."""
    if device_type == "cpu":
        return [CPU]
    providers: list[Any] = []
    if tensorrt:
        providers.append((TENSORRT, {
            "device_id": device_id,
            "trt_fp16_enable": fp16,
            # Plans live inside the cache entry, so a rebuilt entry drops stale plans. Without
            # explicit profiles TensorRT builds for the shapes it first sees (the request's) and
            # rebuilds, once, when a later request goes beyond them.
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(plan_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(plan_dir),
        }))
    providers.append((CUDA, {"device_id": device_id}))
    providers.append(CPU)
    return providers


def requested(providers: Sequence[Any]) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def check_available(device_type: str, tensorrt: bool, available: Sequence[str], device: str) -> None:
    """Before anything loads: the wheel must offer the providers the device and options need."""
    if device_type == "cuda" and CUDA not in available:
        raise ProviderError(
            f"device {device!r} needs onnxruntime's CUDA provider, but this onnxruntime offers only "
            f"{', '.join(available)}; install onnxruntime-gpu (in place of onnxruntime) or use --device cpu"
        )
    if tensorrt and device_type != "cuda":
        raise ProviderError("the TensorRT provider runs on CUDA devices only; drop --trt-provider or use --device cuda")
    if tensorrt and TENSORRT not in available:
        raise ProviderError(
            f"--trt-provider needs onnxruntime's TensorRT provider, which this onnxruntime ({', '.join(available)}) "
            "lacks; install onnxruntime-gpu built with TensorRT, or drop --trt-provider"
        )


def check_session(engine: str, asked: Sequence[str], got: Sequence[str]) -> None:
    """Raise ProviderError when a GPU provider in ``asked`` is missing from the session's ``got``."""
    missing = [p for p in asked if p != CPU and p not in got]
    if missing:
        raise ProviderError(
            f"{engine}: onnxruntime could not load the {_SHORT_NAMES.get(missing[0], missing[0])} provider "
            f"(the session got {', '.join(got)}): {load_hint(missing[0])}"
        )


def load_hint(provider: str) -> str:
    """How to make ``provider`` load: the library versions this onnxruntime was built against."""
    import onnxruntime as ort

    info = getattr(getattr(ort, "capi", None), "build_and_package_info", None)
    cuda, cudnn = getattr(info, "cuda_version", None), getattr(info, "cudnn_version", None)
    wants = f"CUDA {cuda or '12.x'} and cuDNN {cudnn or '9.x'}"
    preload = (
        " or, with torch's CUDA wheels or the nvidia-* pip packages installed, call onnxruntime.preload_dlls() "
        "before loading"
        if hasattr(ort, "preload_dlls") else ""
    )
    if provider == TENSORRT:
        return (
            f"onnxruntime {ort.__version__} needs the TensorRT libraries (libnvinfer) beside {wants} on the library "
            "path (pip install tensorrt, or NVIDIA's packages); or drop --trt-provider"
        )
    return (
        f"onnxruntime {ort.__version__} needs {wants} libraries on the library path (see onnxruntime's CUDA "
        f"requirements; pip install 'onnxruntime-gpu[cuda,cudnn]' brings them){preload}; or use --device cpu"
    )


def log_tensorrt_build(engine: str, plan_dir: Path) -> None:
    """Say so before a first TensorRT build, which takes minutes and would look like a hang."""
    if not any(plan_dir.glob("*.engine")):
        log.warning("%s: TensorRT builds its engine at the first run, for that run's shapes: this takes minutes", engine)
