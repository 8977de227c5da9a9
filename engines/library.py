"""Finding TensorRT: import it, tell TensorRT 10 from 11, and say how to install it when it is missing.

TensorRT's pip packages are per CUDA major version (``tensorrt-cu12``, ``tensorrt-cu13``), so the
error for a missing library names the command for the CUDA version this machine's driver supports,
read from ``nvidia-smi`` (or torch's build, when torch is installed); with neither it gives both.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import shutil
import subprocess
from types import ModuleType

from dynamicid_rt.errors import DynamicIDError

log = logging.getLogger(__name__)

# The CUDA majors TensorRT 10/11 publish wheels for.
TENSORRT_CUDA_MAJORS = (12, 13)
SUPPORTED_MAJORS = (10, 11)


class TensorRTUnavailable(DynamicIDError, ImportError):
    """TensorRT (or cuda-python, which the TensorRT backend moves buffers with) is not installed."""


def install_command(cuda_major: int | None) -> str:
    """The pip command that installs TensorRT and this project's TensorRT extra for ``cuda_major``."""
    if cuda_major in TENSORRT_CUDA_MAJORS:
        return f"pip install 'dynamicid-rt[tensorrt]' tensorrt-cu{cuda_major}"
    return " or ".join(f"pip install 'dynamicid-rt[tensorrt]' tensorrt-cu{m} (CUDA {m})" for m in TENSORRT_CUDA_MAJORS)


def parse_nvidia_smi_cuda(text: str) -> int | None:
    """The CUDA major from ``nvidia-smi``'s banner ("... CUDA Version: 12.4 ..."), or None."""
    match = re.search(r"CUDA Version:\s*(\d+)\.\d+", text)
    return int(match.group(1)) if match else None


def detect_cuda_major() -> int | None:
    """The CUDA major this machine can run: the driver's (nvidia-smi), else torch's build, else None."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            done = subprocess.run([smi], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("nvidia-smi failed: %s", exc)
        else:
            major = parse_nvidia_smi_cuda(done.stdout)
            if major is not None:
                return major
    if importlib.util.find_spec("torch") is not None:
        import torch  # only on this error path: the TensorRT backend itself never needs torch

        if torch.version.cuda:
            return int(torch.version.cuda.split(".")[0])
    return None


def missing_message(what: str, cuda_major: int | None) -> str:
    return f"{what} needs TensorRT, which is not installed; install it with: {install_command(cuda_major)}"


def import_tensorrt(what: str = "the tensorrt backend") -> ModuleType:
    """``import tensorrt``, or a :class:`TensorRTUnavailable` naming the pip command for this machine."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailable(missing_message(what, detect_cuda_major())) from exc
    major = tensorrt_major(trt)
    if major not in SUPPORTED_MAJORS:
        raise TensorRTUnavailable(
            f"{what} supports TensorRT {' and '.join(map(str, SUPPORTED_MAJORS))}, but TensorRT {trt.__version__} is "
            f"installed; install a supported one with: {install_command(detect_cuda_major())}"
        )
    return trt


def tensorrt_major(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])


def is_strongly_typed_only(trt: ModuleType) -> bool:
    """TensorRT 11 removed the precision builder flags: networks are strongly typed, their
    precision is the ONNX graph's own (fp16 graphs with fp32 islands)."""
    return tensorrt_major(trt) >= 11
