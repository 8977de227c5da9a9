"""The TensorRT libraries the engine layer drives, each declared once, and how to import one.

Two libraries build and run our plans:
- data-center **TensorRT** 10/11 (``import tensorrt``): plans are tuned on, and run only on, the GPU
  and driver that built them; a builder timing cache carries the tactic timings between builds;
- **TensorRT for RTX** 1.x (``import tensorrt_rtx``, or ``tensorrt_rtx_bindings`` from the
  ``-bindings`` wheel): plans are built ahead of time, without a GPU, for a list of compute
  capabilities, and specialised just in time on the user's GPU; a runtime cache keeps that work.

Everything that differs between them is a field of :class:`TensorRTLibrary`; the builder, the plan
cache, the engine and the backend read those fields and never test a library's name or version.
A library is told apart by its module and its version's major (TensorRT-RTX 1.x is its own
declaration, never "TensorRT 1").
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from types import ModuleType

from dynamicid_rt.errors import DynamicIDError

log = logging.getLogger(__name__)

# Kernel caches: the builder's timing cache (per GPU, at build time) or the runtime cache of
# just-in-time kernels (per GPU and driver, at run time).
TIMING_CACHE, RUNTIME_CACHE = "timing", "runtime"
# CUDA graphs: our own capture and replay of static plans, or the library's whole-graph capture
# (IRuntimeConfig.cuda_graph_strategy), which covers dynamic shapes too.
OUR_CAPTURE, LIBRARY_CAPTURE = "capture", "library"
# Context memory handed in by us: TensorRT 10's create_execution_context_without_device_memory, or
# the USER_MANAGED allocation strategy with set_device_memory.
WITHOUT_DEVICE_MEMORY, USER_MANAGED = "without_device_memory", "user_managed"


class TensorRTUnavailable(DynamicIDError, ImportError):
    """A TensorRT library (or cuda-python, which the backends move buffers with) is not installed."""


@dataclass(frozen=True)
class TensorRTLibrary:
    """One TensorRT library: what differs, as data.

    ``packages``: the pip packages for one CUDA major, ``{cuda}`` standing for it; ``extra``: this
    project's extra for it (``{cuda}`` likewise, when the extra is per CUDA major); ``libs_wheel``:
    the distribution whose name tells the installed CUDA major.
    ``targets``: compute capabilities a plan is built for (empty: the GPU it is built on);
    ``optional_targets``: more that a user may ask for. ``strongly_typed``: networks take their
    types from the ONNX graph (no precision flags). ``refit_without_gpu``: a refittable plan can be
    built on a machine without a GPU. ``checks_validity``: the runtime says whether a plan suits
    this GPU before loading it (``Runtime.get_engine_validity``).
    """

    name: str
    backend: str
    modules: tuple[str, ...]
    majors: tuple[int, ...]
    packages: str
    extra: str
    libs_wheel: str
    cuda_majors: tuple[int, ...]
    strongly_typed: bool
    kernel_cache: str
    targets: tuple[str, ...]
    optional_targets: tuple[str, ...]
    needs_gpu_to_build: bool
    refit_without_gpu: bool
    cuda_graphs: str
    context_memory: str
    checks_validity: bool

    @property
    def family(self) -> str:
        """The library's name without its major ("TensorRT-RTX")."""
        return self.name.rsplit(" ", 1)[0]

    @property
    def portable_plans(self) -> bool:
        """Plans run on any GPU of their targets, so the GPU and driver do not key them."""
        return bool(self.targets)

    def install_command(self, cuda_major: int | None) -> str:
        """The pip command for this library and CUDA major (both majors when it is unknown)."""
        if cuda_major in self.cuda_majors:
            return self._command(cuda_major)
        return " or ".join(f"{self._command(m)} (CUDA {m})" for m in self.cuda_majors)

    def _command(self, cuda: int) -> str:
        extra = self.extra.format(cuda=cuda)
        packages = self.packages.format(cuda=cuda)
        return f"pip install 'dynamicid-rt[{extra}]'" + (f" {packages}" if packages else "")

    def installed_cuda_major(self) -> int | None:
        """The CUDA major of the installed wheels, from their distribution name."""
        import importlib.metadata

        for cuda in self.cuda_majors:
            try:
                importlib.metadata.version(self.libs_wheel.format(cuda=cuda))
            except importlib.metadata.PackageNotFoundError:
                continue
            return cuda
        return None

    def supports_gpu(self, compute_capability: str) -> bool:
        """Whether a GPU of this compute capability runs this library's plans."""
        return not self.targets or compute_capability in self.targets + self.optional_targets

    def not_a_target(self, gpu_name: str, compute_capability: str) -> str:
        """Why a GPU cannot run this library's plans, and what to use instead."""
        return (
            f"{gpu_name} (sm {compute_capability}) is not a {self.name} target "
            f"({', '.join(self.targets + self.optional_targets)}); use --backend tensorrt"
        )

    def targets_for_gpu(self, gpu_name: str, compute_capability: str) -> tuple[str, ...]:
        """Targets whose plans run on this GPU: the defaults (empty tuple), or the defaults plus its
        compute capability when it is a target only on request; raises for a GPU it does not target."""
        if not self.portable_plans or compute_capability in self.targets:
            return ()
        if compute_capability in self.optional_targets:
            return self.targets + (compute_capability,)
        raise DynamicIDError(self.not_a_target(gpu_name, compute_capability))


