"""GPU checks (``python -m pytest -m gpu``): the CUDA paths against the CPU fp32 reference.

Deselected by default and skipped where no CUDA device is visible; the CI machine has none.
"""
from __future__ import annotations

import numpy as np
import pytest

from dynamicid_rt.contract import ENGINES

pytestmark = pytest.mark.gpu


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _ort_cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.fixture()
def strict_fp32(monkeypatch):
    """fp32 on CUDA without TF32: cuDNN convolutions default to TF32 (10-bit mantissa, ~3e-3 off
    the CPU over a UNet), which is PyTorch's speed default for users but hides real differences here."""
    import torch

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.skipif(not _cuda_available(), reason="no CUDA device visible to torch")
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_torch_cuda_engines_match_cpu(tiny_bundle, precision, tolerance, strict_fp32):
    from dynamicid_rt.backends.torch_backend import TorchBackend
    from dynamicid_rt.modelfiles.paths import ModelPaths

    paths = ModelPaths.from_folder(tiny_bundle)
    cpu = TorchBackend(paths, device="cpu", precision="fp32")
    gpu = TorchBackend(paths, device="cuda", precision=precision)
    for engine, spec in ENGINES.items():
        point = {"h": 32, "w": 40, "N": 3, "M": 3} if engine == "unet" else {"h": 32, "w": 40} if engine == "vae_decoder" else {}
        inputs = spec.sample_inputs(cpu.dims, seed=1, **point)
        ref, out = cpu.run(engine, inputs), gpu.run(engine, inputs)
        for name in spec.output_names:
            assert np.all(np.isfinite(out[name])), (engine, name)
            assert _rel(out[name], ref[name]) < tolerance, (engine, name)


@pytest.mark.skipif(not _ort_cuda_available(), reason="onnxruntime-gpu with the CUDA provider is not installed")
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_onnxruntime_cuda_matches_cpu(tiny_bundle, tiny_engines, tmp_path, precision, tolerance):
    from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend
    from dynamicid_rt.modelfiles.paths import ModelPaths

    paths = ModelPaths.from_folder(tiny_bundle)
    cpu = OnnxRuntimeBackend(paths, device="cpu", engine_dir=tiny_engines)
    gpu = OnnxRuntimeBackend(paths, device="cuda", precision=precision, engine_dir=tmp_path / "engines")
    inputs = ENGINES["unet"].sample_inputs(cpu.dims, seed=2, h=32, w=32, N=2, M=2)
    constant = {k: v for k, v in inputs.items() if k not in ("sample", "timestep", "id_boost")}
    step = gpu.bind("unet", constant)
    out = step({k: inputs[k] for k in ("sample", "timestep", "id_boost")})["noise_pred"]
    assert _rel(out, cpu.run("unet", inputs)["noise_pred"]) < tolerance


# -- torch on CUDA: bind, CUDA graphs, masks, pipeline, activation maps, VAE, timings ---------------

needs_cuda = pytest.mark.skipif(not _cuda_available(), reason="no CUDA device visible to torch")
STEP = ("sample", "timestep", "id_boost")


def _paths(tiny_bundle):
    from dynamicid_rt.modelfiles.paths import ModelPaths

    return ModelPaths.from_folder(tiny_bundle)


def _unet_inputs(dims, seed: int, **point) -> dict[str, np.ndarray]:
    inputs = ENGINES["unet"].sample_inputs(dims, seed=seed, **point)
    # Box edges that are exact decimals but not exact in fp16 (0.53 → 0.5298): the fp32 island's job.
    inputs["id_boxes"] = np.array([[0.0, 0.0, 1.0, 0.53], [0.0, 0.29, 1.0, 1.0]], np.float32)[: len(inputs["id_boxes"])]
    inputs["id_gating"] = np.ones(1, np.float32)
    return inputs


