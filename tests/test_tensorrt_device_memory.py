"""The TensorRT backends' CUDA side on a machine without a GPU, through STAND-INS (tests/cuda_standin.py):
CUDA's runtime (per-thread current device, memory, streams, capture) and TensorRT's engine and
execution context. They check OUR side: which device is current at each call on each thread, how
the shared context memory is sized and handed to every context, when we capture CUDA graphs and
what a failed capture does. Whether TensorRT itself runs our plans is checked on a GPU
(``-m tensorrt``); that the stand-in's method names and parameters are TensorRT-RTX's own is
checked here against the real bindings.
"""
from __future__ import annotations

import enum
import inspect
import logging
import re
import threading
import types

import numpy as np
import pytest

from cuda_standin import CopyContext, CudartStandIn, Mode, UNetIO
from dynamicid_rt.backends import probes
from dynamicid_rt.contract import ENGINES, ModelDims
from dynamicid_rt.engines import cuda
from dynamicid_rt.engines.build import PlanEntry
from dynamicid_rt.engines.library import TENSORRT_11, TENSORRT_RTX_1, LoadedTensorRT
from dynamicid_rt.errors import DynamicIDError

UNET = ENGINES["unet"]
STEP = ("sample", "timestep", "id_boost")
PER_ELEMENT = 64  # stand-in context memory per latent element
WORST = UNET.shapes(ModelDims(), **{a.name: a.max for a in UNET.axes})["sample"]


class CopyEngine(UNetIO):
    """STAND-IN ICudaEngine with the UNet's contract I/O; its contexts are :class:`CopyContext`."""

    def __init__(self, cudart: CudartStandIn, options: dict) -> None:
        self.cudart, self.options = cudart, options
        self.contexts: list[CopyContext] = []
        self.device_memory_size_v2 = options.get("worst", int(np.prod(WORST)) * PER_ELEMENT)

    def create_runtime_config(self):
        return _RuntimeConfig()

    def create_execution_context(self, strategy_or_config):
        self.cudart.record("ICudaEngine.create_execution_context")
        context = CopyContext(self.cudart, PER_ELEMENT, **{k: v for k, v in self.options.items() if k != "worst"})
        self.contexts.append(context)
        return context


class _RuntimeCache:
    def deserialize(self, blob):
        return True

    def serialize(self):
        return b"kernels"


class _RuntimeConfig(types.SimpleNamespace):
    def set_execution_context_allocation_strategy(self, strategy):
        self.allocation = strategy

    def create_runtime_cache(self):
        return _RuntimeCache()

    def set_runtime_cache(self, cache):
        return True


def _trt(cudart: CudartStandIn, options: dict[str, dict]) -> types.SimpleNamespace:
    """STAND-IN TensorRT module: what the backend and Engine touch; ``options`` per plan tag."""
    from tensorrt_standin import ILogger

    trt = types.SimpleNamespace(__version__="11.0.0", TensorIOMode=Mode, nptype=lambda dtype: np.float32, ILogger=ILogger)
    trt.ExecutionContextAllocationStrategy = enum.Enum("ExecutionContextAllocationStrategy", "STATIC USER_MANAGED")
    trt.CudaGraphStrategy = enum.Enum("CudaGraphStrategy", "DISABLED WHOLE_GRAPH_CAPTURE")
    trt.DynamicShapesKernelSpecializationStrategy = enum.Enum("DynamicShapesKernelSpecializationStrategy", "LAZY EAGER NONE")
    trt.engines = {}

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes):
            tag = data.decode()
            trt.engines[tag] = CopyEngine(cudart, options.get(tag, {}))
            return trt.engines[tag]

    trt.Runtime = Runtime
    return trt


LIBRARIES = {"tensorrt": TENSORRT_11, "tensorrt-rtx": TENSORRT_RTX_1}


@pytest.fixture
def cudart(monkeypatch) -> CudartStandIn:
    standin = CudartStandIn(devices=2)
    monkeypatch.setattr(cuda, "runtime", lambda: standin)
    return standin


