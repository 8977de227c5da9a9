"""What ``dynamicid-rt doctor`` says about TensorRT: version, GPU, compute capability, plan cache."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

from dynamicid_rt.errors import DynamicIDError

from .library import detect_cuda_major, install_command
from .plans import describe_cache


def tensorrt_report(models: Path | None) -> list[str]:
    """Lines for ``doctor``: TensorRT, the GPU plans are built for, and the plan cache of the model
    folder ``models``; never raises (a missing library or GPU is reported, not fatal)."""
    try:
        version = importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        try:
            import tensorrt  # the libraries ship under other distribution names (tensorrt-cu12...)

            version = tensorrt.__version__
        except ImportError:
            return [f"TensorRT: not installed (for the tensorrt backend: {install_command(detect_cuda_major())})"]
    lines = [f"TensorRT: {version}"]
    try:
        from .cuda import gpu_info

        gpu = gpu_info()
        lines.append(f"  GPU for plans: {gpu.name}, compute capability {gpu.compute_capability}, driver {gpu.driver}")
    except (DynamicIDError, ImportError) as exc:
        lines.append(f"  GPU for plans: none usable ({exc})")
    engine_dir = _engine_dir(models)
    if engine_dir is not None:
        plans = describe_cache(engine_dir)
        lines.append(f"  plan cache {Path(engine_dir) / 'tensorrt'}: {len(plans)} plan(s)")
        lines += [f"    {line}" for line in plans]
    return lines


def _engine_dir(models: Path | None) -> Path | None:
    if models is None:
        return None
    from dynamicid_rt.export.cache import default_engine_dir
    from dynamicid_rt.paths import ModelPaths

    try:
        return default_engine_dir(ModelPaths.from_folder(models))
    except DynamicIDError:
        return None
