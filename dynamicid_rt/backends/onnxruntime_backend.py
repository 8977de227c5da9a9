"""ONNX Runtime backend: runs the contract engines from the engine cache (CPU, CUDA, TensorRT).

Neither this module nor anything it runs at inference imports torch or diffusers: with a built
engine cache the backend works where only onnxruntime is installed. Engines missing from the
cache are exported first, which imports the exporter (and torch) lazily.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

import numpy as np

from ..contract import ENGINES, LORA_ENGINES
from ..errors import NumericalError
from ..modelfiles.paths import ModelPaths
from .base import Backend, EngineCall
from .ort_optimized import SessionMaker, cpu_session
from .ort_providers import CPU, ORT_LOG_SEVERITY, TENSORRT, check_available, check_session, log_tensorrt_build, requested, session_providers
from .registry import parse_device

if TYPE_CHECKING:
    import onnxruntime as ort

    from dynamicid_rt.export.cache import CacheEntry
    from dynamicid_rt.export.progress import BuildProgress
    from dynamicid_rt.modelfiles.lora import LoraRef

log = logging.getLogger(__name__)

_SESSION_LOCK = threading.Lock()  # guards each backend's table of per-engine locks


def _graph_load_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises for a graph file it cannot parse (truncated, overwritten)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph, InvalidProtobuf, NoSuchFile

    return (InvalidProtobuf, InvalidGraph, NoSuchFile)


def _session_options() -> "ort.SessionOptions":
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = ORT_LOG_SEVERITY  # a provider that fails to load says why
    return options


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OnnxRuntimeBackend(Backend):
    """Runs every engine with ONNX Runtime. ``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``) and
    ``precision`` as the registry resolved them (``create_backend``), taken as given; ``engine_dir``:
    the ONNX cache (default: the user cache); ``trt_provider``: run through ORT's TensorRT provider
    (CUDA only; the first build takes minutes). Every session is checked to run on the providers
    asked for (see :mod:`.ort_providers`)."""

    name = "onnxruntime"

    def __init__(
        self, paths: ModelPaths, device: str = "cpu", precision: str = "fp32", engine_dir: Path | None = None,
        trt_provider: bool = False, build_progress: "BuildProgress | None" = None,
    ) -> None:
        import onnxruntime as ort

        from dynamicid_rt.export.cache import build_engines, default_engines

        available = ort.get_available_providers()
        kind, device_id = parse_device(device)
        check_available(kind, trt_provider, available, device)  # what this onnxruntime wheel offers
        # Reuses valid entries without touching torch; builds (and imports torch) only what is missing.
        entries = build_engines(paths, engine_dir, precision, default_engines(paths), progress=build_progress)
        self._entries: dict[str, CacheEntry] = {e.engine: e for e in entries}
        self._engine_dir = entries[0].path.parent
        self._lora_keys: list[list[list]] = [[], []]  # cache_key per LORA_ENGINES engine: none merged
        super().__init__(entries[0].dims, has_imr=paths.has_imr)
        self.paths = paths
        self.device = device
        self.precision = precision
        self._device_type = kind
        self._device_id = device_id
        self._available = available
        self.trt_provider = trt_provider
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._open_locks: dict[str, threading.Lock] = {}
        self._preparing: list[threading.Thread] = []

    def _providers(self, entry: "CacheEntry") -> list[Any]:
        fp16 = entry.manifest.get("graph_precision", self.precision) == "fp16"
        return session_providers(self._device_type, self._device_id, fp16, self.trt_provider, entry.path / "tensorrt")

    def _open_lock(self, engine: str) -> threading.Lock:
        """One lock per engine: two threads' first calls open (or rebuild) an engine once, and one
        engine opening (the UNet, prepared in the background) does not hold up another's."""
        with _SESSION_LOCK:
            return self._open_locks.setdefault(engine, threading.Lock())

    def _session(self, engine: str) -> "ort.InferenceSession":
        self.check_engine(engine)
        with self._open_lock(engine):
            return self._session_locked(engine)

    def prepare(self, engines: Collection[str]) -> None:
        """Open the sessions of ``engines`` in background threads (ONNX Runtime releases the GIL
        while it loads a graph), so the UNet loads while the text encoder runs."""
        for engine in engines:
            if engine in self._entries and engine not in self._sessions:
                thread = threading.Thread(target=self._prepare_one, args=(engine,), name=f"prepare-{engine}", daemon=True)
                thread.start()
                self._preparing.append(thread)

    def _prepare_one(self, engine: str) -> None:
        try:
            self._session(engine)
        except Exception as exc:  # the run that needs it opens it again and raises there
            log.debug("%s: loading ahead failed (%s); it loads when it runs", engine, exc)

    def _session_locked(self, engine: str) -> "ort.InferenceSession":
        session = self._sessions.get(engine)
        if session is None:
            entry = self._entries.get(engine)
            if entry is None:
                raise self.unavailable(engine)
            session = self._sessions[engine] = self._open(entry)
        return session

    def _open(self, entry: "CacheEntry") -> "ort.InferenceSession":
        """A session on ``entry``'s graph, checked to run on the providers asked for. On the CPU,
        from ONNX Runtime's optimized graph stored in the entry (made by the first session)."""
        import onnxruntime as ort

        providers = self._providers(entry)
        if TENSORRT in requested(providers):
            log_tensorrt_build(entry.engine, entry.path / "tensorrt")

        def make(graph: Path, options: "ort.SessionOptions") -> "ort.InferenceSession":
            return ort.InferenceSession(str(graph), options, providers=providers)

        try:
            session = self._new_session(entry, providers, make)
        except _graph_load_errors() as exc:  # a graph that passed its hash check but will not parse
            entry = self._rebuild(entry, exc)
            session = self._new_session(entry, providers, make)
        check_session(entry.engine, requested(providers), session.get_providers())
        log.info("%s: loaded %s with %s", entry.engine, self._graph(entry), ", ".join(session.get_providers()))
        return session

    def _new_session(self, entry: "CacheEntry", providers: list[Any], make: SessionMaker) -> "ort.InferenceSession":
        if requested(providers) == [CPU]:
            return cpu_session(entry, _session_options, make)
        return make(self._graph(entry), _session_options())

    def _graph(self, entry: "CacheEntry") -> Path:
        """The CUDA provider runs the entry's fused-attention graph; TensorRT's provider cannot import
        MultiHeadAttention (it would split the graph), so it reads the plain one, like the CPU."""
        return entry.cuda_onnx if self._device_type == "cuda" and not self.trt_provider else entry.onnx

    def _rebuild(self, entry: "CacheEntry", exc: Exception) -> "CacheEntry":
        from dynamicid_rt.export.cache import build_engines

        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("%s: corrupt engine %s (%s), rebuilding", entry.engine, entry.onnx, reason)
        (fresh,) = build_engines(self.paths, entry.path.parent, entry.precision, [entry.engine], force=True)
        if self._entries.get(entry.engine) is entry:
            self._entries[entry.engine] = fresh
        return fresh

    def set_loras(self, loras: Sequence["LoraRef"]) -> None:
        """Run the unet and text_encoder from their LoRA'd cache entries (built on first use of a
        set, see ``export/lora_entries.py``); the plain entries with no LoRAs."""
        from dynamicid_rt.export.lora_entries import lora_entries
        from dynamicid_rt.modelfiles.lora import cache_key, load_loras
        from dynamicid_rt.modelfiles.lora_fit import check_loras_fit

        files = load_loras(loras)
        check_loras_fit(self.paths, files)  # before any export
        keys = [cache_key(files, engine) for engine in LORA_ENGINES]
        if keys == self._lora_keys:
            return  # the same set: every session (and compiled plan) is reused
        entries = lora_entries(self.paths, self._engine_dir, self.precision, files)
        self._lora_keys = keys
        for engine, entry in entries.items():
            with self._open_lock(engine):
                if self._entries[engine].path != entry.path:
                    self._entries[engine] = entry
                    self._sessions.pop(engine, None)

    def run_fp32(self, engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``run`` on the engine's fp32 graph: the entry's own when it is fp32 (the VAE in fp16
        caches), else the fp32 cache entry, built on first use."""
        entry = self._entries.get(engine)
        if entry is None or entry.manifest.get("graph_precision", entry.precision) == "fp32":
            return self.run(engine, inputs)
        key = f"{engine}:fp32"
        if key not in self._sessions:
            from dynamicid_rt.export.cache import build_engines

            (fp32,) = build_engines(self.paths, entry.path.parent, "fp32", [engine])
            self._sessions[key] = self._open(fp32)
        session = self._sessions[key]
        names = ENGINES[engine].output_names
        return dict(zip(names, session.run(names, self._feed(session, engine, inputs))))

    @staticmethod
    def _feed(session: "ort.InferenceSession", engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        Backend.check_inputs(engine, inputs)
        feed = {}
        for meta in session.get_inputs():
            feed[meta.name] = np.ascontiguousarray(inputs[meta.name], dtype=_ORT_TYPES.get(meta.type, np.float32))
        return feed

    def run(self, engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session(engine)
        names = ENGINES[engine].output_names  # asked for by name: graph names are the contract's
        outputs = dict(zip(names, session.run(names, self._feed(session, engine, inputs))))
        if self.precision == "fp16":
            _check_finite(engine, outputs)
        return outputs

    def bind(self, engine: str, constants: Mapping[str, np.ndarray]) -> EngineCall:
        """Upload ``constants`` to the device once (IOBinding); each call then sends only the
        changing inputs (latents, timestep, boost) and fetches the outputs."""
        import onnxruntime as ort

        session = self._session(engine)
        types = {m.name: _ORT_TYPES.get(m.type, np.float32) for m in session.get_inputs()}
        self.check_inputs(engine, constants, complete=False)
        device = "cuda" if self._device_type == "cuda" else "cpu"
        uploaded = {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value, dtype=types[name]), device, self._device_id)
            for name, value in constants.items()
        }
        return _BoundCall(engine, session, uploaded, types, device, self._device_id, self.precision == "fp16")

    def describe(self) -> dict[str, str]:
        import onnxruntime as ort

        entry = next(iter(self._entries.values()))
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "onnxruntime": ort.__version__,
            "providers": ", ".join(p if isinstance(p, str) else p[0] for p in self._providers(entry)),
            "engine_dir": str(entry.path.parent),
        }

    def close(self) -> None:
        for thread in self._preparing:
            thread.join()
        self._preparing.clear()
        self._sessions.clear()


def _check_finite(engine: str, outputs: Mapping[str, np.ndarray]) -> None:
    # fp16 graphs can overflow on inputs the build-time check did not see.
    for name, value in outputs.items():
        if not np.isfinite(value).all():
            raise NumericalError(
                f"the fp16 {engine} engine produced NaN/inf in {name!r}; run with precision fp32 "
                "(--precision fp32) for this model"
            )


class _BoundCall:
    """One engine with some inputs resident on the device (see :meth:`OnnxRuntimeBackend.bind`)."""

    def __init__(
        self, engine: str, session: "ort.InferenceSession", uploaded: dict[str, Any], types: dict[str, type],
        device: str, device_id: int, check_finite: bool,
    ) -> None:
        self.engine = engine
        self.session = session
        self.uploaded = uploaded  # the OrtValues must outlive the binding
        self.types = types
        self.device = device
        self.device_id = device_id
        self.check_finite = check_finite
        self.varying = [name for name in types if name not in uploaded]
        self.outputs = ENGINES[engine].output_names  # bound by name; the binding returns them in bind order
        self.binding = session.io_binding()
        for name, value in uploaded.items():
            self.binding.bind_ortvalue_input(name, value)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        Backend.check_inputs(self.engine, {*self.uploaded, *inputs})
        for name in self.varying:
            self.binding.bind_cpu_input(name, np.ascontiguousarray(inputs[name], dtype=self.types[name]))
        for name in self.outputs:
            self.binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(self.binding)
        outputs = dict(zip(self.outputs, self.binding.copy_outputs_to_cpu()))
        if self.check_finite:
            _check_finite(self.engine, outputs)
        return outputs
