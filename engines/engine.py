"""One TensorRT plan at run time, with explicit verbs: load → activate → allocate → infer → release.

- ``load`` deserializes the plan;
- ``activate`` creates the execution context on memory the caller owns: the backend hands every
  engine the same :class:`~.context_memory.ContextMemory`, since engines run one at a time;
- ``allocate`` sets the input shapes, sizes the shared context memory for them, and makes the I/O
  buffers big enough (addresses are kept while shapes only shrink or repeat, so uploaded constants
  stay valid);
- ``infer`` uploads the given inputs, runs, and downloads the outputs; with ``graph=True`` the run
  is captured once as a CUDA graph and replayed while shapes and addresses stay the same. Capture
  is tried only where the context says the stream is capturable; shapes whose capture fails run
  as plain enqueues from then on (one log line, no second try);
- ``release`` frees buffers, graph and context.

What differs between libraries comes from the declaration (``library.TensorRTLibrary``): how the
context is given its memory, and who captures CUDA graphs. TensorRT-RTX's contexts are made from an
``IRuntimeConfig`` that turns on its own whole-graph capture (which also covers dynamic shapes, so
our capture is not used), its runtime cache, and the LAZY kernel specialisation: a new shape runs
at once on generic kernels while kernels specialised for it compile in the background, so the
first image never waits for compilation; the runtime cache then has them ready from the start of
the next run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dynamicid_rt.errors import DynamicIDError

from .context_memory import ContextMemory
from .cuda import CudaGraph, DeviceBuffer, Stream
from .library import LIBRARY_CAPTURE, RUNTIME_CACHE, USER_MANAGED, LoadedTensorRT
from .profiles import Profile, Shape
from .runtime_cache import RuntimeCacheFile, attach

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self, lib: LoadedTensorRT, name: str, plan_path: Path, profile: Profile, runtime_cache: RuntimeCacheFile | None = None
    ) -> None:
        self.lib = lib
        self.trt = lib.trt
        self.name = name
        self.plan_path = Path(plan_path)
        self.profile = profile  # what the plan was built for: callers pick plans by it
        self.engine: Any = None
        self.context: Any = None
        self.buffers: dict[str, DeviceBuffer] = {}
        self.shapes: dict[str, Shape] = {}
        self.graph: CudaGraph | None = None
        self.uncapturable: set[tuple[tuple[str, Shape], ...]] = set()  # input shapes whose capture failed
        self.memory: ContextMemory | None = None
        self.memory_at: tuple[int, int] | None = None  # (address, size) the context was last given
        self.owner: object | None = None  # the bound call whose constants sit in the input buffers
        self.stored_cache = runtime_cache
        self.runtime_config: Any = None
        self.runtime_cache: Any = None

    # -- load / activate -----------------------------------------------------------------------

    def load(self, runtime: Any) -> None:
        self.engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise DynamicIDError(
                f"TensorRT cannot load {self.plan_path} (corrupt, or built by another TensorRT); rebuild it with "
                "`dynamicid-rt build-engines --backend tensorrt --force`"
            )
        self.io = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.io if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]

    @property
    def device_memory_size(self) -> int:
        """Scratch memory the context needs at the profile's largest shapes (the worst case)."""
        size = getattr(self.engine, "device_memory_size_v2", None)
        return int(size if size is not None else self.engine.device_memory_size)

    def memory_for_shapes(self) -> int:
        """Scratch memory the context needs at the input shapes set now: the library's per-shape
        answer where it has one, else the worst case."""
        update = getattr(self.context, "update_device_memory_size_for_shapes", None)
        return int(update()) if update is not None else self.device_memory_size

    def activate(self, memory: ContextMemory) -> None:
        """Create the execution context with user-managed memory, to run on ``memory`` (shared by
        engines, sized per request shape by :meth:`allocate`)."""
        trt, spec = self.trt, self.lib.spec
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        if spec.cuda_graphs == LIBRARY_CAPTURE or spec.kernel_cache == RUNTIME_CACHE:
            config = self.engine.create_runtime_config()
            config.set_execution_context_allocation_strategy(strategy.USER_MANAGED)
            if spec.cuda_graphs == LIBRARY_CAPTURE:
                config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            config.dynamic_shapes_kernel_specialization_strategy = trt.DynamicShapesKernelSpecializationStrategy.LAZY
            if spec.kernel_cache == RUNTIME_CACHE and self.stored_cache is not None:
                self.runtime_cache = attach(config, self.stored_cache, self.name)
            self.runtime_config = config  # the context uses it for as long as it lives
            self.context = self.engine.create_execution_context(config)
        elif spec.context_memory == USER_MANAGED:
            self.context = self.engine.create_execution_context(strategy.USER_MANAGED)
        else:
            self.context = self.engine.create_execution_context_without_device_memory()
        if self.context is None:
            raise DynamicIDError(f"{spec.name} could not create an execution context for {self.name}")
        self.memory = memory
        memory.attach(self)

    def point_memory(self, block: DeviceBuffer) -> None:
        """Run the context on ``block`` (again, after it grew); a captured graph held the old address."""
        if self.lib.spec.context_memory == USER_MANAGED:
            self.context.set_device_memory(block.ptr, block.nbytes)
        else:
            self.context.device_memory = block.ptr
        self.memory_at = (block.ptr, block.nbytes)
        self._drop_graph()

    def save_runtime_cache(self) -> bool:
        """Store the runtime cache when it grew; returns whether it wrote."""
        if self.runtime_cache is None or self.stored_cache is None:
            return False
        return self.stored_cache.save(bytes(self.runtime_cache.serialize()))

    # -- allocate / infer ----------------------------------------------------------------------

    def allocate(self, shapes: Mapping[str, Shape]) -> bool:
        """Set the input shapes; returns True when a buffer moved (uploaded inputs must be redone)."""
        moved = False
        if any(self.shapes.get(n) != tuple(shapes[n]) for n in self.inputs) or self.memory_at is None:
            self._drop_graph()
            for name in self.inputs:
                self.shapes[name] = tuple(shapes[name])
                if not self.context.set_input_shape(name, self.shapes[name]):
                    raise DynamicIDError(f"{self.name}: input {name} shape {list(self.shapes[name])} is outside the plan's profile")
            self.memory.fit(self, self.memory_for_shapes())
        for name in self.io:
            shape = tuple(self.context.get_tensor_shape(name))
            self.shapes[name] = shape
            nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtype(name).itemsize
            buffer = self.buffers.setdefault(name, DeviceBuffer())
            if buffer.ensure(max(nbytes, 1)):
                moved = True
                self.context.set_tensor_address(name, buffer.ptr)
        if moved:
            self._drop_graph()
            self.owner = None
        return moved

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def upload(self, inputs: Mapping[str, np.ndarray], stream: Stream) -> None:
        for name, value in inputs.items():
            self.buffers[name].upload(np.asarray(value, self.dtype(name)), int(stream))

    def infer(self, inputs: Mapping[str, np.ndarray], stream: Stream, graph: bool = False) -> dict[str, np.ndarray]:
        """Upload ``inputs`` (the others keep what was uploaded before), run, return all outputs."""
        self.upload(inputs, stream)
        graph = graph and self.lib.spec.cuda_graphs != LIBRARY_CAPTURE  # the library replays its own
        graph = graph and self._input_shapes() not in self.uncapturable
        if graph and self.graph is not None:
            self.graph.launch(stream)
        else:
            self._enqueue(stream)
            if graph:  # TensorRT does its deferred per-shape work on the first run: capture after it
                self.graph = self._capture(stream)
        outputs = [n for n in self.io if n not in self.inputs]
        return {name: self.buffers[name].download(self.shapes[name], self.dtype(name), int(stream)) for name in outputs}

    def _enqueue(self, stream: Stream) -> None:
        if not self.context.execute_async_v3(int(stream)):
            raise DynamicIDError(f"{self.lib.spec.name} failed to run {self.name} (see the log above)")

    def _capture(self, stream: Stream) -> CudaGraph | None:
        """A CUDA graph of one run at the current shapes, or None (then these shapes are not tried again)."""
        capturable = getattr(self.context, "is_stream_capturable", None)
        if capturable is not None and not capturable(int(stream)):
            reason = "the execution context says this stream is not capturable"
        else:
            try:
                return CudaGraph(stream, lambda: self._enqueue(stream))
            except (DynamicIDError, RuntimeError) as exc:  # RuntimeError: what the TensorRT bindings raise
                reason = f"{type(exc).__name__}: {exc}"
        self.uncapturable.add(self._input_shapes())
        log.warning("%s: no CUDA graph at shapes %s (%s); these shapes run without one", self.name,
                    {n: list(s) for n, s in self._input_shapes()}, reason)
        return None

    def _input_shapes(self) -> tuple[tuple[str, Shape], ...]:
        return tuple((name, self.shapes[name]) for name in self.inputs)

    def _drop_graph(self) -> None:
        if self.graph is not None:
            self.graph.destroy()
            self.graph = None

    # -- release -------------------------------------------------------------------------------

    def release(self) -> None:
        self._drop_graph()
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers.clear()
        self.memory_at = None
        self.context = None
        self.runtime_config = None
        self.runtime_cache = None
        self.engine = None