TENSORRT_10 = TensorRTLibrary(
    name="TensorRT 10", backend="tensorrt", modules=("tensorrt",), majors=(10,),
    packages="tensorrt-cu{cuda}", extra="tensorrt", libs_wheel="tensorrt-cu{cuda}-libs", cuda_majors=(12, 13),
    strongly_typed=False, kernel_cache=TIMING_CACHE, targets=(), optional_targets=(),
    needs_gpu_to_build=True, refit_without_gpu=False, cuda_graphs=OUR_CAPTURE,
    context_memory=WITHOUT_DEVICE_MEMORY, checks_validity=False,
)
# TensorRT 11 dropped the precision flags (networks are strongly typed) and the context made
# without device memory; everything else is TensorRT 10's.
TENSORRT_11 = replace(TENSORRT_10, name="TensorRT 11", majors=(11,), strongly_typed=True, context_memory=USER_MANAGED)
# TensorRT-RTX 1.7: REFIT and STRIP_PLAN builds fail without a GPU (Myelin's JIT asks CUDA), and
# the timing cache would force a GPU query, so neither is used on a machine without one. Its
# default targets are these four; 7.5 (Turing) only on request. sm90/sm100 (H100, B200) are not
# targets at all: data-center TensorRT is the library for those.
TENSORRT_RTX_1 = TensorRTLibrary(
    name="TensorRT-RTX 1", backend="tensorrt-rtx", modules=("tensorrt_rtx", "tensorrt_rtx_bindings"), majors=(1,),
    packages="", extra="tensorrt-rtx-cu{cuda}", libs_wheel="tensorrt-rtx-cu{cuda}-libs", cuda_majors=(12, 13),
    strongly_typed=True, kernel_cache=RUNTIME_CACHE, targets=("8.0", "8.6", "8.9", "12.0"), optional_targets=("7.5",),
    needs_gpu_to_build=False, refit_without_gpu=False, cuda_graphs=LIBRARY_CAPTURE,
    context_memory=USER_MANAGED, checks_validity=True,
)
LIBRARIES = (TENSORRT_10, TENSORRT_11, TENSORRT_RTX_1)


@dataclass(frozen=True)
class LoadedTensorRT:
    """An imported library: its declaration and its Python module."""

    spec: TensorRTLibrary
    trt: ModuleType

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    @property
    def label(self) -> str:
        return f"{self.spec.family} {self.version}"


def libraries_of(backend: str) -> tuple[TensorRTLibrary, ...]:
    found = tuple(lib for lib in LIBRARIES if lib.backend == backend)
    if not found:
        raise DynamicIDError(f"no TensorRT library runs the {backend!r} backend; choose tensorrt or tensorrt-rtx")
    return found


def declaration_for(backend: str, module_name: str, version: str) -> TensorRTLibrary | None:
    """The declaration of ``backend`` whose module and version major match, or None."""
    major = _major(version)
    return next(
        (lib for lib in libraries_of(backend) if module_name in lib.modules and major in lib.majors), None
    )


def wrap(backend: str, module: ModuleType, module_name: str | None = None) -> LoadedTensorRT:
    """A :class:`LoadedTensorRT` for an already imported module (a test's stand-in, say)."""
    name = module_name or module.__name__
    spec = declaration_for(backend, name, str(module.__version__))
    if spec is None:
        supported = " and ".join(lib.name for lib in libraries_of(backend))
        raise TensorRTUnavailable(
            f"the {backend} backend supports {supported}, but {name} {module.__version__} is installed; install a "
            f"supported one with: {libraries_of(backend)[-1].install_command(detect_cuda_major())}"
        )
    return LoadedTensorRT(spec, module)


def load(backend: str = "tensorrt", what: str | None = None) -> LoadedTensorRT:
    """Import the library of ``backend``, or raise :class:`TensorRTUnavailable` naming the pip
    command for this machine's CUDA major."""
    libs = libraries_of(backend)
    what = what or f"the {backend} backend"
    for module_name in dict.fromkeys(m for lib in libs for m in lib.modules):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return wrap(backend, module, module_name)
    raise TensorRTUnavailable(missing_message(what, libs[-1], detect_cuda_major()))


def installed_module(backend: str) -> str | None:
    """The first importable module of ``backend``'s libraries, found without importing it."""
    for lib in libraries_of(backend):
        for name in lib.modules:
            try:
                if importlib.util.find_spec(name) is not None:
                    return name
            except (ImportError, ValueError):
                continue
    return None


def _major(version: str) -> int:
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else -1


def missing_message(what: str, lib: TensorRTLibrary, cuda_major: int | None) -> str:
    return f"{what} needs {lib.family}, which is not installed; install it with: {lib.install_command(cuda_major)}"


def install_command(cuda_major: int | None, backend: str = "tensorrt") -> str:
    """The pip command that installs ``backend``'s library and this project's extra for ``cuda_major``."""
    return libraries_of(backend)[-1].install_command(cuda_major)


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
        import torch  # only on this error path: the TensorRT backends themselves never need torch

        if torch.version.cuda:
            return int(torch.version.cuda.split(".")[0])
    return None


def import_tensorrt(what: str = "the tensorrt backend") -> ModuleType:
    """``import tensorrt`` (data-center TensorRT 10/11), or a :class:`TensorRTUnavailable` naming
    the pip command for this machine. Kept for callers that want the bare module."""
    return load("tensorrt", what).trt
