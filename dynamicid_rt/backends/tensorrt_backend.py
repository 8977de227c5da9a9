"""TensorRT backends: run the contract engines as TensorRT plans from the plan cache (``engines/``).

Two backends share this class, one per TensorRT library: ``tensorrt`` (data-center TensorRT 10/11)
and ``tensorrt-rtx`` (TensorRT for RTX 1.x); what differs between them is the library's declaration
in ``engines/library.py``, which the engine layer reads.

Every engine gets its dynamic plan; static plans built with ``build-engines --static WxH`` are
loaded too and used, with CUDA-graph replay, whenever a call's shapes fit them. All engines share
one device-memory block (they run one at a time on one stream), sized to the largest request shape
seen so far and grown on demand (``engines/context_memory.py``); a plan whose largest shapes could
never fit the card's free memory is refused at load. ``bind()``
keeps the constant inputs resident, so each sampler step uploads only the latent, the timestep and
the boost. On TensorRT-RTX each plan's runtime cache (its just-in-time kernels for this GPU) is
saved after the first generation and when it grew. Device memory goes through cuda-python: neither
torch nor onnxruntime is imported. CUDA's current device is per host thread, so every entry point
(run, a bound call, saving the caches, close) makes the backend's device current on the thread
calling it: a server builds the pipeline on one thread and generates on another.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..contract import ENGINES
from ..errors import DynamicIDError, NumericalError
from ..modelfiles.paths import ModelPaths
from .base import Backend, EngineCall
from .registry import parse_device

if TYPE_CHECKING:
    from dynamicid_rt.export.progress import BuildProgress

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    """``device`` (``"cuda"`` or ``"cuda:N"``) and ``precision`` as the registry resolved them
    (``create_backend``), taken as given; ``engine_dir``: the ONNX cache, which holds the plans too
    (default: the user cache). Missing plans are built first."""

    name = "tensorrt"  # also the backend whose library (engines/library.py) this class drives

    def __init__(
        self, paths: ModelPaths, device: str = "cuda", precision: str = "fp16", engine_dir: Path | None = None,
        build_progress: "BuildProgress | None" = None,
    ) -> None:
        from dynamicid_rt.engines import cuda
        from dynamicid_rt.engines.build import build_plans, find_static_plans
        from dynamicid_rt.engines.builder import BuildSettings
        from dynamicid_rt.engines.context_memory import ContextMemory, ContextMemoryError, plans_that_fit
        from dynamicid_rt.engines.engine import Engine
        from dynamicid_rt.engines.library import load
        from dynamicid_rt.engines.profiles import engine_profile
        from dynamicid_rt.engines.runtime_cache import RuntimeCacheFile
        from dynamicid_rt.export.cache import default_engine_dir, default_engines

        lib = load(self.name)
        _, self.device_id = parse_device(device)
        cuda.set_device(self.device_id)
        self.precision = precision
        engine_dir = Path(engine_dir) if engine_dir is not None else default_engine_dir(paths)
        self.gpu = cuda.gpu_info(self.device_id)
        settings = BuildSettings(targets=lib.spec.targets_for_gpu(self.gpu.name, self.gpu.compute_capability))
        plans = build_plans(
            paths, engine_dir, self.precision, default_engines(paths), settings=settings, lib=lib, gpu=self.gpu,
            export_progress=build_progress,
        )
        dims = plans[0].entry.dims
        super().__init__(dims, has_imr=paths.has_imr)
        self.lib = lib
        self.engine_dir = engine_dir
        self.stream = cuda.Stream()
        runtime = lib.trt.Runtime(_logger(lib.trt))
        self.engines: dict[str, list[Any]] = {}
        for plan in plans:
            variants = [plan] + find_static_plans(engine_dir, plan.entry, lib, self.gpu, settings)
            self.engines[plan.engine] = []
            for variant in reversed(variants):  # static plans first: preferred when shapes fit
                size = None if variant.tag == "dynamic" else _static_size(variant.tag)
                stored = RuntimeCacheFile.for_plan(
                    engine_dir, lib, self.gpu, f"{plan.engine}-{plan.precision}-{variant.tag}", variant.manifest["plan"]["sha256"]
                )
                profile = engine_profile(ENGINES[plan.engine], dims, size)
                engine = Engine(lib, plan.engine, variant.path, profile, runtime_cache=stored)
                engine.load(runtime)
                self.engines[plan.engine].append(engine)
        loaded = [e for variants in self.engines.values() for e in variants]
        try:  # free memory is read with every plan's weights resident
            self.engines = plans_that_fit(self.engines, cuda.memory_info()[0], self.gpu.name, self.name)
        except ContextMemoryError:
            self.engines = {}
            self.stream.destroy()
            raise
        finally:  # refused plans (all of them, on a refusal) give their memory back
            for engine in loaded:
                if engine not in self.engines.get(engine.name, ()):
                    engine.release()
        self.memory = ContextMemory()
        loaded = [e for variants in self.engines.values() for e in variants]
        for engine in loaded:
            engine.activate(self.memory)
        log.info(
            "%s: %d plans on %s; shared context memory sized per request, at most %.0f MiB", lib.label, len(loaded),
            self.gpu.name, max(e.device_memory_size for e in loaded) / 2**20,
        )

    def pick(self, engine: str, shapes: Mapping[str, tuple[int, ...]]) -> Any:
        """The plan for these shapes: a static plan when they fit one, else the dynamic plan."""
        from dynamicid_rt.engines.profiles import out_of_profile

        self.check_engine(engine)
        if engine not in self.engines:
            raise self.unavailable(engine)
        for candidate in self.engines[engine]:
            if not out_of_profile(candidate.profile, shapes):
                return candidate
        problems = out_of_profile(self.engines[engine][-1].profile, shapes)
        raise DynamicIDError(f"{engine}: the request is outside the {self.name} plan's shape range ({'; '.join(problems)})")

    def use_device(self) -> None:
        """Make this backend's GPU current on the calling thread (CUDA's current device is per thread)."""
        from dynamicid_rt.engines import cuda

        cuda.set_device(self.device_id)

    def run(self, engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = _contract_inputs(engine, inputs)
        plan = self.pick(engine, {k: v.shape for k, v in arrays.items()})
        self.use_device()
        plan.allocate({k: v.shape for k, v in arrays.items()})
        plan.owner = None  # a bound call's constants get overwritten here
        return self._finish(engine, plan.infer(arrays, self.stream))

    def bind(self, engine: str, constants: Mapping[str, np.ndarray]) -> EngineCall:
        """Upload ``constants`` once; each call uploads only the other inputs (see :class:`_Bound`)."""
        self.check_inputs(engine, constants, complete=False)
        return _Bound(self, engine, {k: np.ascontiguousarray(v) for k, v in constants.items()})

    def _finish(self, engine: str, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = {name: outputs[name].astype(np.float32, copy=False) for name in ENGINES[engine].output_names}
        for name, value in outputs.items():
            if not np.isfinite(value).all():
                raise NumericalError(f"the {self.name} {engine} engine produced NaN/inf in {name!r}; try --precision fp32")
        return outputs

    def generation_done(self) -> None:
        """After the first generation (and later ones that compiled more), store the runtime caches."""
        self.use_device()
        saved = [e.name for variants in self.engines.values() for e in variants if e.save_runtime_cache()]
        if saved:
            log.info("%s: runtime cache saved for %s", self.lib.label, ", ".join(sorted(set(saved))))

    def describe(self) -> dict[str, str]:
        static = sorted({e.plan_path.stem for v in self.engines.values() for e in v} - {"dynamic"})
        return {
            "backend": self.name,
            "device": f"cuda:{self.device_id} ({self.gpu.name}, sm {self.gpu.compute_capability})",
            "precision": self.precision,
            "tensorrt": self.lib.label,
            "static plans": ", ".join(static) or "none",
            "context memory": f"{self.memory.nbytes / 2**20:.0f} MiB (grows with the request shape)",
            "engine_dir": str(self.engine_dir),
        }

    def close(self) -> None:
        if getattr(self, "memory", None) is None:
            return
        self.generation_done()  # makes the device current for the frees below
        for variants in self.engines.values():
            for engine in variants:
                engine.release()
        self.engines.clear()
        self.memory.free()
        self.stream.destroy()
        self.memory = None


class TensorRTRTXBackend(TensorRTBackend):
    """The same backend on TensorRT for RTX: portable plans, runtime cache, the library's CUDA graphs."""

    name = "tensorrt-rtx"


