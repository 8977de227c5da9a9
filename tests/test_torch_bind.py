"""TorchBackend.bind: a whole generation through the bound UNet equals the unbound one exactly,
while the per-generation work (region masks, identity-token projections) runs once."""
from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest

from dynamicid_rt import Request
from dynamicid_rt.backends.base import Backend
from dynamicid_rt.contract import ENGINES
from dynamicid_rt.models.saa import SAAAttnProcessor, SAAUNet

STEP = ("sample", "timestep", "id_boost")


@pytest.fixture(scope="module")
def people(tiny_pipeline, samples):
    return [tiny_pipeline.encode_identity(samples / "person_a.png"), tiny_pipeline.encode_identity(samples / "person_b.png")]


def _generate(pipe, request) -> tuple[np.ndarray, np.ndarray]:
    """(final latent, first image) of one generation."""
    latents = []
    result = pipe.generate(request, progress=lambda info: latents.append(np.array(info.latent)))
    return latents[-1], np.asarray(result.images[0])


def _count_calls(monkeypatch, cls, name: str) -> list[int]:
    calls = [0]
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def test_bound_generation_equals_unbound_exactly(monkeypatch, tiny_pipeline, people):
    # Two people with their own strengths, CFG over a batch of 2, a non-square latent, boost then none.
    request = Request(
        prompt="two people", identities=people, width=256, height=320, steps=4, seed=3, batch=2,
        id_scale=[1.0, 0.6], boost_steps=2, sampler="euler",
    )
    prepares = _count_calls(monkeypatch, SAAUNet, "prepare")
    projections = _count_calls(monkeypatch, SAAAttnProcessor, "project_tokens")
    bound_latent, bound_image = _generate(tiny_pipeline, request)
    n_layers = sum(isinstance(p, SAAAttnProcessor) for p in tiny_pipeline.backend.module("unet").unet.attn_processors.values())
    assert prepares[0] == 1 and projections[0] == n_layers  # once per generation, not per step

    backend = tiny_pipeline.backend
    monkeypatch.setattr(backend, "bind", lambda engine, constants: Backend.bind(backend, engine, constants))
    prepares[0] = projections[0] = 0
    run_latent, run_image = _generate(tiny_pipeline, request)
    assert prepares[0] == request.steps and projections[0] == request.steps * n_layers  # the reference redoes it

    assert np.array_equal(bound_latent, run_latent)
    assert np.array_equal(bound_image, run_image)


def test_bound_unet_checks_inputs_and_follows_latent_size(tiny_pipeline):
    backend = tiny_pipeline.backend
    spec = ENGINES["unet"]
    with pytest.raises(KeyError, match="no input"):
        backend.bind("unet", {"not_an_input": np.zeros(1, np.float32)})
    small = spec.sample_inputs(backend.dims, seed=4, B=2, h=32, w=32, N=2, M=2)
    step = backend.bind("unet", {k: v for k, v in small.items() if k not in ("sample", "timestep", "id_boost")})
    for h, w in ((32, 32), (40, 24)):  # a new latent size rebuilds the masks rather than reusing stale ones
        inputs = small | spec.sample_inputs(backend.dims, seed=5, B=2, h=h, w=w, N=2, M=2)
        inputs |= {k: small[k] for k in small if k not in ("sample", "timestep", "id_boost")}
        got = step({k: inputs[k] for k in ("sample", "timestep", "id_boost")})["noise_pred"]
        assert np.array_equal(got, backend.run("unet", inputs)["noise_pred"])


def test_cfg_batch_is_chunked_to_the_unet_profile(monkeypatch, tiny_pipeline, people):
    """Batch 5 with CFG is 10 UNet rows, over the profile's 8: chunks of 4 + 1 images give the
    images of one unchunked call."""
    from dynamicid_rt.denoiser import guided_unet

    request = Request(prompt="x", identities=people, width=256, height=256, steps=2, seed=5, batch=5, sampler="euler")
    rows: list[int] = []
    bind = tiny_pipeline.backend.bind

    def recording_bind(engine, constants):
        call = bind(engine, constants)
        return lambda inputs: rows.append(len(inputs["sample"])) or call(inputs)

    monkeypatch.setattr(tiny_pipeline.backend, "bind", recording_bind)
    chunked_latent, _ = _generate(tiny_pipeline, request)
    assert sorted(set(rows)) == [2, 8]
    rows.clear()
    monkeypatch.setattr(guided_unet, "profile_max_rows", lambda: 64)
    whole_latent, _ = _generate(tiny_pipeline, request)
    assert set(rows) == {10}
    # Rows never interact in the UNet; BLAS blocking may still differ with the row count.
    np.testing.assert_allclose(chunked_latent, whole_latent, rtol=0, atol=1e-5 * np.abs(whole_latent).max())


def test_backend_options_reach_the_backend(tiny_bundle, caplog):
    """--cuda-graphs and --trt-provider go to the backend that declares them, and only there."""
    from dynamicid_rt.backends import create_backend
    from dynamicid_rt.modelfiles.paths import ModelPaths

    paths = ModelPaths.from_folder(tiny_bundle)
    torch_backend = create_backend("torch", paths, device="cpu", cuda_graphs=True)
    assert torch_backend.cuda_graphs is True and "needs a CUDA device" in caplog.text
    assert create_backend("torch", paths, device="cpu").cuda_graphs is False
    caplog.clear()
    create_backend("torch", paths, device="cpu", trt_provider=True)
    assert "takes no trt_provider" in caplog.text


