"""The tiny autoencoder (``taesd_decoder``, SPEC §4): the engine against diffusers' ``AutoencoderTiny``
on the tiny bundle's random TAESD (madebyollin/taesd's format), on every CPU backend; live previews of
the denoised estimate within their time budget; the opt-in fast final decode, its PNG parameter and
its one-line refusal when the model folder has no taesd/.

The references are diffusers' own: ``AutoencoderTiny.decode`` on UNet-space latents (its config's
``scaling_factor`` is 1.0; the engine takes latents already divided by 0.18215) and, for the denoised
estimate, DDIM's x0 solved from two consecutive latents with diffusers' ``DDIMScheduler`` ᾱ.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamicid_rt import Pipeline, Request, format_parameters, parse_parameters
from dynamicid_rt.backends import probes
from dynamicid_rt.contract import ENGINES, VAE_SCALE
from dynamicid_rt.errors import RequestError
from dynamicid_rt.sampling.live_preview import LivePreview
from dynamicid_rt.modelfiles.paths import ModelPaths

ENGINE = "taesd_decoder"
needs_bf16 = pytest.mark.skipif(not probes.cpu_has_bf16(), reason="this CPU has no bf16 units (avx512_bf16 or amx_bf16)")


@pytest.fixture(scope="module")
def paths(tiny_bundle) -> ModelPaths:
    return ModelPaths.from_folder(tiny_bundle)


@pytest.fixture(scope="module")
def reference(paths):
    """diffusers' AutoencoderTiny from the bundle's taesd/ folder, as a pipeline would load it."""
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(str(paths.taesd), local_files_only=True).eval()


def _diffusers_decode(reference, unet_latent: np.ndarray) -> np.ndarray:
    """diffusers' convention: ``decode(latents / scaling_factor)`` on the UNet's latents, then [-1, 1]."""
    with torch.no_grad():
        out = reference.decode(torch.from_numpy(unet_latent) / reference.config.scaling_factor).sample
    return out.clamp(-1.0, 1.0).numpy()


def _latent(seed: int = 0, h: int = 32, w: int = 40) -> np.ndarray:
    """An SD1.5-like UNet latent (std about 1), non-square so that h and w cannot be swapped unseen."""
    return np.random.default_rng(seed).standard_normal((1, 4, h, w)).astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10.0 * math.log10(4.0 / float(np.mean((a.astype(np.float64) - b) ** 2)))  # peak-to-peak 2 ([-1, 1])


def _backend(name: str, paths: ModelPaths, engines: Path, precision: str):
    if name == "torch":
        from dynamicid_rt.backends.torch_backend import TorchBackend

        return TorchBackend(paths, device="cpu", precision=precision)
    if name == "onnxruntime":
        from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(paths, device="cpu", precision=precision, engine_dir=engines)
    from dynamicid_rt.backends.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(paths, precision=precision, engine_dir=engines)


def test_the_bundle_carries_taesd_as_madebyollin_ships_it(paths, reference):
    assert paths.provides(ENGINE) and ENGINES[ENGINE].optional
    assert sorted(p.name for p in paths.taesd.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert type(reference).__name__ == "AutoencoderTiny" and reference.config.scaling_factor == 1.0
    # Random weights, yet images that spread over [-1, 1] rather than sitting at the clamp.
    image = _diffusers_decode(reference, _latent())
    assert image.std() > 0.1 and np.mean(np.abs(image) >= 1.0) < 0.01


@pytest.mark.parametrize("backend_name", ["torch", "onnxruntime", "openvino"])
def test_engine_matches_diffusers_in_fp32(backend_name, paths, tiny_engines, reference):
    latent = _latent()
    want = _diffusers_decode(reference, latent)
    backend = _backend(backend_name, paths, tiny_engines, "fp32")
    try:
        got = backend.run(ENGINE, {"latent": latent / VAE_SCALE})["image"]  # the contract: divided by 0.18215
    finally:
        backend.close()
    assert got.shape == (1, 3, 256, 320) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("backend_name", "precision"),
    [("torch", "bf16"), pytest.param("openvino", "bf16", marks=needs_bf16)],
)
def test_engine_holds_40_db_in_reduced_precision(backend_name, precision, paths, tiny_engines, reference, tmp_path):
    latent = _latent(1)
    backend = _backend(backend_name, paths, tiny_engines, precision)
    try:
        got = backend.run(ENGINE, {"latent": latent / VAE_SCALE})["image"]
    finally:
        backend.close()
    assert _psnr(got, _diffusers_decode(reference, latent)) >= 40.0


def test_fp16_graph_holds_40_db(paths, tiny_engines, reference, tmp_path):
    """The fp16 ONNX graph that ONNX Runtime's CUDA provider and TensorRT build from, run on the CPU."""
    import shutil

    import onnxruntime as ort

    from dynamicid_rt.export import build_engines

    folder = tmp_path / "engines"
    shutil.copytree(tiny_engines, folder)
    (entry,) = build_engines(paths, folder, "fp16", engines=[ENGINE])
    assert entry.manifest["graph_precision"] == "fp16"
    session = ort.InferenceSession(str(entry.onnx), providers=["CPUExecutionProvider"])
    latent = _latent(2)
    (got,) = session.run(None, {"latent": latent / VAE_SCALE})
    assert _psnr(got.astype(np.float32), _diffusers_decode(reference, latent)) >= 40.0