@needs_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_torch_cuda_bind_matches_run_over_steps(tiny_bundle, cuda_graphs):
    from dynamicid_rt.backends.torch_backend import TorchBackend

    backend = TorchBackend(_paths(tiny_bundle), device="cuda", precision="fp16", cuda_graphs=cuda_graphs)
    inputs = _unet_inputs(backend.dims, seed=3, B=4, h=40, w=32, N=2, M=2)
    step = backend.bind("unet", {k: v for k, v in inputs.items() if k not in STEP})
    rng = np.random.default_rng(0)
    for t, boost in ((999.0, 4.0), (500.0, 4.0), (20.0, 0.0)):  # changing step inputs must reach the graph
        inputs |= {"sample": rng.standard_normal(inputs["sample"].shape).astype(np.float32),
                   "timestep": np.full_like(inputs["timestep"], t), "id_boost": np.array([boost], np.float32)}
        bound = step({k: inputs[k] for k in STEP})["noise_pred"]
        run = backend.run("unet", inputs)["noise_pred"]
        assert np.isfinite(bound).all() and _rel(bound, run) < 1e-3, (t, cuda_graphs)


@needs_cuda
def test_torch_cuda_masks_equal_cpu_at_inexact_fp16_boxes(tiny_bundle):
    """0.53 of 100 cells and 0.29 of 100 cells: the CUDA fp16 model's region masks equal the CPU fp32
    ones (the box arithmetic stays fp32 on the device)."""
    import torch

    from dynamicid_rt.backends.torch_backend import TorchBackend

    masks = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp16")):
        backend = TorchBackend(_paths(tiny_bundle), device=device, precision=precision)
        module = backend.module("unet")
        inputs = _unet_inputs(backend.dims, seed=4, B=2, h=32, w=32, N=2, M=2)
        t = {k: backend._tensor(k, v, module) for k, v in inputs.items()}
        with torch.inference_mode():
            saa = module.prepare((100, 100), t["id_tokens"], t["id_boxes"], t["id_scale"], t["id_boost"], t["id_gating"], t["id_mix"])
        masks[device] = {lvl: tuple(m.cpu().numpy() for m in pair) for lvl, pair in saa.levels.items()}
    for level, (masked, inside) in masks["cpu"].items():
        assert np.array_equal(masks["cuda"][level][0], masked) and np.array_equal(masks["cuda"][level][1], inside), level
    # Level 0, 100 columns: box 0 (tokens 0-3) ends before column 53, box 1 (tokens 4-7) starts at 29.
    masked0 = masks["cpu"][0][0].reshape(100, 100, -1)
    assert masked0[:, 53:, 0].all() and not masked0[:, :53, 0].any()
    assert masked0[:, :29, 4].all() and not masked0[:, 29:, 4].any()


@needs_cuda
def test_torch_cuda_pipeline_batch8_with_cfg(tiny_bundle, samples, tmp_path):
    """Batch 8 with CFG (16 UNet rows, chunked to the profile's 8), two people, CUDA fp16 vs CPU fp32."""
    from dynamicid_rt import Pipeline, Request

    results = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp16")):
        with Pipeline.load(tiny_bundle, backend="torch", device=device, precision=precision, cache_dir=tmp_path / device) as pipe:
            people = [pipe.encode_identity(samples / "person_a.png"), pipe.encode_identity(samples / "person_b.png")]
            request = Request(prompt="two people", identities=people, width=256, height=320, steps=3, seed=1, batch=8,
                              sampler="euler", activation_maps=True)
            latents = []
            result = pipe.generate(request, progress=lambda info: latents.append(info.latent))
            results[device] = (latents[-1], result)
    (ref, ref_result), (got, result) = results["cpu"], results["cuda"]
    assert got.shape == (8, 4, 40, 32) and np.isfinite(got).all()
    assert _rel(got, ref) < 5e-2
    assert len(result.images) == 8 and result.activation_maps is not None
    maps, ref_maps = np.asarray(result.activation_maps), np.asarray(ref_result.activation_maps)
    # Mean, not max: the 0.3 gating threshold may flip a few positions between fp16 and fp32.
    assert maps.shape == ref_maps.shape and np.abs(maps - ref_maps).mean() < 2e-2