class _TorchCudaStandIn:
    """STAND-IN for the torch.cuda calls of a CUDA-graph capture (this torch has no CUDA): records
    the device made current, the streams made and the stream ``torch.cuda.graph`` captures on;
    "capturing" runs the step eagerly on the CPU, so the captured output is a real one."""

    def __init__(self) -> None:
        self.current: list[object] = [None]  # the current-device stack
        self.streams: list[types.SimpleNamespace] = []
        self.captures: list[dict] = []

    def device(self, device):
        standin = self

        class _Device:
            def __enter__(self):
                standin.current.append(device)

            def __exit__(self, *exc):
                standin.current.pop()

        return _Device()

    def Stream(self, device=None):  # noqa: N802 - torch's name
        stream = types.SimpleNamespace(device=device, made_on=self.current[-1], wait_stream=lambda other: None)
        self.streams.append(stream)
        return stream

    def current_stream(self, device=None):
        return types.SimpleNamespace(device=device if device is not None else self.current[-1], wait_stream=lambda other: None)

    def stream(self, stream):
        return contextlib.nullcontext()

    def CUDAGraph(self):  # noqa: N802 - torch's name
        return types.SimpleNamespace(replay=lambda: self.captures.append({"replay_on": self.current[-1]}))

    def graph(self, cuda_graph, pool=None, stream=None):
        self.captures.append({"stream": stream, "current": self.current[-1]})
        return contextlib.nullcontext()


def test_cuda_graph_captures_and_replays_on_a_stream_of_the_tensors_device(monkeypatch, tiny_pipeline):
    """torch.cuda.graph left to itself captures on a stream of the current device (cuda:0 on a
    server's worker thread), which records nothing for a model on cuda:1: the capture must get a
    side stream made on the tensors' device, with that device current."""
    import torch

    from dynamicid_rt.backends import torch_bound

    standin = _TorchCudaStandIn()
    for name in ("device", "Stream", "current_stream", "stream", "CUDAGraph", "graph"):
        monkeypatch.setattr(torch.cuda, name, getattr(standin, name))
    backend = tiny_pipeline.backend
    spec = ENGINES["unet"]
    inputs = spec.sample_inputs(backend.dims, seed=6, B=2, h=32, w=32, N=2, M=2)
    module = backend.module("unet")
    tensors = {k: backend._tensor(spec, k, v, module) for k, v in inputs.items()}
    bound = torch_bound.BoundUNet(module, {k: v for k, v in tensors.items() if k not in STEP})
    step = [tensors[k] for k in STEP]
    with torch.inference_mode():
        captured = torch_bound._CapturedStep(bound, *step)
        eager = bound.step(*step)
        replayed = captured.replay(*step)
    device = tensors["sample"].device
    (side,) = standin.streams
    assert side.device == device and side.made_on == device
    assert standin.captures[0] == {"stream": side, "current": device}
    assert standin.captures[1] == {"replay_on": device}
    assert torch.equal(replayed, eager)


def test_every_call_from_a_worker_thread_runs_with_the_backends_gpu_current(monkeypatch, tiny_pipeline):
    """A cuda:1 backend driven from a server's worker thread (where CUDA's current device is 0):
    run, the bound step and close must each make cuda:1 current while they touch the device.
    The CPU torch here stands in for the GPU: the modules and tensors are the CPU backend's, and
    torch.cuda.device / empty_cache are the stand-in's, recording what is current."""
    import threading

    import torch

    from dynamicid_rt.backends.torch_backend import TorchBackend

    standin = _TorchCudaStandIn()
    monkeypatch.setattr(torch.cuda, "device", standin.device)
    cpu = tiny_pipeline.backend
    gpu = TorchBackend(cpu.paths, device="cuda:1", precision="fp32")
    cpu.module("unet")
    gpu._modules = dict(cpu._modules)  # loaded on the CPU: this torch has no CUDA
    current: list[object] = []

    def tensor(spec, name, value, module):
        current.append(standin.current[-1])
        return cpu._tensor(spec, name, value, module)

    monkeypatch.setattr(gpu, "_tensor", tensor)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: current.append(standin.current[-1]))
    inputs = ENGINES["unet"].sample_inputs(gpu.dims, seed=7, B=2, h=32, w=32, N=2, M=2)

    errors: list[BaseException] = []

    def serve() -> None:
        try:
            gpu.run("unet", inputs)
            step = gpu.bind("unet", {k: v for k, v in inputs.items() if k not in STEP})
            step({k: inputs[k] for k in STEP})
            gpu.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(exc)

    worker = threading.Thread(target=serve)
    worker.start()
    worker.join()
    assert errors == []
    # run: every input; bind: the constants; the step: its 3 inputs; close: empty_cache.
    assert len(current) == 2 * len(inputs) + 1 and set(current) == {torch.device("cuda:1")}