def test_openvino_compiles_one_static_plan_per_size(paths, tiny_engines):
    backend = _backend("openvino", paths, tiny_engines, "fp32")
    try:
        for h, w in ((32, 32), (32, 40)):
            backend.run(ENGINE, {"latent": _latent(h=h, w=w)})
        plans = [shapes for name, shapes in backend._plans if name == ENGINE]
    finally:
        backend.close()
    assert sorted(dict(shapes)["latent"] for shapes in plans) == [(1, 4, 32, 32), (1, 4, 32, 40)]


# -- the pipeline --------------------------------------------------------------------------------


def _ddim_x0(x_t: np.ndarray, x_prev: np.ndarray, a_t: float, a_prev: float) -> np.ndarray:
    """DDIM (eta 0) writes x_t = √a_t x0 + √(1-a_t) ε and x_prev = √a_prev x0 + √(1-a_prev) ε with
    one ε: solved for x0 from two consecutive latents, without the model's ε."""
    det = math.sqrt(a_t) * math.sqrt(1 - a_prev) - math.sqrt(a_prev) * math.sqrt(1 - a_t)
    return ((math.sqrt(1 - a_prev) * x_t - math.sqrt(1 - a_t) * x_prev) / det).astype(np.float32)


def test_previews_are_full_size_frames_of_the_denoised_estimate(tiny_pipeline, reference, monkeypatch):
    from diffusers import DDIMScheduler

    pipe = tiny_pipeline
    monkeypatch.setattr(pipe, "preview_interval", 0.0)
    monkeypatch.setattr(pipe, "preview_budget", 1.0)  # a frame at every step: each can be checked
    infos = []
    request = Request(prompt="a portrait", width=256, height=320, steps=4, sampler="ddim", seed=5)
    noise = np.random.default_rng(5).standard_normal((1, 4, 40, 32)).astype(np.float32)
    result = pipe.generate(request.with_updates(initial_latents=noise), progress=infos.append)

    scheduler = DDIMScheduler.from_pretrained(str(pipe.paths.base / "scheduler"))
    scheduler.set_timesteps(4)
    ac = scheduler.alphas_cumprod.numpy().astype(np.float64)
    assert len(infos) == 4
    latents = [noise] + [info.latent for info in infos]
    for i, (info, t) in enumerate(zip(infos, scheduler.timesteps.tolist())):
        prev = t - 1000 // 4
        a_prev = ac[prev] if prev >= 0 else float(scheduler.final_alpha_cumprod)
        x0 = _ddim_x0(latents[i].astype(np.float64), latents[i + 1].astype(np.float64), ac[t], a_prev)
        np.testing.assert_allclose(info.denoised, x0, rtol=1e-4, atol=1e-3)
        assert info.preview.shape == (320, 256, 3) and info.preview.dtype == np.uint8
        want = ((_diffusers_decode(reference, info.denoised[:1])[0].transpose(1, 2, 0) + 1.0) * 127.5).round()
        assert np.abs(info.preview.astype(np.float64) - want).max() <= 1.0
    np.testing.assert_array_equal(result.latents, infos[-1].latent)


