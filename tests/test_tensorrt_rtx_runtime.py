"""TensorRT-RTX's run-time side without a GPU: the runtime-cache store on real files, the settings
our ``Engine`` hands the library (checked through a STAND-IN engine and runtime config that record
the calls: our side only; the library itself runs them on a GPU, ``-m tensorrt``), plan validity
diagnostics, and how the registry chooses and explains the two TensorRT backends."""
from __future__ import annotations

import enum
import logging
import types

import pytest

from dynamicid_rt.backends import probes, registry
from dynamicid_rt.engines.builder import EngineBuildError
from dynamicid_rt.engines.context_memory import ContextMemory
from dynamicid_rt.engines.library import TENSORRT_11, TENSORRT_RTX_1, LoadedTensorRT
from dynamicid_rt.engines.plans import GpuInfo
from dynamicid_rt.engines.runtime_cache import RuntimeCacheFile, attach, describe_runtime_caches
from dynamicid_rt.errors import BackendError, DynamicIDError

GPU = GpuInfo("NVIDIA GeForce RTX 4090", "8.9", "13000")


def _rtx(version: str = "1.7.1.116") -> LoadedTensorRT:
    return LoadedTensorRT(TENSORRT_RTX_1, types.SimpleNamespace(__version__=version))


def _stored(tmp_path, lib=None, gpu=GPU, plan_sha="a" * 64) -> RuntimeCacheFile:
    return RuntimeCacheFile.for_plan(tmp_path, lib or _rtx(), gpu, "unet-fp16-dynamic", plan_sha)


# -- the runtime-cache store -----------------------------------------------------------------------


def test_runtime_cache_round_trips_and_is_kept_per_gpu_and_driver(tmp_path):
    stored = _stored(tmp_path)
    assert stored.load() == (b"", "not built yet")
    assert stored.save(b"kernels-v1") is True
    assert stored.save(b"kernels-v1") is False  # unchanged: not written again
    assert _stored(tmp_path).load() == (b"kernels-v1", "")
    assert stored.path.parent.name == "nvidia-geforce-rtx-4090-13000"
    other_driver = GpuInfo(GPU.name, GPU.compute_capability, "13010")
    assert _stored(tmp_path, gpu=other_driver).load() == (b"", "not built yet")  # its own folder
    lines = describe_runtime_caches(tmp_path, "tensorrt-rtx")
    assert lines == ["nvidia-geforce-rtx-4090-13000/unet-fp16-dynamic: NVIDIA GeForce RTX 4090, driver 13000, 0.0 MiB"]


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"lib": "1.8.0.1"}, "TensorRT version changed (1.7.1.116 -> 1.8.0.1)"),
        ({"plan_sha": "b" * 64}, "plan_sha256 changed"),
    ],
)
def test_a_stale_runtime_cache_is_not_used_and_says_why(tmp_path, change, reason):
    _stored(tmp_path).save(b"kernels")
    stale = _stored(tmp_path, lib=_rtx(change["lib"]) if "lib" in change else None, plan_sha=change.get("plan_sha", "a" * 64))
    blob, why = stale.load()
    assert blob == b"" and reason in why


def test_a_damaged_runtime_cache_is_not_used(tmp_path):
    stored = _stored(tmp_path)
    stored.save(b"0123456789")
    stored.path.write_bytes(b"0123456780")  # same size, one byte changed
    assert "corrupt" in _stored(tmp_path).load()[1]
    stored.path.write_bytes(b"01234")
    assert "truncated" in _stored(tmp_path).load()[1]
    (stored.folder / f"{stored.tag}.json").write_text("{broken")
    assert "unreadable" in _stored(tmp_path).load()[1]


class _CacheStandIn:
    """STAND-IN IRuntimeCache: accepts blobs starting with b"ok"."""

    def __init__(self) -> None:
        self.blob = b""

    def deserialize(self, blob: bytes) -> bool:
        if not bytes(blob).startswith(b"ok"):
            return False
        self.blob = bytes(blob)
        return True

    def serialize(self) -> bytes:
        return self.blob + b"+jit"


class _ConfigStandIn:
    """STAND-IN IRuntimeConfig: records what our Engine sets."""

    def __init__(self) -> None:
        self.cache = None
        self.allocation = None
        self.cuda_graph_strategy = None
        self.dynamic_shapes_kernel_specialization_strategy = None

    def create_runtime_cache(self) -> _CacheStandIn:
        return _CacheStandIn()

    def set_runtime_cache(self, cache) -> bool:
        self.cache = cache
        return True

    def set_execution_context_allocation_strategy(self, strategy) -> None:
        self.allocation = strategy


