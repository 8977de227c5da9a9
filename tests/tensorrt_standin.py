"""STAND-IN for data-center TensorRT's Python module (TensorRT 10/11 cannot be installed on our
machines or in CI; TensorRT-RTX can, and tests/test_tensorrt_rtx.py uses the real one).

It records the calls our builder and refitter make, so tests can check OUR side of them where
TensorRT 10/11 differ from TensorRT-RTX: which precision flags, pinned layers, workspace,
optimisation level, timing cache and progress monitor we hand TensorRT 10 and TensorRT 11, and the
refit of a plan (TensorRT-RTX cannot build refittable plans without a GPU). It optimises nothing and runs nothing: a
"plan" is the JSON record of the build. Its ONNX "parser" reads the real graph with ``onnx`` so
that network inputs and layer output types are the graph's own. Nothing here says that TensorRT
accepts our graphs: that is checked only by the tests marked ``tensorrt`` on a real GPU.
"""
from __future__ import annotations

import enum
import json
import types
from pathlib import Path

import onnx


class _Dtype:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"standin.{self.name}"


float32, float16, int64, int32, boolean = (_Dtype(n) for n in ("float32", "float16", "int64", "int32", "bool"))
_ONNX_TYPES = {onnx.TensorProto.FLOAT: float32, onnx.TensorProto.FLOAT16: float16, onnx.TensorProto.INT64: int64,
               onnx.TensorProto.INT32: int32, onnx.TensorProto.BOOL: boolean}


class LayerType(enum.Enum):
    CONSTANT = "Constant"
    SHAPE = "Shape"
    CAST = "Cast"
    OTHER = "other"


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class ILogger:
    class Severity(enum.Enum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class _Tensor:
    def __init__(self, name: str, dtype: _Dtype) -> None:
        self.name, self.dtype = name, dtype


class _Layer:
    def __init__(self, node: onnx.NodeProto, types_by_name: dict[str, _Dtype]) -> None:
        self.name = node.name
        self.type = LayerType(node.op_type) if node.op_type in ("Constant", "Shape", "Cast") else LayerType.OTHER
        self.outputs = [_Tensor(o, types_by_name.get(o)) for o in node.output]
        self.precision = None
        self.output_types: dict[int, _Dtype] = {}

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, i: int) -> _Tensor:
        return self.outputs[i]

    def set_output_type(self, i: int, dtype: _Dtype) -> None:
        self.output_types[i] = dtype


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[_Tensor] = []
        self.layers: list[_Layer] = []
        self.onnx_path = ""

    num_inputs = property(lambda self: len(self.inputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]


class OnnxParser:
    def __init__(self, network: _Network, logger: ILogger) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        model = onnx.shape_inference.infer_shapes(onnx.load(path))
        graph = model.graph
        types_by_name = {v.name: _ONNX_TYPES.get(v.type.tensor_type.elem_type, float32)
                         for v in list(graph.value_info) + list(graph.output) + list(graph.input)}
        self.network.onnx_path = path
        self.network.inputs = [_Tensor(i.name, types_by_name[i.name]) for i in graph.input]
        self.network.layers = [_Layer(node, types_by_name) for node in graph.node]
        return True


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, list] = {}

    def set_shape(self, name: str, lo, opt, hi) -> None:
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


class _Config:
    def __init__(self, module) -> None:
        self.module = module
        self.flags: list[str] = []
        self.pool_limits: dict[str, int] = {}
        self.builder_optimization_level = None
        self.profiles: list[_Profile] = []
        self.timing_cache: _TimingCache | None = None
        self.progress_monitor = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pool_limits[pool.name] = size

    def set_flag(self, flag) -> None:
        self.flags.append(flag.name)

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(bytes(data))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        # A real build adds the tactics it timed; the stand-in appends one marker per build.
        return _TimingCache(self.timing_cache.data + b"[timed]")


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> _Network:
        return _Network(flags)

    def create_builder_config(self) -> _Config:
        return _Config(self)

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config):
        STATE["builds"] += 1
        if STATE["out_of_memory"]:
            self.logger.log(ILogger.Severity.ERROR, "[defaultAllocator.cpp::allocate] Error Code 1: Cuda Runtime (out of memory)")
            return None
        monitor = config.progress_monitor
        monitor.phase_start("Building engine", None, 2)
        monitor.step_complete("Building engine", 0)
        monitor.step_complete("Building engine", 1)
        monitor.phase_finish("Building engine")
        pinned = [layer.name for layer in network.layers if layer.precision is float32]
        record = {
            "onnx": network.onnx_path, "network_flags": network.flags, "flags": config.flags,
            "pool_limits": config.pool_limits, "optimization_level": config.builder_optimization_level,
            "profiles": [p.shapes for p in config.profiles], "timing_cache_in": config.timing_cache.data.decode(),
            "pinned_fp32": pinned, "monitor_base": isinstance(monitor, IProgressMonitor),
        }
        return json.dumps(record).encode()


class _Engine:
    def __init__(self, record: dict) -> None:
        self.record = record

    def serialize(self) -> bytes:
        return json.dumps(self.record).encode()


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes) -> _Engine:
        return _Engine(json.loads(data))


class Refitter:
    def __init__(self, engine: _Engine, logger: ILogger) -> None:
        self.engine = engine

    def refit_cuda_engine(self) -> bool:
        return True

    def get_missing_weights(self) -> list[str]:
        return []


class OnnxParserRefitter:
    def __init__(self, refitter: Refitter, logger: ILogger) -> None:
        self.refitter = refitter
        self.num_errors = 0

    def refit_from_file(self, path: str) -> bool:
        STATE["refits"] += 1
        self.refitter.engine.record["refit_from"] = str(Path(path))
        return True


STATE = {"builds": 0, "refits": 0, "out_of_memory": False}


def make_standin(version: str) -> types.ModuleType:
    """A ``tensorrt`` stand-in of the given version: TensorRT 11 has no FP16/OBEY precision flags."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    for name, value in dict(globals()).items():
        if name in ("ILogger", "IProgressMonitor", "LayerType", "MemoryPoolType", "Builder", "OnnxParser", "Runtime",
                    "Refitter", "OnnxParserRefitter", "float32", "float16", "int64", "int32"):
            setattr(module, name, value)
    flags = ["REFIT"] + ([] if version.startswith("11.") else ["FP16", "OBEY_PRECISION_CONSTRAINTS"])
    module.BuilderFlag = enum.Enum("BuilderFlag", flags)
    module.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5})
    STATE.update(builds=0, refits=0, out_of_memory=False)
    return module
