"""STAND-IN for the CUDA runtime bindings (``cuda.bindings.runtime``) and for a TensorRT execution
context, for machines without a GPU (CI, build machines).

It checks OUR side of the CUDA calls of ``engines/`` and the TensorRT backends, not CUDA's:
- the current device is kept per host thread, as CUDA does (every thread starts on device 0), and
  each call that uses the device is recorded with the thread and the device current there; a call
  made on another device than the one the test expects is a violation (a real GPU answers with an
  invalid resource handle or an illegal address);
- "device memory" is host memory (ctypes buffers), so copies really move bytes and a stand-in
  execution context really computes (it copies ``sample`` into ``noise_pred``);
- a stream being captured records launches instead of running them, a graph replays them, and a
  launch that raises inside a capture invalidates it (``cudaStreamEndCapture`` then fails), as CUDA does.
"""
from __future__ import annotations

import ctypes
import enum
import threading
import types
from typing import Any, Callable

import numpy as np

from dynamicid_rt.contract import ENGINES

# Calls that do not depend on the current device (or choose it).
_DEVICE_FREE = {"cudaSetDevice", "cudaGetDevice", "cudaGetErrorString", "cudaGetLastError", "cudaDriverGetVersion",
                "cudaGetDeviceProperties", "cudaGetDeviceCount"}


class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureInvalidated = 901


class CudartStandIn(types.SimpleNamespace):
    """``cuda.bindings.runtime`` as ``engines/cuda.py`` uses it; ``devices`` GPUs of ``free`` bytes each."""

    def __init__(self, devices: int = 2, free: int = 8 << 30) -> None:
        super().__init__()
        self.cudaError_t = CudaError
        self.cudaMemcpyKind = enum.Enum("cudaMemcpyKind", "cudaMemcpyHostToDevice cudaMemcpyDeviceToHost cudaMemcpyDeviceToDevice")
        self.cudaStreamCaptureMode = enum.Enum("cudaStreamCaptureMode", "cudaStreamCaptureModeGlobal")
        self.devices, self.free = devices, free
        self.local = threading.local()
        self.calls: list[tuple[str, int, str]] = []  # (thread, current device, call)
        self.expected_device: int | None = None  # set by a test: calls on any other device are violations
        self.violations: list[str] = []
        self.memory: dict[int, Any] = {}  # ptr -> ctypes buffer
        self.owner: dict[int, int] = {}  # ptr / stream / graph handle -> device it was made on
        self.capturing: dict[int, list[Callable[[], None]] | None] = {}  # stream -> recorded launches (None: invalidated)
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self.begin_captures = 0
        self._next = 1

    # -- bookkeeping -------------------------------------------------------------------------------

    @property
    def current(self) -> int:
        return getattr(self.local, "device", 0)

    def record(self, name: str, *handles: int) -> None:
        thread, device = threading.current_thread().name, self.current
        self.calls.append((thread, device, name))
        if name in _DEVICE_FREE:
            return
        if self.expected_device is not None and device != self.expected_device:
            self.violations.append(f"{name} on thread {thread} with device {device} current, not {self.expected_device}")
        for handle in handles:
            if handle in self.owner and self.owner[handle] != device:
                self.violations.append(f"{name} on thread {thread}: a handle of device {self.owner[handle]} used on device {device}")

    def _handle(self) -> int:
        self._next += 1
        self.owner[self._next] = self.current
        return self._next

    def launch(self, stream: int, work: Callable[[], None]) -> None:
        """Run ``work`` on ``stream`` now, or record it when the stream is being captured."""
        if stream in self.capturing:
            if self.capturing[stream] is not None:
                self.capturing[stream].append(work)
            return
        work()

    def invalidate_capture(self, stream: int) -> None:
        if stream in self.capturing:
            self.capturing[stream] = None

    # -- the runtime API -----------------------------------------------------------------------------

    def cudaGetErrorString(self, err):
        return CudaError.cudaSuccess, CudaError(err).name.encode()

    def cudaGetLastError(self):
        return CudaError.cudaSuccess

    def cudaSetDevice(self, device: int):
        self.record("cudaSetDevice")
        if not 0 <= device < self.devices:
            return CudaError.cudaErrorInvalidResourceHandle
        self.local.device = device
        return CudaError.cudaSuccess

    def cudaGetDevice(self):
        return CudaError.cudaSuccess, self.current

    def cudaDriverGetVersion(self):
        return CudaError.cudaSuccess, 13000

    def cudaGetDeviceProperties(self, device: int):
        props = types.SimpleNamespace(name=f"Stand-in RTX {device}".encode(), major=8, minor=9, totalGlobalMem=self.free)
        return CudaError.cudaSuccess, props

    def cudaMemGetInfo(self):
        self.record("cudaMemGetInfo")
        used = sum(ctypes.sizeof(b) for p, b in self.memory.items() if self.owner.get(p) == self.current)
        return CudaError.cudaSuccess, self.free - used, self.free

    def cudaMalloc(self, nbytes: int):
        self.record("cudaMalloc")
        buffer = (ctypes.c_byte * nbytes)()
        ptr = ctypes.addressof(buffer)
        self.memory[ptr] = buffer
        self.owner[ptr] = self.current
        return CudaError.cudaSuccess, ptr

    def cudaFree(self, ptr: int):
        self.record("cudaFree", ptr)
        del self.memory[ptr]
        return CudaError.cudaSuccess

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind, stream: int):
        device_ptr = dst if kind.name == "cudaMemcpyHostToDevice" else src
        self.record("cudaMemcpyAsync", device_ptr, stream)
        self.launch(stream, lambda: ctypes.memmove(dst, src, nbytes))
        return CudaError.cudaSuccess

    def cudaStreamCreate(self):
        self.record("cudaStreamCreate")
        return CudaError.cudaSuccess, self._handle()

    def cudaStreamDestroy(self, stream: int):
        self.record("cudaStreamDestroy", stream)
        return CudaError.cudaSuccess

    def cudaStreamSynchronize(self, stream: int):
        self.record("cudaStreamSynchronize", stream)
        return CudaError.cudaSuccess

    def cudaStreamBeginCapture(self, stream: int, mode):
        self.record("cudaStreamBeginCapture", stream)
        self.begin_captures += 1
        self.capturing[stream] = []
        return CudaError.cudaSuccess

    def cudaStreamEndCapture(self, stream: int):
        self.record("cudaStreamEndCapture", stream)
        launches = self.capturing.pop(stream)
        if launches is None:
            return CudaError.cudaErrorStreamCaptureInvalidated, None
        graph = self._handle()
        self.graphs[graph] = launches
        return CudaError.cudaSuccess, graph

    def cudaGraphInstantiate(self, graph: int, flags: int):
        self.record("cudaGraphInstantiate", graph)
        return CudaError.cudaSuccess, graph

    def cudaGraphLaunch(self, exec_: int, stream: int):
        self.record("cudaGraphLaunch", exec_, stream)
        for work in self.graphs[exec_]:
            work()
        return CudaError.cudaSuccess

    def cudaGraphExecDestroy(self, exec_: int):
        self.record("cudaGraphExecDestroy", exec_)
        return CudaError.cudaSuccess

    def cudaGraphDestroy(self, graph: int):
        self.record("cudaGraphDestroy", graph)
        self.graphs.pop(graph, None)
        return CudaError.cudaSuccess