def test_a_blob_the_library_rejects_is_dropped_with_a_reason(tmp_path, caplog):
    stored = _stored(tmp_path)
    stored.save(b"bad-blob")
    config = _ConfigStandIn()
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.engines"):
        cache = attach(config, _stored(tmp_path), "unet")
    assert config.cache is cache and cache.blob == b""
    assert "TensorRT-RTX rejected it" in caplog.text
    good = _stored(tmp_path)
    good.save(b"ok-kernels")
    cache = attach(_ConfigStandIn(), _stored(tmp_path), "unet")
    assert cache.blob == b"ok-kernels"


# -- the Engine's side of TensorRT-RTX's runtime config ----------------------------------------------


def _trt_standin():
    """STAND-IN module with the enums and classes Engine.activate touches."""
    trt = types.SimpleNamespace(__version__="1.7.1.116")
    trt.ExecutionContextAllocationStrategy = enum.Enum("ExecutionContextAllocationStrategy", "STATIC USER_MANAGED")
    trt.CudaGraphStrategy = enum.Enum("CudaGraphStrategy", "DISABLED WHOLE_GRAPH_CAPTURE")
    trt.DynamicShapesKernelSpecializationStrategy = enum.Enum("DynamicShapesKernelSpecializationStrategy", "LAZY EAGER NONE")
    return trt


class _ContextStandIn:
    def __init__(self) -> None:
        self.memory = None

    def set_device_memory(self, ptr, size) -> None:
        self.memory = (ptr, size)


class _EngineStandIn:
    device_memory_size_v2 = 4096

    def __init__(self) -> None:
        self.config = _ConfigStandIn()
        self.made_with = None

    def create_runtime_config(self):
        return self.config

    def create_execution_context(self, arg):
        self.made_with = arg
        return _ContextStandIn()


def test_engine_activates_with_library_cuda_graphs_lazy_kernels_and_the_runtime_cache(tmp_path):
    from dynamicid_rt.engines.engine import Engine

    trt = _trt_standin()
    lib = LoadedTensorRT(TENSORRT_RTX_1, trt)
    _stored(tmp_path, lib).save(b"ok-stored")
    engine = Engine(lib, "unet", tmp_path / "dynamic.plan", {}, runtime_cache=_stored(tmp_path, lib))
    engine.engine = _EngineStandIn()
    engine.activate(ContextMemory())
    engine.point_memory(types.SimpleNamespace(ptr=1234, nbytes=4096))  # what allocate() does once shapes are set
    config = engine.engine.config
    assert engine.engine.made_with is config
    assert config.allocation == trt.ExecutionContextAllocationStrategy.USER_MANAGED
    assert config.cuda_graph_strategy == trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    assert config.dynamic_shapes_kernel_specialization_strategy == trt.DynamicShapesKernelSpecializationStrategy.LAZY
    assert config.cache.blob == b"ok-stored"
    assert engine.context.memory == (1234, 4096)
    # After a generation the grown cache is written; an unchanged one is not written again.
    assert engine.save_runtime_cache() is True
    assert _stored(tmp_path, lib).load()[0] == b"ok-stored+jit"
    config.cache.blob = b"ok-stored"
    assert engine.save_runtime_cache() is False


def test_tensorrt_11_keeps_our_capture_and_no_runtime_config(tmp_path):
    from dynamicid_rt.engines.engine import Engine

    trt = _trt_standin()
    lib = LoadedTensorRT(TENSORRT_11, trt)
    engine = Engine(lib, "unet", tmp_path / "dynamic.plan", {})
    engine.engine = _EngineStandIn()
    engine.activate(ContextMemory())
    engine.point_memory(types.SimpleNamespace(ptr=99, nbytes=4096))
    assert engine.engine.made_with == trt.ExecutionContextAllocationStrategy.USER_MANAGED
    assert engine.runtime_config is None and engine.context.memory == (99, 4096)
    assert engine.save_runtime_cache() is False


# -- plan validity -----------------------------------------------------------------------------------


