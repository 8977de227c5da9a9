"""OpenVINO backend: runs the contract's ONNX engines from the engine cache on the CPU, fp32, bf16 or int8w.

OpenVINO reads the cached fp32 ONNX graphs directly (no second export format). The engines whose
shapes follow the image size (UNet, VAE decoder) are compiled per static input shape: one compiled
model per (engine, shapes), kept in a small LRU, so the sampler loop runs a static plan. The others
(text encoder, image encoder, projector, IMR) run once per request and are compiled once from the
graph's path with their dynamic axes; the sized ones from a graph file per shape
(``openvino_graphs.py``). Either way a warm start imports the compiled plan without reading the
ONNX weights. Compiled plans go to OpenVINO's model cache inside the engine's cache entry
(``<entry>/openvino``), so a second start imports them instead of compiling again. :meth:`OpenVinoBackend.release` drops
the plans of engines that will not run for a while (the identity engines while sampling).

bf16 (only on CPUs with bf16 units) is a per-model precision hint: the UNet and the VAE decoder run
in bf16, the once-per-request engines (text, image encoder, projector, IMR) stay f32. Per-node f32
islands cannot be asked of OpenVINO's CPU plugin: its ``disable_fp16_compression`` marks do not
survive the plugin's fusions (measured: marking every node changes no bit), so f32 is kept per model.

int8w (opt-in, for CPUs without bf16 units) runs the UNet with its weights compressed to 8 bits by
NNCF and computes in f32 (``openvino_int8w.py``); the other engines stay f32.

Neither this module nor anything it runs at inference imports torch or transformers.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

import numpy as np

from ..contract import ENGINES, LORA_ENGINES
from ..modelfiles.paths import ModelPaths
from .base import Backend, EngineCall
from .openvino_cache import check_blobs, drop_unkeyed_blobs, record_blobs
from .openvino_graphs import graph_name, static_graph
from .openvino_int8w import INT8W_ENGINES, compressed_model, nncf_version

if TYPE_CHECKING:
    import openvino as ov

    from dynamicid_rt.export.cache import CacheEntry
    from dynamicid_rt.export.progress import BuildProgress
    from dynamicid_rt.modelfiles.lora import LoraRef

log = logging.getLogger(__name__)

PLANS_PER_ENGINE = 2  # compiled shapes kept per engine: e.g. the 2-image CFG UNet and one other size


def telemetry_off() -> None:
    """No OpenVINO usage telemetry from this process. ``import openvino`` sends an "import" event
    and writes a client id under ``~/intel/`` through the optional ``openvino-telemetry`` package,
    unless the user ran its ``opt_in_out --opt_out`` (a setting for every program of theirs, not ours
    to change). OpenVINO falls back to a no-op stub when that package cannot be imported, and a
    ``None`` entry in ``sys.modules`` makes its import fail: only this process is affected."""
    if "openvino" not in sys.modules:  # too late once OpenVINO is loaded (e.g. by an embedding app)
        sys.modules.setdefault("openvino_telemetry", None)


def optimization_capabilities(core: "ov.Core | None" = None) -> list[str]:
    """What OpenVINO's CPU plugin reports it can do here ("BF16", "INT8", "FP32", ...)."""
    if core is None:
        telemetry_off()
        import openvino as ov

        core = ov.Core()
    try:
        return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:
        return []


class _Plan:
    """One engine compiled for one set of static input shapes, with a reusable infer request."""

    def __init__(self, engine: str, compiled: "ov.CompiledModel") -> None:
        self.engine = engine
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        # A port can carry several tensor names (OpenVINO adds internal ones); key by every name.
        self.types = {name: port.get_element_type().to_dtype() for port in compiled.inputs for name in port.get_names()}

    def feed(self, request: "ov.InferRequest", inputs: Mapping[str, np.ndarray]) -> None:
        import openvino as ov

        for name, value in inputs.items():  # names checked against the contract (Backend.check_inputs)
            request.set_tensor(name, ov.Tensor(np.ascontiguousarray(value, dtype=self.types[name])))

    def outputs(self, request: "ov.InferRequest") -> dict[str, np.ndarray]:
        return {name: request.get_tensor(name).data.copy() for name in ENGINES[self.engine].output_names}


