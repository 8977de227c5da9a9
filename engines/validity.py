"""Whether a stored plan suits this GPU, asked of libraries that can tell (TensorRT-RTX's
``Runtime.get_engine_validity``): VALID, SUBOPTIMAL (usable; logged) or INVALID with diagnostics.

An invalid plan that a rebuild can fix (another library version, a malformed file, a GPU outside
its targets that is a target of the library) is rebuilt with the diagnostic as the logged reason;
one that no rebuild can fix (an old driver, too little memory, a GPU the library does not target)
is refused in one line that says what to do.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .builder import EngineBuildError, make_logger
from .library import LoadedTensorRT
from .plans import GpuInfo

log = logging.getLogger(__name__)

# Diagnostic -> (what it means, whether a rebuild here fixes it).
DIAGNOSTICS = {
    "VERSION_MISMATCH": ("built by another TensorRT-RTX version", True),
    "MALFORMED_ENGINE": ("the plan is malformed", True),
    "UNSUPPORTED_CC": ("this GPU's compute capability is not among the plan's targets", True),
    "OLD_CUDA_DRIVER": ("the NVIDIA driver is too old for this plan; update the driver", False),
    "OLD_CUDA_RUNTIME": ("the CUDA runtime is too old for this plan; update the TensorRT-RTX wheels", False),
    "INSUFFICIENT_GPU_MEMORY": ("the GPU has too little free memory for this plan; close programs using it", False),
    "CUDA_ERROR": ("CUDA failed while checking the plan", False),
}


def diagnostic_names(trt: Any, diagnostics: Any) -> list[str]:
    """The names of the flags set in a diagnostics bit mask."""
    bits = int(diagnostics)
    return [name for name, flag in trt.EngineInvalidityDiagnostics.__members__.items() if bits & int(flag)]


def plan_validity(lib: LoadedTensorRT, plan_path: Path, gpu: GpuInfo | None) -> str:
    """Empty when the plan at ``plan_path`` may be used on ``gpu`` (or nothing can tell: no GPU, or
    a library without the check), else why it must be rebuilt. Raises EngineBuildError when a
    rebuild cannot help."""
    if not lib.spec.checks_validity or gpu is None:
        return ""
    trt = lib.trt
    runtime = trt.Runtime(make_logger(trt))
    validity, diagnostics = runtime.get_engine_validity(plan_path.read_bytes())
    names = diagnostic_names(trt, diagnostics)
    said = "; ".join(DIAGNOSTICS.get(n, (n.lower(), False))[0] for n in names)
    if validity == trt.EngineValidity.VALID:
        return ""
    if validity == trt.EngineValidity.SUBOPTIMAL:
        log.info("%s: %s says the plan is usable but suboptimal on %s (%s)", plan_path, lib.label, gpu.name, said or "no detail")
        return ""
    if "UNSUPPORTED_CC" in names and not lib.spec.supports_gpu(gpu.compute_capability):
        raise EngineBuildError(lib.spec.not_a_target(gpu.name, gpu.compute_capability))
    fatal = [n for n in names if not DIAGNOSTICS.get(n, ("", False))[1]]
    if fatal:
        raise EngineBuildError(f"{lib.label} cannot use {plan_path} on {gpu.name}: {said}")
    return f"{lib.label} says the plan is invalid here ({said or 'no diagnostic given'})"