@needs_cuda
def test_torch_cuda_vae_is_fp32_under_fp16_and_decodes(tiny_bundle, strict_fp32):
    from dynamicid_rt.backends.torch_backend import TorchBackend

    paths = _paths(tiny_bundle)
    gpu = TorchBackend(paths, device="cuda", precision="fp16")
    assert {str(p.dtype) for p in gpu.module("vae_decoder").parameters()} == {"torch.float32"}
    inputs = ENGINES["vae_decoder"].sample_inputs(gpu.dims, seed=5, h=40, w=32)
    ref = TorchBackend(paths, device="cpu", precision="fp32").run("vae_decoder", inputs)["image"]
    out = gpu.run("vae_decoder", inputs)["image"]
    assert np.isfinite(out).all() and _rel(out, ref) < 1e-3
    assert _rel(gpu.run_fp32("vae_decoder", inputs)["image"], ref) < 1e-3


@needs_cuda
def test_torch_cuda_timings_printout(tiny_bundle, capsys):
    """Prints per-step times of run, bind and bind + CUDA graphs (a printout, not an assertion)."""
    import time

    import torch

    from dynamicid_rt.backends.torch_backend import TorchBackend

    paths = _paths(tiny_bundle)
    lines = []
    for label, graphs in (("run", None), ("bind", False), ("bind + CUDA graphs", True)):
        backend = TorchBackend(paths, device="cuda", precision="fp16", cuda_graphs=bool(graphs))
        inputs = _unet_inputs(backend.dims, seed=6, B=2, h=64, w=64, N=2, M=2)
        call = (lambda i: backend.run("unet", i)) if graphs is None else backend.bind("unet", {k: v for k, v in inputs.items() if k not in STEP})
        feed = inputs if graphs is None else {k: inputs[k] for k in STEP}
        for _ in range(3):
            call(feed)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            call(feed)
        torch.cuda.synchronize()
        lines.append(f"tiny UNet, latent 64x64, 2 rows, fp16, {label:20s}: {(time.perf_counter() - start) / 20 * 1e3:7.2f} ms/step")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# -- ONNX Runtime on CUDA: the provider that actually ran, fp16 islands, the VAE --------------------

needs_ort_cuda = pytest.mark.skipif(not _ort_cuda_available(), reason="onnxruntime-gpu with the CUDA provider is not installed")


@needs_ort_cuda
def test_onnxruntime_cuda_sessions_really_run_on_cuda(tiny_bundle, tmp_path):
    from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend

    gpu = OnnxRuntimeBackend(_paths(tiny_bundle), device="cuda", precision="fp16", engine_dir=tmp_path / "engines")
    for engine in ("text_encoder", "unet", "vae_decoder"):
        gpu.run(engine, ENGINES[engine].sample_inputs(gpu.dims, seed=1))
        assert gpu._sessions[engine].get_providers()[0] == "CUDAExecutionProvider", engine


@needs_ort_cuda
def test_onnxruntime_cuda_fp16_boxes_and_vae(tiny_bundle, tiny_engines, tmp_path):
    from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend

    paths = _paths(tiny_bundle)
    cpu = OnnxRuntimeBackend(paths, device="cpu", engine_dir=tiny_engines)
    gpu = OnnxRuntimeBackend(paths, device="cuda", precision="fp16", engine_dir=tmp_path / "engines")
    inputs = _unet_inputs(cpu.dims, seed=7, B=8, h=32, w=40, N=2, M=2)
    assert _rel(gpu.run("unet", inputs)["noise_pred"], cpu.run("unet", inputs)["noise_pred"]) < 2e-2
    assert gpu._entries["vae_decoder"].manifest["graph_precision"] == "fp32"
    vae_in = ENGINES["vae_decoder"].sample_inputs(cpu.dims, seed=8, h=40, w=32)
    out = gpu.run("vae_decoder", vae_in)["image"]
    assert np.isfinite(out).all() and _rel(out, cpu.run("vae_decoder", vae_in)["image"]) < 1e-3
