"""The report of ``dynamicid-rt doctor``: Python, the installed backends and what this CPU and GPU can run."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from pathlib import Path
from typing import Callable

from .errors import DynamicIDError
from .modelfiles.paths import ModelPaths
from .models.preflight import folder_problems


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# Distributions that install the same import package, so one overwrites the other's files; what
# to run instead (keep the first for an NVIDIA GPU / a desktop, the second otherwise).
_CLASHES = (
    ("onnxruntime", "onnxruntime-gpu",
     "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install onnxruntime-gpu (GPU) or onnxruntime (CPU)"),
    ("opencv-python", "opencv-python-headless",
     "pip uninstall -y opencv-python opencv-python-headless, then pip install opencv-python (what insightface asks for)"),
)


def clash_lines(installed: Callable[[str], bool]) -> list[str]:
    """One line per pair of clashing distributions that are both installed."""
    return [f"CONFLICT: {a} and {b} are both installed and overwrite each other's files; fix: {fix}"
            for a, b, fix in _CLASHES if installed(a) and installed(b)]


def _installed(dist: str) -> bool:
    return _version(dist) != "not installed"


def _backend_lines() -> list[str]:
    """Each registered backend's state here, and what ``--backend auto`` would pick."""
    from .backends import BACKENDS, choose_auto

    lines = ["backends:"]
    for info in BACKENDS.values():
        missing = info.missing_packages()
        if missing:
            lines.append(f"  {info.name:12s} not installed ({', '.join(missing)}): {info.install_advice()}")
            continue
        devices = info.usable_devices()
        runs = "; ".join(f"{kind} {'/'.join(info.precisions_here(kind))}" for kind in devices) or "no usable device" + (
            f" ({info.no_device_hint()})" if info.no_device_hint is not None else ""
        )
        extras = f" [{', '.join(sorted(info.capabilities))}]" if info.capabilities else ""
        lines.append(f"  {info.name:12s} {runs}{extras}")
    try:
        lines.append(f"auto picks: {choose_auto().explain()}")
    except DynamicIDError as exc:
        lines.append(f"auto picks: nothing ({exc})")
    return lines


def _cpu_line() -> str:
    """The CPU and the fastest path it has, with OpenVINO's own view of it where installed."""
    from .backends import probes

    capabilities: list[str] = []
    if probes.installed("openvino"):
        from .backends.openvino_backend import optimization_capabilities

        capabilities = optimization_capabilities()
    return f"CPU: {probes.cpu_model()}; fastest path: {probes.cpu_fastest_path(capabilities)}"


def doctor_report(models: Path | None, overrides: dict[str, Path] | None = None) -> tuple[str, bool]:
    """The report and whether all is well; ``overrides`` point single parts elsewhere, as
    ``generate``'s part options do, and the folder is checked as ``generate`` would open it."""
    overrides = overrides or {}
    lines = [f"python {sys.version.split()[0]} on {platform.platform()}"]
    for dist in ("dynamicid-rt", "numpy", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu",
                 "openvino", "nncf", "insightface", "tensorrt", "tensorrt-rtx-cu13-bindings", "tensorrt-rtx-cu12-bindings",
                 "cuda-python", "PySide6-Essentials"):
        lines.append(f"  {dist:20s} {_version(dist)}")
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        lines.append(f"onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            lines.append(f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
        else:
            lines.append("GPU: none visible to torch (CPU only)")
    lines.append(_cpu_line())
    lines += _backend_lines()
    clashes = clash_lines(_installed)
    lines += clashes
    ok = not clashes
    if models is None:
        lines.append("model folder: none given (--models or $DYNAMICID_MODELS); `dynamicid-rt demo` uses a tiny test bundle")
    else:
        folder = None
        try:
            folder = ModelPaths.from_folder(models, **overrides)
            problems = folder_problems(folder)
            if not problems:  # the loaders generate uses, as inspect runs them
                from .models.checkpoint_report import checkpoint_problems
                from .models.load_check import load_problems

                problems = checkpoint_problems(folder) or load_problems(folder)
        except DynamicIDError as exc:
            problems = [str(exc)]
        lines.append(f"model folder {models}: " + ("complete" if not problems else "INCOMPLETE"))
        lines += [f"  - {p}" for p in problems]
        ok = ok and not problems
        face_note = None if problems or folder is None else folder.face_analysis_problem()
        if face_note:
            lines.append(f"  note: {face_note}")
    try:
        from .export.cache import engines_root
        from .export.cache_admin import total_line

        lines.append(total_line(engines_root()))
    except (ImportError, OSError) as exc:  # the exporter is not installed, the cache unreadable
        lines.append(f"engine caches: not read ({exc})")
    from .engines.report import tensorrt_report  # imports TensorRT only when it is installed

    lines += tensorrt_report(models)
    return "\n".join(lines), ok