def _validity_lib(validity: str, bits: int):
    trt = types.SimpleNamespace(__version__="1.7.1.116")
    trt.EngineValidity = enum.Enum("EngineValidity", "VALID SUBOPTIMAL INVALID")
    trt.EngineInvalidityDiagnostics = enum.IntFlag(
        "EngineInvalidityDiagnostics",
        {"VERSION_MISMATCH": 1, "UNSUPPORTED_CC": 2, "OLD_CUDA_DRIVER": 4, "OLD_CUDA_RUNTIME": 8,
         "INSUFFICIENT_GPU_MEMORY": 16, "MALFORMED_ENGINE": 32, "CUDA_ERROR": 64},
    )

    class Runtime:  # STAND-IN: answers what a real GPU would
        def __init__(self, logger) -> None:
            pass

        def get_engine_validity(self, data):
            return getattr(trt.EngineValidity, validity), bits

    trt.Runtime = Runtime
    trt.ILogger = type("ILogger", (), {"__init__": lambda self: None, "Severity": enum.Enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO")})
    return LoadedTensorRT(TENSORRT_RTX_1, trt)


def test_plan_validity_decides_rebuilds_and_refusals(tmp_path):
    from dynamicid_rt.engines.validity import plan_validity

    plan = tmp_path / "dynamic.plan"
    plan.write_bytes(b"plan")
    assert plan_validity(_validity_lib("VALID", 0), plan, GPU) == ""
    assert plan_validity(_validity_lib("SUBOPTIMAL", 0), plan, GPU) == ""
    assert plan_validity(_validity_lib("INVALID", 0), plan, None) == ""  # no GPU: nothing can tell
    why = plan_validity(_validity_lib("INVALID", 1 | 32), plan, GPU)
    assert "built by another TensorRT-RTX version" in why and "malformed" in why
    with pytest.raises(EngineBuildError, match="driver is too old"):
        plan_validity(_validity_lib("INVALID", 4), plan, GPU)
    h200 = GpuInfo("NVIDIA H200", "9.0", "13000")
    with pytest.raises(EngineBuildError, match=r"sm 9\.0\) is not a TensorRT-RTX 1 target .*use --backend tensorrt"):
        plan_validity(_validity_lib("INVALID", 2), plan, h200)


# -- the registry ------------------------------------------------------------------------------------


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend this machine has one GPU of a given compute capability and both TensorRTs installed."""
    def set_gpu(cc: str | None):
        probes.cuda_device_count.cache_clear()
        probes.cuda_compute_capabilities.cache_clear()
        monkeypatch.setattr(probes, "cuda_device_count", lambda: 1 if cc else 0)
        monkeypatch.setattr(probes, "cuda_compute_capabilities", lambda: (cc,) if cc else ())
        real = probes.installed
        monkeypatch.setattr(probes, "installed", lambda m: m in ("tensorrt", "tensorrt_rtx_bindings", "cuda") or real(m))
    return set_gpu


def test_auto_prefers_data_center_tensorrt_and_says_why(fake_gpu):
    fake_gpu("8.9")
    choice = registry.choose_auto("cuda")
    assert choice.backend == "tensorrt"
    assert "preferred over tensorrt-rtx, also usable: data-center TensorRT tunes every kernel" in choice.explain()


def test_auto_takes_tensorrt_rtx_on_an_rtx_gpu_without_data_center_tensorrt(fake_gpu, monkeypatch):
    fake_gpu("12.0")
    real = probes.installed
    monkeypatch.setattr(probes, "installed", lambda m: m != "tensorrt" and (m in ("tensorrt_rtx_bindings", "cuda") or real(m)))
    choice = registry.choose_auto("cuda")
    assert choice.backend == "tensorrt-rtx" and "tensorrt cuda: tensorrt not installed" in choice.explain()


def test_tensorrt_rtx_on_an_h200_says_it_is_not_a_target(fake_gpu, tiny_bundle):
    from dynamicid_rt.modelfiles.paths import ModelPaths

    fake_gpu("9.0")
    assert "tensorrt-rtx" not in registry.choose_auto("cuda").backend
    with pytest.raises(BackendError, match=r"GPU 0 is sm 9\.0, not a TensorRT-RTX target .*use --backend tensorrt"):
        registry.create_backend("tensorrt-rtx", ModelPaths.from_folder(tiny_bundle))


def test_tensorrt_rtx_without_a_gpu_points_to_building_plans(fake_gpu, tiny_bundle):
    from dynamicid_rt.modelfiles.paths import ModelPaths

    fake_gpu(None)
    with pytest.raises(BackendError, match="no NVIDIA GPU here .*build-engines --backend tensorrt-rtx"):
        registry.create_backend("tensorrt-rtx", ModelPaths.from_folder(tiny_bundle))


def test_install_commands_name_the_extra_per_cuda_major():
    assert TENSORRT_RTX_1.install_command(12) == "pip install 'dynamicid-rt[tensorrt-rtx-cu12]'"
    assert TENSORRT_RTX_1.install_command(None) == (
        "pip install 'dynamicid-rt[tensorrt-rtx-cu12]' (CUDA 12) or pip install 'dynamicid-rt[tensorrt-rtx-cu13]' (CUDA 13)"
    )
    assert TENSORRT_11.install_command(13) == "pip install 'dynamicid-rt[tensorrt]' tensorrt-cu13"


def test_plans_built_on_a_gpu_target_it_and_a_gpu_outside_the_targets_is_refused():
    assert TENSORRT_RTX_1.targets_for_gpu("RTX 4090", "8.9") == ()  # the defaults cover it
    assert TENSORRT_RTX_1.targets_for_gpu("RTX 2080", "7.5") == ("8.0", "8.6", "8.9", "12.0", "7.5")
    with pytest.raises(DynamicIDError, match=r"H200 \(sm 9\.0\) is not a TensorRT-RTX 1 target .*use --backend tensorrt"):
        TENSORRT_RTX_1.targets_for_gpu("H200", "9.0")
    assert TENSORRT_11.targets_for_gpu("H200", "9.0") == ()  # GPU-tuned plans: no targets at all
