"""Cheap checks of what this machine offers, used by the backend registry before any backend loads.

None of these imports torch, TensorRT or OpenVINO: ``backend="auto"`` and ``doctor`` must stay
fast, and the onnxruntime/OpenVINO paths must never pull torch in just to ask about CUDA.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import platform
import re
import sys
from pathlib import Path
from typing import Collection

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


# cuDeviceGetAttribute's CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR.
_CC_MAJOR, _CC_MINOR = 75, 76


def _cuda_driver() -> ctypes.CDLL | None:
    """The CUDA driver library, initialised, or None without a usable driver."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        return driver if driver.cuInit(0) == 0 else None
    return None


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """NVIDIA GPUs the CUDA driver reports (0 without a driver), asked through the driver library
    itself so that no framework is imported."""
    driver = _cuda_driver()
    count = ctypes.c_int(0)
    if driver is None or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@functools.lru_cache(maxsize=1)
def cuda_compute_capabilities() -> tuple[str, ...]:
    """The compute capability of each GPU ("8.9"), in device order, from the driver library."""
    driver = _cuda_driver()
    found = []
    for index in range(cuda_device_count() if driver is not None else 0):
        major, minor, device = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        if driver.cuDeviceGet(ctypes.byref(device), index) != 0:
            continue
        driver.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
        driver.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
        found.append(f"{major.value}.{minor.value}")
    return tuple(found)


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


def tensorrt_rtx_devices() -> tuple[str, ...]:
    """``cuda`` when GPU 0 is a TensorRT-RTX target (an RTX-class GPU; not H100/H200-class sm90)."""
    from ..engines.library import TENSORRT_RTX_1  # a declaration: imports no TensorRT

    ccs = cuda_compute_capabilities()
    return ("cuda",) if ccs and TENSORRT_RTX_1.supports_gpu(ccs[0]) else ()


def tensorrt_rtx_no_device() -> str:
    """Why the tensorrt-rtx backend finds no device, in the user's terms."""
    from ..engines.library import TENSORRT_RTX_1

    ccs = cuda_compute_capabilities()
    if not ccs:
        return "no NVIDIA GPU here (TensorRT-RTX builds plans without one: build-engines --backend tensorrt-rtx)"
    targets = ", ".join(TENSORRT_RTX_1.targets + TENSORRT_RTX_1.optional_targets)
    return f"GPU 0 is sm {ccs[0]}, not a TensorRT-RTX target ({targets}); use --backend tensorrt"


CPUINFO = Path("/proc/cpuinfo")
# Per UNet step against our torch fp32, measured by this project's bench (benchmarks/bench_cpu.py,
# issue 21): OpenVINO bf16 on CPUs with bf16 units, OpenVINO f32 on an AVX2-only CPU.
BENCH_BF16_VS_TORCH = 5.5
BENCH_F32_AVX2_VS_TORCH = 3.05


@functools.lru_cache(maxsize=1)
def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's ``name: value`` lines of /proc/cpuinfo (none on macOS or Windows)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields.setdefault(name.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS, Windows)."""
    fields = _cpuinfo_fields()
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 9654"), or what the platform module knows."""
    return _cpuinfo_fields().get("model name") or platform.processor() or platform.machine()


def cpu_bf16_units(openvino_capabilities: Collection[str] = ()) -> str | None:
    """"AMX" or "AVX-512 BF16" as /proc/cpuinfo names the units, "bf16 units" where only OpenVINO's
    ``OPTIMIZATION_CAPABILITIES`` (given) reports BF16, else None."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    return "bf16 units" if "BF16" in openvino_capabilities else None


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic units (AVX-512 BF16 or AMX); without them bf16 is
    emulated and slower than fp32, so it is not offered."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def cpu_fastest_path(openvino_capabilities: Collection[str] = ()) -> str:
    """One line naming the fastest CPU path this CPU has, from its flags (never assumed) and, where
    given, OpenVINO's ``OPTIMIZATION_CAPABILITIES``."""
    gain = f"~{BENCH_BF16_VS_TORCH / BENCH_F32_AVX2_VS_TORCH:.1f}×"
    units = cpu_bf16_units(openvino_capabilities)
    if units is not None:
        return f"{units}: OpenVINO bf16, its default here ({gain} f32 in this project's bench; --precision fp32 to keep fp32)"
    flags = cpu_flags()
    if not flags:
        found = "CPU features unknown (no /proc/cpuinfo)"
    elif "avx512f" in flags:
        found = "AVX-512 without BF16"
    elif "avx2" in flags:
        found = "AVX2 only"
    else:
        found = "no AVX2"
    return f"{found}: OpenVINO f32; a CPU with AVX-512 BF16 or AMX runs bf16 {gain} faster (this project's bench)"
