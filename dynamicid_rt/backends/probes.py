"""Cheap checks of what this machine offers, used by the backend registry before any backend loads.

None of these imports torch, TensorRT or OpenVINO: ``backend="auto"`` and ``doctor`` must stay
fast, and the onnxruntime/OpenVINO paths must never pull torch in just to ask about CUDA.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import re
import sys
from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """NVIDIA GPUs the CUDA driver reports (0 without a driver), asked through the driver library
    itself so that no framework is imported."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def _torch_built_with_cuda() -> bool:
    # torch/version.py says `cuda = None` in CPU builds; reading it avoids a 2 s `import torch`.
    spec = importlib.util.find_spec("torch") if installed("torch") else None
    if spec is None or not spec.submodule_search_locations:
        return False
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    if not version_file.is_file():
        return False
    match = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]", version_file.read_text(), re.MULTILINE)
    return match is not None


def cpu_only() -> tuple[str, ...]:
    return ("cpu",)


def torch_devices() -> tuple[str, ...]:
    """``cuda`` first when this torch build has CUDA and a GPU is present."""
    return ("cuda", "cpu") if cuda_device_count() and _torch_built_with_cuda() else ("cpu",)


def onnxruntime_devices() -> tuple[str, ...]:
    """``cuda`` first when onnxruntime offers its CUDA provider and a GPU is present."""
    import onnxruntime  # light: no torch

    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers() and cuda_device_count() > 0
    return ("cuda", "cpu") if has_cuda else ("cpu",)


def cuda_only() -> tuple[str, ...]:
    return ("cuda",) if cuda_device_count() else ()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic units (AVX-512 BF16 or AMX); without them bf16 is
    emulated and slower than fp32, so it is not offered."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
