"""A LoRA'd 4-step LCM image without guidance on every CPU backend against torch fp32, and the
engine cache keyed by the LoRA set (switching back reuses the earlier entry)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from dynamicid_rt import Pipeline, Request  # noqa: E402
from dynamicid_rt.modelfiles.lora import LoraRef, load_loras  # noqa: E402
from dynamicid_rt.modelfiles.paths import ModelPaths  # noqa: E402
from lora_files import write_kohya  # noqa: E402


@pytest.fixture(scope="module")
def lora_file(tiny_bundle, tmp_path_factory):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    base = tiny_bundle / "base"
    unet, text = UNet2DConditionModel.from_pretrained(base / "unet"), CLIPTextModel.from_pretrained(base / "text_encoder")
    # Strong enough to change a tiny random model's image far beyond the 40 dB the backends must agree to.
    return write_kohya(tmp_path_factory.mktemp("loras") / "style.safetensors", unet, text, seed=4, alpha=8.0, conv=True)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _lcm_image(pipe: Pipeline, loras) -> np.ndarray:
    req = Request(prompt="a portrait <lora:style:0.8>", width=256, height=256, steps=4, sampler="lcm", guidance=1.0,
                  seed=21, loras=loras)
    result = pipe.generate(req)
    assert result.sampler == "lcm"
    return np.asarray(result.images[0])


@pytest.fixture(scope="module")
def torch_images(tiny_pipeline, lora_file):
    """The torch fp32 references: the LoRA'd image and the plain one."""
    reference, plain = _lcm_image(tiny_pipeline, [(lora_file, 0.8)]), _lcm_image(tiny_pipeline, [])
    assert _psnr(reference, plain) < 30.0  # the LoRA changes the image
    return reference, plain


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_lora_lcm_image_matches_torch(backend, tiny_bundle, tiny_engines, torch_images, lora_file, tmp_path):
    pytest.importorskip(backend)
    loras = [(lora_file, 0.8)]
    reference, plain = torch_images
    with Pipeline.load(tiny_bundle, backend=backend, device="cpu", onnx_cache=tiny_engines, cache_dir=tmp_path) as pipe:
        assert _psnr(_lcm_image(pipe, loras), reference) >= 40.0
        assert _psnr(_lcm_image(pipe, []), plain) >= 40.0  # back to the plain engines


def test_cache_key_follows_the_set_and_switching_back_reuses(tiny_bundle, tiny_engines, lora_file):
    from dynamicid_rt.export.lora_entries import lora_entries

    paths = ModelPaths.from_folder(tiny_bundle)

    def entries(scale):
        return lora_entries(paths, tiny_engines, "fp32", load_loras([LoraRef(lora_file, scale)]) if scale else [])

    plain = entries(None)
    first = entries(0.8)
    other = entries(0.5)
    again = entries(0.8)
    for engine in ("unet", "text_encoder"):
        assert first[engine].path != plain[engine].path != other[engine].path != first[engine].path
        assert again[engine].path == first[engine].path and again[engine].reused
        assert first[engine].manifest["loras"] == [[load_loras([LoraRef(lora_file)])[0][0].sha256, 0.8]]
    assert entries(None)["unet"].path == plain["unet"].path


def test_cli_generate_with_lora(tiny_bundle, lora_file, tmp_path, caplog):
    from dynamicid_rt.cli import main

    out = tmp_path / "lcm.png"
    args = ["generate", "--models", str(tiny_bundle), "--backend", "torch", "--prompt", "a portrait", "--size", "256x256",
            "--sampler", "lcm", "--steps", "2", "--guidance", "1", "--seed", "3"]
    assert main([*args, "--lora", f"{lora_file}:0.6", "--lora", str(lora_file), "--out", str(out)]) == 0
    assert out.is_file()
    caplog.clear()
    assert main([*args, "--lora", str(tmp_path / "nope.safetensors:0.5"), "--out", str(tmp_path / "x.png")]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "nope.safetensors does not exist" in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "x.png").exists()


