"""What ``dynamicid-rt doctor`` says about the TensorRT libraries: version, the wheels that fit this
driver, the GPU and whether the library targets it, the plan and runtime caches, and, on a GPU that
runs the plans, each plan's context memory at its opt shapes and at its peak (the profile maximum)."""
from __future__ import annotations

from pathlib import Path

from dynamicid_rt.errors import DynamicIDError

from .library import LIBRARIES, LoadedTensorRT, TensorRTLibrary, detect_cuda_major, installed_module, libraries_of, load
from .plans import GpuInfo, describe_cache
from .runtime_cache import describe_runtime_caches


def tensorrt_report(models: Path | None) -> list[str]:
    """Lines for ``doctor``, one block per TensorRT library; never raises (a missing library or GPU
    is reported, not fatal)."""
    cuda_major = detect_cuda_major()
    engine_dir = _engine_dir(models)
    lines: list[str] = []
    for backend in dict.fromkeys(lib.backend for lib in LIBRARIES):
        lines += _library_lines(backend, cuda_major, engine_dir)
    return lines


def _library_lines(backend: str, cuda_major: int | None, engine_dir: Path | None) -> list[str]:
    newest = libraries_of(backend)[-1]
    title = newest.family
    if installed_module(backend) is None:
        return [f"{title}: not installed (for the {backend} backend: {newest.install_command(cuda_major)})"]
    try:
        lib = load(backend)
    except DynamicIDError as exc:
        return [f"{title}: unusable ({exc})"]
    lines = [f"{title}: {lib.version}"]
    wheel_cuda = lib.spec.installed_cuda_major()
    if cuda_major is not None and wheel_cuda is not None and wheel_cuda != cuda_major:
        lines.append(
            f"  CUDA: the installed wheels are for CUDA {wheel_cuda}, the driver runs CUDA {cuda_major}: "
            f"{lib.spec.install_command(cuda_major)}"
        )
    elif cuda_major is not None:
        lines.append(f"  CUDA: the driver runs CUDA {cuda_major}; the cu{cuda_major} wheels fit")
    elif wheel_cuda is not None:
        lines.append(f"  CUDA: no NVIDIA driver here; the installed wheels are for CUDA {wheel_cuda} drivers")
    from .cuda import gpu_here

    gpu = gpu_here()
    lines.append("  " + _gpu_line(lib.spec, gpu))
    if engine_dir is not None:
        plans = describe_cache(engine_dir, backend)
        lines.append(f"  plan cache {Path(engine_dir) / backend}: {len(plans)} plan(s)")
        lines += [f"    {line}" for line in plans]
        if plans and gpu is not None and lib.spec.supports_gpu(gpu.compute_capability):
            lines += _memory_lines(lib, Path(engine_dir))
        caches = describe_runtime_caches(engine_dir, backend)
        if caches or lib.spec.kernel_cache == "runtime":
            lines.append(f"  runtime caches: {len(caches)}")
            lines += [f"    {line}" for line in caches]
    return lines


def _memory_lines(lib: LoadedTensorRT, engine_dir: Path) -> list[str]:
    from .cuda import CudaError
    from .memory_report import stored_plan_memory

    try:
        found = stored_plan_memory(lib, engine_dir)
    except (CudaError, RuntimeError) as exc:  # doctor reports, never fails
        return [f"  context memory: unknown ({exc})"]
    return ["  context memory (the shared block grows per request up to the largest peak):"] + [
        f"    {item if isinstance(item, str) else item.line()}" for item in found
    ]


def _gpu_line(spec: TensorRTLibrary, gpu: GpuInfo | None) -> str:
    if gpu is None:
        build = "plans can still be built here (portable)" if not spec.needs_gpu_to_build else "plans are built on the GPU they run on"
        return f"GPU: none usable here; {build}"
    line = f"GPU for plans: {gpu.name}, compute capability {gpu.compute_capability}, driver {gpu.driver}"
    if spec.portable_plans:
        targets = ", ".join(spec.targets + spec.optional_targets)
        verdict = "a target" if spec.supports_gpu(gpu.compute_capability) else "not a target: use --backend tensorrt"
        line += f" ({spec.name} targets {targets}: {verdict})"
    return line


def _engine_dir(models: Path | None) -> Path | None:
    if models is None:
        return None
    from dynamicid_rt.export.cache import default_engine_dir
    from dynamicid_rt.modelfiles.paths import ModelPaths

    try:
        return default_engine_dir(ModelPaths.from_folder(models))
    except DynamicIDError:
        return None