class OpenVinoBackend(Backend):
    """Runs every engine with OpenVINO on the CPU. ``device`` and ``precision`` (``"fp32"``, or
    ``"bf16"`` on CPUs with bf16 units, or ``"int8w"``) as the registry resolved them (``create_backend``), taken as
    given; ``engine_dir``: the ONNX cache (default: the user cache)."""

    name = "openvino"

    def __init__(
        self, paths: ModelPaths, device: str = "cpu", precision: str = "fp32", engine_dir: Path | None = None,
        build_progress: "BuildProgress | None" = None,
    ) -> None:
        telemetry_off()
        import openvino as ov

        from dynamicid_rt.export.cache import build_engines, default_engines

        self.core = ov.Core()
        if precision == "int8w":
            nncf_version()  # int8w needs NNCF: said before any export
        # OpenVINO reads the fp32 graphs; bf16 is a compile-time hint, not a second graph.
        entries = build_engines(paths, engine_dir, "fp32", default_engines(paths), progress=build_progress)
        self._entries: dict[str, CacheEntry] = {e.engine: e for e in entries}
        self._engine_dir = entries[0].path.parent
        self._lora_keys: list[list[list]] = [[], []]  # cache_key per LORA_ENGINES engine: none merged
        super().__init__(entries[0].dims, has_imr=paths.has_imr)
        self.paths = paths
        self.device = device
        self.precision = precision
        self._plans: OrderedDict[tuple[str, tuple], _Plan] = OrderedDict()

    def set_loras(self, loras: Sequence["LoraRef"]) -> None:
        """Compile the unet and text_encoder from their LoRA'd fp32 cache entries (built on first use
        of a set, see ``export/lora_entries.py``); the plain entries with no LoRAs."""
        from dynamicid_rt.export.lora_entries import lora_entries
        from dynamicid_rt.modelfiles.lora import cache_key, load_loras
        from dynamicid_rt.modelfiles.lora_fit import check_loras_fit

        files = load_loras(loras)
        check_loras_fit(self.paths, files)  # before any export
        keys = [cache_key(files, engine) for engine in LORA_ENGINES]
        if keys == self._lora_keys:
            return  # the same set: every session (and compiled plan) is reused
        entries = lora_entries(self.paths, self._engine_dir, "fp32", files)
        self._lora_keys = keys
        for engine, entry in entries.items():
            if self._entries[engine].path != entry.path:
                self._entries[engine] = entry
                for key in [k for k in self._plans if k[0] == engine]:
                    del self._plans[key]

    def engine_precision(self, engine: str) -> str:
        if self.precision == "int8w" and engine in INT8W_ENGINES:
            return "int8w"
        return "bf16" if self.precision == "bf16" and ENGINES[engine].bf16 else "f32"

    def _entry(self, engine: str) -> "CacheEntry":
        self.check_engine(engine)
        entry = self._entries.get(engine)
        if entry is None:
            raise self.unavailable(engine)
        return entry

    def _plan(self, engine: str, inputs: Mapping[str, np.ndarray]) -> _Plan:
        entry = self._entry(engine)
        spec = self.check_inputs(engine, inputs)
        # One dynamic plan for the once-per-request engines; a static plan per shape for the sized ones.
        shapes = tuple((n, tuple(np.shape(inputs[n]))) for n in spec.input_names) if spec.sized else ()
        key = (engine, shapes)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        plan = _Plan(engine, self._compile(entry, dict(shapes)))
        self._plans[key] = plan
        same_engine = [k for k in self._plans if k[0] == engine]
        if len(same_engine) > PLANS_PER_ENGINE:
            del self._plans[same_engine[0]]  # least recently used shape of this engine
        return plan

    def _compile(self, entry: "CacheEntry", shapes: dict[str, tuple[int, ...]]) -> "ov.CompiledModel":
        precision = self.engine_precision(entry.engine)
        # One cache folder per precision: OpenVINO's cache key does not tell an f32 blob from a bf16
        # one of the same graph (measured: bf16 imported the f32 blob and produced NaN). A sized
        # engine's plans go one folder deeper, per shape, beside that shape's graph file.
        cache = entry.path / "openvino" / precision
        if shapes:
            drop_unkeyed_blobs(cache, entry.engine)
            cache = cache / graph_name(shapes)
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",  # int8w: f32 on int8 weights
            "PERFORMANCE_HINT": "LATENCY",
            "CACHE_DIR": str(cache),
        }
        started = time.perf_counter()
        check_blobs(cache, entry.engine)  # OpenVINO itself would recompile a damaged blob without a word
        compiled = self._compile_with(entry, shapes, precision, config)
        record_blobs(cache)
        what = f"for {_shape_text(shapes)}" if shapes else "with dynamic shapes"
        log.info("%s: compiled %s (%s) in %.1f s", entry.engine, what, precision, time.perf_counter() - started)
        return compiled

    def _compile_with(
        self, entry: "CacheEntry", shapes: dict[str, tuple[int, ...]], precision: str, config: dict[str, str]
    ) -> "ov.CompiledModel":
        # Compiled from a file, OpenVINO keys its cache by the file and imports the plan without
        # reading the graph; from a model object it must read and hash the whole graph first.
        if not shapes:  # (int8w compresses only sized engines, which always have shapes)
            return self.core.compile_model(str(entry.onnx), "CPU", config)
        graph = static_graph(entry, shapes) if precision != "int8w" else None
        if graph is not None:
            return self.core.compile_model(str(graph), "CPU", config)
        model = compressed_model(self.core, entry) if precision == "int8w" else self.core.read_model(str(entry.onnx))
        model.reshape({name: list(shape) for name, shape in shapes.items() if name in _input_names(model)})
        return self.core.compile_model(model, "CPU", config)

    def run(self, engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        plan = self._plan(engine, inputs)
        plan.feed(plan.request, inputs)
        plan.request.infer()
        return plan.outputs(plan.request)

    def bind(self, engine: str, constants: Mapping[str, np.ndarray]) -> EngineCall:
        """Set ``constants`` once on an infer request of their own; each call then sets only the
        changing inputs (latents, timestep, boost). The plan is chosen at the first call, when
        every shape is known."""
        self.check_inputs(engine, constants, complete=False)
        return _BoundCall(self, engine, dict(constants))

    def describe(self) -> dict[str, str]:
        import openvino as ov

        entry = next(iter(self._entries.values()))
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "openvino": ov.get_version(),
            "engine_dir": str(entry.path.parent),
        }

    def release(self, engines: Collection[str]) -> None:
        for key in [k for k in self._plans if k[0] in engines]:
            del self._plans[key]

    def close(self) -> None:
        self._plans.clear()


class _BoundCall:
    """One engine with some inputs set once (see :meth:`OpenVinoBackend.bind`)."""

    def __init__(self, backend: OpenVinoBackend, engine: str, constants: dict[str, np.ndarray]) -> None:
        self.backend = backend
        self.engine = engine
        self.constants = constants
        self.plan: _Plan | None = None
        self.request: Any = None
        self.shapes: dict[str, tuple[int, ...]] = {}

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = {n: tuple(np.shape(v)) for n, v in inputs.items()}
        if self.plan is None or shapes != self.shapes:
            self.plan = self.backend._plan(self.engine, {**self.constants, **inputs})
            self.request = self.plan.compiled.create_infer_request()
            self.plan.feed(self.request, self.constants)
            self.shapes = shapes
        self.plan.feed(self.request, inputs)
        self.request.infer()
        return self.plan.outputs(self.request)


def _input_names(model: "ov.Model") -> set[str]:
    return {name for port in model.inputs for name in port.get_names()}


def _shape_text(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in shapes.items())