def test_result_carries_a1111_tags_and_hashes(tiny_pipeline, lora_file):
    import hashlib

    data = lora_file.read_bytes()
    header = int.from_bytes(data[:8], "little")
    short = hashlib.sha256(data[8 + header:]).hexdigest()[:12]  # A1111: the tensor data after the header
    req = Request(prompt="a portrait", width=256, height=256, steps=1, sampler="lcm", guidance=1.0, seed=2, loras=[(lora_file, 0.8)])
    result = tiny_pipeline.generate(req)
    assert result.lora_hashes == {"style": short}
    assert result.request.prompt == "a portrait <lora:style:0.8>"
    # The tag is not text for CLIP: the tagged prompt makes the same image.
    again = tiny_pipeline.generate(req.with_updates(prompt=result.request.prompt))
    assert again.request.prompt == result.request.prompt
    np.testing.assert_array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))


def test_weights_the_graph_does_not_hold_fall_back_to_an_export(tiny_bundle, tiny_engines, lora_file, tmp_path, monkeypatch):
    """Where a weight is not one initializer of its own, the merged module is exported instead: both
    ways give the same LoRA'd unet."""
    import shutil

    import onnxruntime as ort

    from dynamicid_rt.contract import ENGINES
    from dynamicid_rt.export import lora_entries as entries_module

    paths = ModelPaths.from_folder(tiny_bundle)
    loras = load_loras([LoraRef(lora_file, 0.6)])
    patched = entries_module.lora_entries(paths, tiny_engines, "fp32", loras, engines=["unet"])["unet"]
    scratch = tmp_path / "engines"
    shutil.copytree(tiny_engines / "unet-fp32", scratch / "unet-fp32")  # the base entry, not its LoRA'd ones
    monkeypatch.setattr(entries_module, "initializers_by_value", lambda model: {})
    exported = entries_module.lora_entries(paths, scratch, "fp32", loras, engines=["unet"])["unet"]
    inputs = ENGINES["unet"].sample_inputs(patched.dims, B=1, h=32, w=32, N=1, M=1)
    outs = [ort.InferenceSession(str(e.onnx), providers=["CPUExecutionProvider"]).run(None, inputs)[0] for e in (patched, exported)]
    assert np.abs(outs[0] - outs[1]).max() <= 1e-4 * np.abs(outs[1]).max()


def test_png_parameters_carry_tags_and_hashes_back(tiny_pipeline, lora_file, tmp_path):
    from dynamicid_rt import format_parameters, parse_parameters, read_parameters, save_png

    req = Request(prompt="a portrait", width=256, height=256, steps=1, sampler="lcm", guidance=1.0, seed=2, loras=[(lora_file, 0.8)])
    result = tiny_pipeline.generate(req)
    text = format_parameters(result, 0)
    assert "Sampler: LCM" in text and "Lora hashes:" in text
    parsed = parse_parameters(read_parameters(save_png(result.images[0], tmp_path / "x.png", text)))
    assert parsed["prompt"] == "a portrait <lora:style:0.8>"
    assert parsed["lora_hashes"] == result.lora_hashes and parsed["sampler"] == "lcm"


def test_torch_merges_into_an_engine_first_loaded_by_a_run(tiny_bundle, lora_file):
    from dynamicid_rt.backends.torch_backend import TorchBackend
    from dynamicid_rt.contract import ENGINES

    paths = ModelPaths.from_folder(tiny_bundle)
    inputs = ENGINES["unet"].sample_inputs(TorchBackend(paths).dims, seed=3)
    ran_first = TorchBackend(paths)
    plain = ran_first.run("unet", inputs)["noise_pred"]  # loads the UNet inside run's inference mode
    ran_first.set_loras([LoraRef(lora_file, 0.8)])
    merged_first = TorchBackend(paths)
    merged_first.set_loras([LoraRef(lora_file, 0.8)])
    got, want = ran_first.run("unet", inputs)["noise_pred"], merged_first.run("unet", inputs)["noise_pred"]
    np.testing.assert_array_equal(got, want)
    assert np.abs(got - plain).max() > 1e-3  # the LoRA did change the UNet