def _backend(monkeypatch, tmp_path, cudart, backend="tensorrt", device="cuda:1", plans=("dynamic",), options=None):
    """The real TensorRTBackend over stand-in libraries, with these plan tags of the UNet stored."""
    from dynamicid_rt.backends.tensorrt_backend import TensorRTBackend, TensorRTRTXBackend
    from dynamicid_rt.engines import build, library
    from dynamicid_rt.export import cache

    lib = LoadedTensorRT(LIBRARIES[backend], _trt(cudart, options or {}))
    entry = types.SimpleNamespace(engine="unet", precision="fp16", dims=ModelDims())
    entries = []
    for tag in plans:
        (tmp_path / f"{tag}.plan").write_bytes(tag.encode())
        entries.append(PlanEntry("unet", "fp16", tag, tmp_path, {"plan": {"sha256": "a" * 64}}, "reused", entry))
    monkeypatch.setattr(library, "load", lambda name: lib)
    monkeypatch.setattr(build, "build_plans", lambda *a, **k: [e for e in entries if e.tag == "dynamic"])
    monkeypatch.setattr(build, "find_static_plans", lambda *a, **k: [e for e in entries if e.tag != "dynamic"])
    monkeypatch.setattr(cache, "default_engines", lambda paths: ["unet"])
    cls = TensorRTRTXBackend if backend == "tensorrt-rtx" else TensorRTBackend
    return cls(types.SimpleNamespace(has_imr=False), device=device, engine_dir=tmp_path), lib.trt