class CopyContext:
    """STAND-IN TensorRT execution context: "runs" by copying ``sample`` into ``noise_pred`` on the
    stream. Its context memory need grows with the sample's size (``per_element`` bytes per element,
    as TensorRT's activations do); every call is recorded on the CUDA stand-in, so a call on the
    wrong device is a violation. Method names and parameters are those of TensorRT-RTX's
    ``IExecutionContext`` (tests/test_tensorrt_device_memory.py checks them against the real bindings)."""

    def __init__(self, cudart: CudartStandIn, per_element: int = 64, capturable: bool = True,
                 fail_in_capture: bool = False) -> None:
        self.cudart = cudart
        self.per_element = per_element
        self.capturable = capturable
        self.fail_in_capture = fail_in_capture
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None  # (ptr, size) given with set_device_memory
        self.runs = 0

    def set_input_shape(self, name: str, shape) -> bool:
        self.cudart.record("IExecutionContext.set_input_shape")
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str):
        return self.shapes["sample"] if name == "noise_pred" else self.shapes[name]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.cudart.record("IExecutionContext.set_tensor_address", memory)
        self.addresses[name] = memory
        return True

    def update_device_memory_size_for_shapes(self) -> int:
        self.cudart.record("IExecutionContext.update_device_memory_size_for_shapes")
        return int(np.prod(self.shapes["sample"])) * self.per_element

    def set_device_memory(self, memory: int, size: int) -> None:
        self.cudart.record("IExecutionContext.set_device_memory", memory)
        self.memory = (memory, size)

    def is_stream_capturable(self, stream: int) -> bool:
        self.cudart.record("IExecutionContext.is_stream_capturable", stream)
        return self.capturable

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.cudart.record("IExecutionContext.execute_async_v3", stream_handle)
        if self.memory is None or self.memory[1] < self.update_device_memory_size_for_shapes():
            self.cudart.violations.append(f"enqueue with context memory {self.memory}, too small for {self.shapes['sample']}")
        if self.fail_in_capture and stream_handle in self.cudart.capturing:
            self.cudart.invalidate_capture(stream_handle)
            raise RuntimeError("stand-in: an operation not permitted while the stream is capturing")
        self.runs += 1
        nbytes = int(np.prod(self.shapes["sample"])) * 4
        src, dst = self.addresses["sample"], self.addresses["noise_pred"]
        self.cudart.launch(stream_handle, lambda: ctypes.memmove(dst, src, nbytes))
        return True


UNET_IO = ENGINES["unet"].input_names + ["noise_pred"]


class Mode(enum.Enum):
    """STAND-IN ``tensorrt.TensorIOMode``."""

    INPUT = 1
    OUTPUT = 2


class UNetIO:
    """The tensor I/O of a STAND-IN ICudaEngine with the UNet's contract inputs and output."""

    num_io_tensors = len(UNET_IO)

    def get_tensor_name(self, i):
        return UNET_IO[i]

    def get_tensor_mode(self, name):
        return Mode.OUTPUT if name == "noise_pred" else Mode.INPUT

    def get_tensor_dtype(self, name):
        return "float32"
