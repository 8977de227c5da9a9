"""Device memory, streams and CUDA graphs through cuda-python (the CUDA runtime bindings).

Why cuda-python and not torch CUDA tensors: the TensorRT backend only needs raw device pointers,
host<->device copies, one stream and graph capture. cuda-python does exactly that in a wheel of a
few megabytes, while torch would add gigabytes and a second CUDA runtime to a backend whose point
is to run without PyTorch (like the onnxruntime path, it never imports torch).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable

import numpy as np

from dynamicid_rt.errors import DynamicIDError

from .library import TensorRTUnavailable
from .plans import GpuInfo


class CudaError(DynamicIDError):
    """A CUDA runtime call failed."""


def runtime() -> ModuleType:
    """The CUDA runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` in older cuda-python)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TensorRTUnavailable(
        "the TensorRT backends need cuda-python; install it with: pip install 'dynamicid-rt[tensorrt]' "
        "(or 'dynamicid-rt[tensorrt-rtx]')"
    )


def call(name: str, *args: Any) -> Any:
    """Call ``cudart.<name>(*args)``, raise :class:`CudaError` on failure, return its result(s)."""
    rt = runtime()
    result = getattr(rt, name)(*args)
    err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        raise CudaError(f"CUDA {name} failed: {text.decode() if isinstance(text, bytes) else text}")
    return rest[0] if len(rest) == 1 else rest or None


def set_device(device: int) -> None:
    """Make ``device`` current on the calling host thread. CUDA keeps the current device per
    thread, so every thread that touches our buffers, streams or contexts calls this first."""
    call("cudaSetDevice", device)


def memory_info() -> tuple[int, int]:
    """``(free, total)`` bytes of the current device."""
    free, total = call("cudaMemGetInfo")
    return int(free), int(total)


def gpu_info(device: int = 0) -> GpuInfo:
    props = call("cudaGetDeviceProperties", device)
    name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name, f"{props.major}.{props.minor}", str(call("cudaDriverGetVersion")), int(props.totalGlobalMem))


def gpu_here(device: int = 0) -> GpuInfo | None:
    """The GPU ``device`` when this machine has one and cuda-python can reach it, else None (a build
    machine without a GPU)."""
    try:
        return gpu_info(device)
    except (CudaError, TensorRTUnavailable):
        return None


class DeviceBuffer:
    """``nbytes`` of device memory, grown on demand (never shrunk: shapes come back)."""

    def __init__(self, nbytes: int = 0) -> None:
        self.ptr = 0
        self.nbytes = 0
        self.ensure(nbytes)

    def ensure(self, nbytes: int) -> bool:
        """Make room for ``nbytes``; returns True when the address changed (rebind it)."""
        if nbytes <= self.nbytes:
            return False
        self.free()
        self.ptr = int(call("cudaMalloc", nbytes))
        self.nbytes = nbytes
        return True

    def upload(self, array: np.ndarray, stream: int) -> None:
        host = np.ascontiguousarray(array)
        self.ensure(host.nbytes)
        kind = runtime().cudaMemcpyKind.cudaMemcpyHostToDevice
        call("cudaMemcpyAsync", self.ptr, host.ctypes.data, host.nbytes, kind, stream)
        call("cudaStreamSynchronize", stream)  # the host array may be freed as soon as we return

    def download(self, shape: tuple[int, ...], dtype: np.dtype, stream: int) -> np.ndarray:
        out = np.empty(shape, dtype)
        kind = runtime().cudaMemcpyKind.cudaMemcpyDeviceToHost
        call("cudaMemcpyAsync", out.ctypes.data, self.ptr, out.nbytes, kind, stream)
        call("cudaStreamSynchronize", stream)
        return out

    def free(self) -> None:
        if self.ptr:
            call("cudaFree", self.ptr)
        self.ptr, self.nbytes = 0, 0


class Stream:
    def __init__(self) -> None:
        self.handle = call("cudaStreamCreate")

    def __int__(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        call("cudaStreamSynchronize", self.handle)

    def destroy(self) -> None:
        if self.handle is not None:
            call("cudaStreamDestroy", self.handle)
            self.handle = None


class CudaGraph:
    """One captured sequence of launches on a stream, replayed with :meth:`launch`.

    When ``launches`` raises, the capture is ended and its partial graph discarded, and the error
    of ``launches`` is what the caller sees (ending an invalidated capture fails too, and that
    error would only hide the cause)."""

    def __init__(self, stream: Stream, launches: Callable[[], None]) -> None:
        rt = runtime()
        call("cudaStreamBeginCapture", stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)
        try:
            launches()
        except BaseException:
            _abandon_capture(stream)
            raise
        self.graph = call("cudaStreamEndCapture", stream.handle)
        try:
            self.exec = call("cudaGraphInstantiate", self.graph, 0)
        except CudaError:
            call("cudaGraphDestroy", self.graph)
            raise

    def launch(self, stream: Stream) -> None:
        call("cudaGraphLaunch", self.exec, stream.handle)

    def destroy(self) -> None:
        call("cudaGraphExecDestroy", self.exec)
        call("cudaGraphDestroy", self.graph)


def _abandon_capture(stream: Stream) -> None:
    """End a capture that failed, free what it recorded, and clear the error it left."""
    rt = runtime()
    err, graph = rt.cudaStreamEndCapture(stream.handle)
    if err == rt.cudaError_t.cudaSuccess and graph:
        rt.cudaGraphDestroy(graph)
    rt.cudaGetLastError()  # the invalidated capture's error is not the caller's