def _inputs(seed: int, size: int = 256, batch: int = 2) -> dict[str, np.ndarray]:
    return UNET.sample_inputs(ModelDims(), seed=seed, B=batch, h=size // 8, w=size // 8, N=2, M=2)


# -- the device on every thread ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["tensorrt", "tensorrt-rtx"])
def test_every_cuda_call_on_a_worker_thread_runs_on_the_backends_device(monkeypatch, tmp_path, cudart, backend):
    """Built on the main thread for cuda:1, then run, bound, cached and closed on a server's worker
    thread (whose current device CUDA starts at 0): every call there must find device 1 current."""
    trt_backend, _ = _backend(monkeypatch, tmp_path, cudart, backend, plans=("dynamic", "static-256x256"))
    cudart.expected_device = 1
    results: dict[str, np.ndarray] = {}

    def serve() -> None:
        inputs = _inputs(0)
        results["run"] = trt_backend.run("unet", inputs)["noise_pred"]
        call = trt_backend.bind("unet", {k: v for k, v in inputs.items() if k not in STEP})
        for seed in (1, 2):
            step = {k: _inputs(seed)[k] for k in STEP}
            results[f"bound{seed}"] = call(step)["noise_pred"] - step["sample"]
        trt_backend.generation_done()
        trt_backend.close()

    worker = threading.Thread(target=serve, name="generate-worker")
    worker.start()
    worker.join()
    np.testing.assert_array_equal(results["run"], _inputs(0)["sample"])  # the stand-in context copies sample
    assert not results["bound1"].any() and not results["bound2"].any()
    on_worker = [(device, name) for thread, device, name in cudart.calls if thread == "generate-worker"]
    assert {"cudaMemcpyAsync", "IExecutionContext.execute_async_v3", "cudaFree"} <= {name for _, name in on_worker}
    assert cudart.violations == []


def test_a_device_the_machine_lacks_is_one_line(monkeypatch, tmp_path, cudart):
    with pytest.raises(DynamicIDError, match="CUDA cudaSetDevice failed"):
        _backend(monkeypatch, tmp_path, cudart, device="cuda:5")


# -- context memory per request shape ------------------------------------------------------------------


def test_context_memory_grows_with_the_request_shape_and_every_context_is_repointed(monkeypatch, tmp_path, cudart):
    trt_backend, trt = _backend(monkeypatch, tmp_path, cudart, plans=("dynamic", "static-256x256"))
    static, dynamic = trt.engines["static-256x256"].contexts[0], trt.engines["dynamic"].contexts[0]
    assert trt_backend.memory.nbytes == 0  # nothing sized for the worst case at load
    small = _inputs(0, 256)
    call = trt_backend.bind("unet", {k: v for k, v in small.items() if k not in STEP})
    for seed in (1, 2):  # the static plan: run, capture, then replay
        call({k: _inputs(seed, 256)[k] for k in STEP})
    need_small = int(np.prod(small["sample"].shape)) * PER_ELEMENT
    assert trt_backend.memory.nbytes == need_small and static.memory == (trt_backend.memory.buffer.ptr, need_small)
    assert cudart.begin_captures == 1

    large = _inputs(3, 512)  # the dynamic plan, 4x the latent: the block grows
    np.testing.assert_array_equal(trt_backend.run("unet", large)["noise_pred"], large["sample"])
    need_large = int(np.prod(large["sample"].shape)) * PER_ELEMENT
    block = (trt_backend.memory.buffer.ptr, need_large)
    assert trt_backend.memory.nbytes == need_large < int(np.prod(WORST)) * PER_ELEMENT
    assert dynamic.memory == block and static.memory == block  # every context re-pointed, not only the one that ran

    mallocs = sum(name == "cudaMalloc" for _, _, name in cudart.calls)
    step = {k: _inputs(4, 256)[k] for k in STEP}
    np.testing.assert_array_equal(call(step)["noise_pred"], step["sample"])  # the old graph's memory is gone...
    assert cudart.begin_captures == 2  # ...so it was dropped and captured again
    assert trt_backend.memory.nbytes == need_large  # grow-only: back at 256² nothing shrinks or moves
    assert sum(name == "cudaMalloc" for _, _, name in cudart.calls) == mallocs
    assert cudart.violations == []  # no enqueue ever ran on too little memory
    trt_backend.close()


def test_a_plan_whose_worst_case_cannot_fit_is_refused_at_load(monkeypatch, tmp_path, cudart):
    cudart.free = 256 * 2**20
    options = {"dynamic": {"worst": 2**30}}
    with pytest.raises(DynamicIDError) as refused:
        _backend(monkeypatch, tmp_path, cudart, plans=("dynamic",), options=options)
    message = str(refused.value)
    assert "\n" not in message and "1024 MiB of context memory" in message and "256 MiB free" in message
    assert "--static 512x512" in message and "Stand-in RTX 1" in message
    # With a static plan that fits, the dynamic plan gives way and the static size still runs.
    trt_backend, _ = _backend(monkeypatch, tmp_path, cudart, plans=("dynamic", "static-256x256"), options=options)
    assert [e.plan_path.stem for e in trt_backend.engines["unet"]] == ["static-256x256"]
    step = _inputs(1, 256)
    np.testing.assert_array_equal(trt_backend.run("unet", step)["noise_pred"], step["sample"])
    with pytest.raises(DynamicIDError, match="outside the tensorrt plan's shape range"):
        trt_backend.run("unet", _inputs(2, 512))
    trt_backend.close()


# -- CUDA-graph capture ---------------------------------------------------------------------------------


def _three_steps_logged(trt_backend, caplog):
    """Bind the UNet and run three steps on the static plan, warnings logged; each step must echo
    its own sample (the stand-in UNet's output). Returns the bound call."""
    call = trt_backend.bind("unet", {k: v for k, v in _inputs(0).items() if k not in STEP})
    with caplog.at_level(logging.WARNING, logger="dynamicid_rt.engines"):
        for seed in (1, 2, 3):
            step = {k: _inputs(seed)[k] for k in STEP}
            np.testing.assert_array_equal(call(step)["noise_pred"], step["sample"])
    return call


def test_a_context_that_is_not_capturable_runs_without_a_graph(monkeypatch, tmp_path, cudart, caplog):
    options = {"static-256x256": {"capturable": False}}
    trt_backend, trt = _backend(monkeypatch, tmp_path, cudart, plans=("dynamic", "static-256x256"), options=options)
    _three_steps_logged(trt_backend, caplog)
    assert cudart.begin_captures == 0 and trt.engines["static-256x256"].contexts[0].runs == 3
    assert len(caplog.records) == 1 and "not capturable" in caplog.text
    trt_backend.close()


def test_an_error_inside_capture_surfaces_as_itself(cudart):
    stream = cuda.Stream()

    def launches() -> None:
        cudart.invalidate_capture(int(stream))
        raise RuntimeError("stand-in: the real cause")

    with pytest.raises(RuntimeError, match="the real cause"):  # not cudaStreamEndCapture's "invalidated"
        cuda.CudaGraph(stream, launches)
    assert cudart.capturing == {}  # the capture was ended


def test_a_failed_capture_falls_back_to_plain_enqueues_once_per_shape(monkeypatch, tmp_path, cudart, caplog):
    options = {"static-256x256": {"fail_in_capture": True}}
    trt_backend, trt = _backend(monkeypatch, tmp_path, cudart, plans=("dynamic", "static-256x256"), options=options)
    call = _three_steps_logged(trt_backend, caplog)
    assert cudart.begin_captures == 1  # tried once for this shape, never again
    assert len(caplog.records) == 1 and "not permitted while the stream is capturing" in caplog.text
    one_image = {k: _inputs(4, batch=1)[k] for k in STEP}  # another shape of the same plan: its own try
    call(one_image)
    assert cudart.begin_captures == 2
    trt_backend.close()


# -- the stand-in against the real TensorRT-RTX ---------------------------------------------------------


def _parameters(doc: str, name: str) -> list[str]:
    """Parameter names from a pybind11 signature line ``name(self: ..., a: int, b: int) -> ...``."""
    match = re.search(rf"{name}\((.*?)\)\s*->", doc)
    assert match, doc
    return [p.split(":")[0].strip() for p in match.group(1).split(",") if p.strip() and not p.strip().startswith("self")]


@pytest.mark.skipif(not probes.installed("tensorrt_rtx_bindings"), reason="needs TensorRT-RTX")
def test_the_context_standin_has_tensorrt_rtx_names_and_parameters():
    import tensorrt_rtx_bindings as trt

    for name in ("set_input_shape", "set_tensor_address", "update_device_memory_size_for_shapes", "set_device_memory",
                 "is_stream_capturable", "execute_async_v3"):
        real = getattr(trt.IExecutionContext, name)
        ours = list(inspect.signature(getattr(CopyContext, name)).parameters)[1:]
        assert _parameters(real.__doc__, name) == ours, name
    assert isinstance(trt.ICudaEngine.device_memory_size_v2, property)
    assert "size_for_shapes" in trt.IExecutionContext.update_device_memory_size_for_shapes.__doc__


# -- the peak in doctor's plan report -------------------------------------------------------------------


def test_doctor_reports_each_plans_context_memory_at_opt_and_peak(monkeypatch, tmp_path, cudart):
    from dynamicid_rt.engines import report
    from dynamicid_rt.engines.plans import plan_folder, write_plan
    from dynamicid_rt.engines.profiles import engine_profile, StaticSize

    lib = LoadedTensorRT(TENSORRT_11, _trt(cudart, {}))
    for size in (None, StaticSize(256, 256)):
        tag = "dynamic" if size is None else "static-256x256"
        profile = engine_profile(UNET, ModelDims(), size)
        key = {"engine": "unet", "library": "TensorRT 11", "tensorrt": "11.0.0", "gpu": "Stand-in RTX 0",
               "compute_capability": "8.9", "profile": {k: [list(s) for s in v] for k, v in profile.items()}}
        write_plan(plan_folder(tmp_path, "unet", "fp16", "tensorrt"), tag, tag.encode(), key, {})
    monkeypatch.setattr(report, "installed_module", lambda backend: "tensorrt")
    monkeypatch.setattr(report, "load", lambda backend: lib)
    lines = report._library_lines("tensorrt", 13, tmp_path)
    memory = lines[lines.index("  context memory (the shared block grows per request up to the largest peak):") + 1:]
    per_latent = 4 * PER_ELEMENT / 2**20  # MiB per latent position: 4 channels
    assert memory == [
        f"    unet-fp16/dynamic: context memory {2 * 64 * 64 * per_latent:.0f} MiB at the profile's opt shapes, "
        f"{8 * 128 * 128 * per_latent:.0f} MiB at its maximum (peak)",
        f"    unet-fp16/static-256x256: context memory {2 * 32 * 32 * per_latent:.0f} MiB at the profile's opt shapes, "
        f"{2 * 32 * 32 * per_latent:.0f} MiB at its maximum (peak)",
    ]