class _Bound:
    """One engine with constant inputs resident on the device; replays a CUDA graph on static plans."""

    def __init__(self, backend: TensorRTBackend, engine: str, constants: dict[str, np.ndarray]) -> None:
        self.backend = backend
        self.engine = engine
        self.constants = constants  # host copies, to upload again if buffers move

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = _contract_inputs(self.engine, {**self.constants, **inputs})
        shapes = {k: v.shape for k, v in arrays.items()}
        plan = self.backend.pick(self.engine, shapes)
        self.backend.use_device()
        moved = plan.allocate(shapes)
        if moved or plan.owner is not self:
            plan.upload({k: arrays[k] for k in self.constants}, self.backend.stream)
            plan.owner = self
        varying = {k: v for k, v in arrays.items() if k not in self.constants}
        static = plan.plan_path.stem != "dynamic"
        return self.backend._finish(self.engine, plan.infer(varying, self.backend.stream, graph=static))


def _contract_inputs(engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    spec = Backend.check_inputs(engine, inputs)
    return {n: np.asarray(inputs[n]) for n in spec.input_names}


def _static_size(tag: str) -> Any:
    from dynamicid_rt.engines.profiles import StaticSize

    return StaticSize.parse(tag.removeprefix("static-"))


def _logger(trt: Any) -> Any:
    from dynamicid_rt.engines.builder import make_logger

    return make_logger(trt)
