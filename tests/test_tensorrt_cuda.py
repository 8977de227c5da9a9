"""The TensorRT backend's CUDA side on a real GPU, without TensorRT (``python -m pytest -m gpu``).

Device buffers, the shared context-memory block, ``bind()`` uploading constants once, and CUDA-graph
replay run for real through cuda-python. TensorRT's part is a STAND-IN execution context whose
"inference" is a device-to-device copy of ``sample`` into ``noise_pred`` enqueued on our stream:
it checks our side (addresses, shapes, uploads, capture and replay), not TensorRT.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

from dynamicid_rt.backends import probes
from dynamicid_rt.contract import ENGINES, ModelDims

pytestmark = pytest.mark.gpu

if not (probes.installed("cuda") and probes.cuda_device_count()):
    pytest.skip("needs cuda-python and an NVIDIA GPU", allow_module_level=True)

from cuda_standin import Mode, UNetIO  # noqa: E402
from dynamicid_rt.backends.tensorrt_backend import TensorRTBackend  # noqa: E402
from dynamicid_rt.engines import cuda  # noqa: E402
from dynamicid_rt.engines.context_memory import ContextMemory  # noqa: E402
from dynamicid_rt.engines.engine import Engine  # noqa: E402
from dynamicid_rt.engines.library import TENSORRT_10, LoadedTensorRT  # noqa: E402

UNET = ENGINES["unet"]


class CopyContext:
    """STAND-IN execution context: runs by copying the ``sample`` buffer into ``noise_pred``."""

    def __init__(self) -> None:
        self.addresses: dict[str, int] = {}
        self.shapes: dict[str, tuple] = {}
        self.device_memory = None
        self.runs = 0

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes["sample"] if name == "noise_pred" else self.shapes[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        self.runs += 1
        nbytes = int(np.prod(self.shapes["sample"])) * 4
        kind = cuda.runtime().cudaMemcpyKind.cudaMemcpyDeviceToDevice
        cuda.call("cudaMemcpyAsync", self.addresses["noise_pred"], self.addresses["sample"], nbytes, kind, stream)
        return True


class CopyEngine(UNetIO):
    """STAND-IN ICudaEngine with the UNet's contract I/O."""

    device_memory_size = 1 << 20

    def create_execution_context_without_device_memory(self):
        self.context = CopyContext()
        return self.context


STANDIN_TRT = LoadedTensorRT(
    TENSORRT_10, types.SimpleNamespace(__version__="10.13.0", TensorIOMode=Mode, nptype=lambda dtype: np.float32)
)


def _engine(tmp_path, tag: str) -> Engine:
    plan = tmp_path / f"{tag}.plan"
    plan.write_bytes(b"stand-in")
    engine = Engine(STANDIN_TRT, "unet", plan, UNET.profile(ModelDims()))
    engine.load(types.SimpleNamespace(deserialize_cuda_engine=lambda data: CopyEngine()))
    return engine


def _inputs(seed: int) -> dict[str, np.ndarray]:
    return UNET.sample_inputs(ModelDims(), seed=seed, B=2, h=32, w=32, N=2, M=2)


def test_buffers_round_trip_and_graphs_replay_new_inputs(tmp_path):
    stream = cuda.Stream()
    memory = ContextMemory()
    engine = _engine(tmp_path, "static-256x256")
    engine.activate(memory)
    runs = []
    for seed in range(3):
        inputs = _inputs(seed)
        engine.allocate({k: v.shape for k, v in inputs.items()})
        assert engine.context.device_memory == memory.buffer.ptr  # TensorRT 10: user-managed context memory
        out = engine.infer(inputs, stream, graph=True)["noise_pred"]
        np.testing.assert_array_equal(out, inputs["sample"])
        runs.append(engine.context.runs)
    assert runs == [2, 2, 2]  # one run, one capture, then replays only
    bigger = UNET.sample_inputs(ModelDims(), seed=9, B=2, h=40, w=32, N=2, M=2)
    engine.allocate({k: v.shape for k, v in bigger.items()})  # new shapes: the graph is captured again
    np.testing.assert_array_equal(engine.infer(bigger, stream, graph=True)["noise_pred"], bigger["sample"])
    assert engine.context.runs == 4
    engine.release()
    memory.free()
    stream.destroy()


def test_bind_uploads_constants_once(tmp_path, monkeypatch):
    backend = TensorRTBackend.__new__(TensorRTBackend)  # the run-time half only: no plans to build
    backend.device_id = 0
    backend.stream = cuda.Stream()
    backend.memory = ContextMemory()
    engine = _engine(tmp_path, "dynamic")
    engine.activate(backend.memory)
    backend.engines = {"unet": [engine]}
    uploads: list[set[str]] = []
    real_upload = Engine.upload
    monkeypatch.setattr(Engine, "upload", lambda self, inputs, stream: (uploads.append(set(inputs)), real_upload(self, inputs, stream)))
    fixed = _inputs(0)
    constants = {k: v for k, v in fixed.items() if k not in ("sample", "timestep", "id_boost")}
    call = backend.bind("unet", constants)
    for seed in range(3):
        step = {k: _inputs(seed + 1)[k] for k in ("sample", "timestep", "id_boost")}
        np.testing.assert_array_equal(call(step)["noise_pred"], step["sample"])
    varying = {"sample", "timestep", "id_boost"}
    assert uploads == [set(constants), varying, varying, varying]
    backend.run("unet", fixed)  # overwrites the resident constants...
    uploads.clear()
    call({k: fixed[k] for k in varying})
    assert uploads == [set(constants), varying]  # ...so the bound call uploads them again
    backend.close()