def test_preview_time_stays_within_five_percent_of_the_run(tiny_pipeline, monkeypatch):
    """Counts the TAESD calls the previews make and their time against the whole run."""
    pipe = tiny_pipeline
    monkeypatch.setattr(pipe, "preview_interval", 0.0)  # only the budget limits them here
    calls, spent = [], []
    run = pipe.backend.run

    def counting(engine, inputs):
        began = time.perf_counter()
        out = run(engine, inputs)
        if engine == ENGINE:
            calls.append(inputs["latent"].shape)
            spent.append(time.perf_counter() - began)
        return out

    monkeypatch.setattr(pipe.backend, "run", counting)
    frames = []
    result = pipe.generate(Request(prompt="a portrait", width=256, height=256, steps=16, sampler="euler", seed=1),
                           progress=lambda info: frames.append(info.preview))
    assert len(frames) == 16 and all(f.shape == (256, 256, 3) for f in frames)
    assert 1 <= len(calls) < 16 and all(shape == (1, 4, 32, 32) for shape in calls)  # the first image, throttled
    assert sum(spent) <= 0.05 * result.timings["total"], (len(calls), sum(spent), result.timings)


def test_the_budget_rule_on_a_fake_clock():
    """100 steps of 10 ms and decodes of 4 ms: planning for half of the 5 % budget, at twice the
    dearest decode, allows a frame after the first step, the second at 0.48 s (0.004 spent plus 2 x
    0.004 reckoned = 2.5 % of it), then one every 0.16 s."""
    now = [0.0]
    decodes = []

    def decode(latent):
        decodes.append(now[0])
        now[0] += 0.004
        return np.zeros((8, 8, 3), np.uint8)

    preview = LivePreview(decode, budget=0.05, interval=0.0, clock=lambda: now[0])
    latent = np.zeros((1, 4, 1, 1), np.float32)
    for _ in range(100):
        now[0] += 0.010
        preview.frame(latent, latent)
    assert preview.spent == pytest.approx(0.004 * len(decodes)) and preview.frames == len(decodes)
    assert preview.spent <= 0.025 * now[0] and len(decodes) == 5
    assert decodes[0] == pytest.approx(0.01) and decodes[1] >= 0.012 / 0.025
    # A decode four times dearer than any before still keeps the previews within the 5 %.
    decode_cost = [0.004]
    spiky = LivePreview(lambda latent: now.__setitem__(0, now[0] + decode_cost[0]) or np.zeros((8, 8, 3), np.uint8),
                        budget=0.05, interval=0.0, clock=lambda: now[0])
    start = now[0]
    for step in range(100):
        now[0] += 0.010
        decode_cost[0] = 0.016 if step > 50 else 0.004
        spiky.frame(latent, latent)
    assert spiky.spent <= 0.05 * (now[0] - start)

    # The interval alone (an unlimited budget): frames no closer than 0.5 s.
    decodes.clear()
    slow = LivePreview(decode, budget=1.0, interval=0.5, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 0.010
        slow.frame(latent, latent)
    assert len(decodes) >= 2 and all(b - a >= 0.5 for a, b in zip(decodes, decodes[1:]))


def test_fast_decode_is_taesd_on_the_final_latent_and_written_to_the_png(tiny_pipeline, reference):
    request = Request(prompt="a portrait", width=256, height=256, steps=2, seed=9, decoder="taesd")
    result = tiny_pipeline.generate(request)
    want = ((_diffusers_decode(reference, result.latents)[0].transpose(1, 2, 0) + 1.0) * 127.5).round()
    assert np.abs(np.asarray(result.images[0], np.float64) - want).max() <= 1.0
    full = tiny_pipeline.generate(request.with_updates(decoder="vae"))
    np.testing.assert_array_equal(full.latents, result.latents)
    assert not np.array_equal(np.asarray(full.images[0]), np.asarray(result.images[0]))

    text = format_parameters(result)
    assert "VAE: taesd" in text and "VAE: taesd" not in format_parameters(full)
    restored = parse_parameters(text)
    assert restored["decoder"] == "taesd" and "decoder" not in parse_parameters(format_parameters(full))
    assert Request(prompt=restored["prompt"], decoder=restored["decoder"]).decoder == "taesd"


@pytest.fixture(scope="module")
def no_taesd_folder(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle without taesd/ (its other parts linked, not copied)."""
    root = tmp_path_factory.mktemp("no-taesd") / "models"
    root.mkdir()
    for part in ("base", "image_encoder", "dynamicid", "insightface"):
        os.symlink(tiny_bundle / part, root / part)
    return root


def test_without_taesd_previews_are_the_latent_map_and_fast_decode_is_refused_first(no_taesd_folder, tmp_path):
    from dynamicid_rt.sampling.preview import latent_to_rgb

    pipe = Pipeline.load(no_taesd_folder, backend="torch", device="cpu", cache_dir=tmp_path)
    try:
        assert pipe.decoders == ["vae"] and pipe.preview_engine is None
        infos = []
        pipe.generate(Request(prompt="x", width=256, height=256, steps=2, seed=3), progress=infos.append)
        for info in infos:
            np.testing.assert_array_equal(info.preview, latent_to_rgb(info.latent[0]))
        unet_calls = []
        run = pipe.backend.run
        pipe.backend.run = lambda engine, inputs: unet_calls.append(engine) or run(engine, inputs)
        with pytest.raises(RequestError, match="decoder 'taesd' needs a taesd/ folder") as caught:
            pipe.generate(Request(prompt="x", width=256, height=256, steps=2, decoder="taesd"))
        assert "\n" not in str(caught.value) and unet_calls == []
    finally:
        pipe.close()


def test_cli_refuses_taesd_without_weights_before_loading(no_taesd_folder, tmp_path, monkeypatch, caplog):
    from dynamicid_rt import cli

    def no_load(*args, **kwargs):
        raise AssertionError("Pipeline.load ran before the decoder was checked")

    monkeypatch.setattr(Pipeline, "load", no_load)
    code = cli.main(["generate", "--models", str(no_taesd_folder), "--prompt", "x", "--decoder", "taesd",
                     "--out", str(tmp_path / "out.png")])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 1 and len(errors) == 1 and "\n" not in errors[0], errors
    assert "decoder 'taesd' needs a taesd/ folder" in errors[0] and "(decoder 'vae')" in errors[0]
    assert not (tmp_path / "out.png").exists()


def test_request_refuses_an_unknown_decoder():
    with pytest.raises(RequestError, match="decoder='tiny'"):
        Request(prompt="x", decoder="tiny")


def test_a_taesd_decode_with_nan_is_retried_in_fp32_and_a_preview_falls_back_to_the_latent_map(tiny_pipeline, monkeypatch, caplog):
    import logging

    from dynamicid_rt.sampling.preview import latent_to_rgb

    request = Request(prompt="x", width=256, height=256, steps=1, seed=2, sampler="euler", decoder="taesd")
    expected = np.asarray(tiny_pipeline.generate(request).images[0])
    run = tiny_pipeline.backend.run

    def overflowing(engine, inputs):
        out = run(engine, inputs)
        return {"image": np.full_like(out["image"], np.nan)} if engine == ENGINE else out

    retries = []
    monkeypatch.setattr(tiny_pipeline.backend, "run", overflowing)
    monkeypatch.setattr(tiny_pipeline.backend, "run_fp32", lambda engine, inputs: retries.append(engine) or run(engine, inputs))
    with caplog.at_level(logging.WARNING):
        image = np.asarray(tiny_pipeline.generate(request).images[0])
    assert retries == [ENGINE] and "again in fp32" in caplog.text and np.array_equal(image, expected)

    # A preview whose fp32 retry overflows too shows the latent's linear map, and the run goes on.
    monkeypatch.setattr(tiny_pipeline.backend, "run_fp32", overflowing)
    infos = []
    tiny_pipeline.generate(request.with_updates(decoder="vae"), progress=infos.append)
    np.testing.assert_array_equal(infos[0].preview, latent_to_rgb(infos[0].latent[0]))
