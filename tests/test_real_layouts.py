"""The layouts the real repos ship (SPEC §3's table), with the tiny weights: each gives the very
image of the project's own layout on torch fp32, and ``inspect`` agrees with what loads.

The fp16 files of the repo layouts are the fp32 ones rounded, and the UNet's ``non_ema`` variant
holds other weights: a loader that reads any file but the one the rule picks gives another image.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamicid_rt import Pipeline, Request
from dynamicid_rt.errors import ModelFolderError
from dynamicid_rt.models.inspect import inspect_path
from dynamicid_rt.modelfiles.paths import ModelPaths
from dynamicid_rt.tiny import repo_layouts as repos

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def tiny(tiny_bundle) -> ModelPaths:
    return ModelPaths.from_folder(tiny_bundle)


@pytest.fixture(scope="module")
def repo_dir(tiny, tmp_path_factory) -> Path:
    """The real repos' layouts, written once."""
    root = tmp_path_factory.mktemp("repos")
    repos.write_sd15_repo(tiny, root / "sd15")
    repos.write_sd15_repo(tiny, root / "sd15-fp16", fp32=False)
    repos.write_laion_clip_repo(tiny, root / "laion")
    repos.write_laion_clip_repo(tiny, root / "laion-fp16-config", config_dtype="float16")
    repos.write_ip_adapter_repo(tiny, root / "ip-adapter")
    repos.write_dynamicid_repo(tiny, root / "dynamicid")
    _write_sharded_base(tiny, root / "sharded")
    return root


def _write_sharded_base(tiny: ModelPaths, dest: Path) -> None:
    """A base whose UNet and text encoder are sharded (an index and its shards), as large fine-tunes ship."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    shutil.copytree(tiny.base, dest, ignore=shutil.ignore_patterns("unet", "text_encoder"))
    UNet2DConditionModel.from_pretrained(str(tiny.base / "unet")).save_pretrained(dest / "unet", max_shard_size="300KB")
    CLIPTextModel.from_pretrained(str(tiny.base / "text_encoder")).save_pretrained(dest / "text_encoder", max_shard_size="300KB")
    assert len(list((dest / "unet").glob("*-of-*.safetensors"))) > 1


def _image(paths: ModelPaths, samples: Path, tmp_path: Path, precision: str = "fp32") -> np.ndarray:
    pipe = Pipeline.load(paths, backend="torch", device="cpu", precision=precision, cache_dir=tmp_path / "cache")
    try:
        person = pipe.encode_identity(samples / "person_a.png", face_prompt="smiling")
        result = pipe.generate(Request(prompt="a portrait", identities=[person], width=256, height=256, steps=2, seed=3))
    finally:
        pipe.close()
    return np.asarray(result.images[0])


@pytest.fixture(scope="module")
def reference(tiny, samples, tmp_path_factory) -> np.ndarray:
    return _image(tiny, samples, tmp_path_factory.mktemp("ref"))


def _layouts(tiny: ModelPaths, root: Path) -> dict[str, ModelPaths]:
    return {
        "sd15 repo as base": tiny.with_overrides(base=root / "sd15"),
        "fp16-only base (upcast)": tiny.with_overrides(base=root / "sd15-fp16"),
        "laion full CLIPModel, legacy config": tiny.with_overrides(image_encoder=root / "laion"),
        "laion, fp16 config over fp32 weights": tiny.with_overrides(image_encoder=root / "laion-fp16-config"),
        "h94 vision-only, fp16 config": tiny.with_overrides(image_encoder=root / "ip-adapter" / "models" / "image_encoder"),
        "DynamicID repo": tiny.with_overrides(saa=root / "dynamicid" / "SAA.bin", imr=root / "dynamicid" / "IMR.bin",
                                              keypoint_encoder=root / "dynamicid" / "key_point_encoder.bin"),
        "vae folder override from the repo": tiny.with_overrides(vae=root / "sd15" / "vae"),
        "sharded base": tiny.with_overrides(base=root / "sharded"),
    }


LAYOUTS = ["sd15 repo as base", "fp16-only base (upcast)", "laion full CLIPModel, legacy config",
           "laion, fp16 config over fp32 weights", "h94 vision-only, fp16 config", "DynamicID repo",
           "vae folder override from the repo", "sharded base"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_real_layout_engines_compute_as_our_layout(layout, tiny, repo_dir):
    """Every engine of the layout, on the contract's sample inputs, against our layout's."""
    from dynamicid_rt.contract import ENGINES
    from dynamicid_rt.models import load_engine_module
    from dynamicid_rt.models.base import read_model_dims

    paths = _layouts(tiny, repo_dir)[layout]
    assert paths.problems() == []
    dims = read_model_dims(paths)
    assert dims == read_model_dims(tiny)
    for name, spec in ENGINES.items():
        if not tiny.provides(name) or all(paths.source(p) == tiny.source(p) for p in spec.sources):
            continue
        feed = [torch.from_numpy(v) for v in spec.sample_inputs(dims, **{a.name: a.min for a in spec.axes}).values()]
        with torch.no_grad():
            got = load_engine_module(paths, name)(*feed)
            want = load_engine_module(tiny, name)(*feed)
        if layout.startswith("fp16-only"):  # the fp32 weights rounded, then upcast: close, not equal
            torch.testing.assert_close(got, want, rtol=0.05, atol=0.05, msg=name)
        elif layout == "sharded base":  # equal weights, but sharded loading leaves other memory layouts: 1e-6 apart
            from dynamicid_rt.models.base import load_base_unet

            ours, theirs = load_base_unet(tiny, torch.float32).state_dict(), load_base_unet(paths, torch.float32).state_dict()
            assert all(torch.equal(ours[k], theirs[k]) for k in ours)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_real_layout_gives_the_image_of_our_layout(layout, tiny, repo_dir, samples, reference, tmp_path):
    paths = _layouts(tiny, repo_dir)[layout]
    assert paths.problems() == []
    image = _image(paths, samples, tmp_path)
    if layout.startswith("fp16-only"):
        # The fp16 files are the fp32 weights rounded: close, not equal; upcast, never fp16 math.
        assert np.abs(image.astype(int) - reference.astype(int)).max() <= 8
    else:
        np.testing.assert_array_equal(image, reference)


def test_real_layout_bundle_in_one_folder(tiny, samples, reference, tmp_path):
    root = repos.write_real_layout_bundle(tiny, tmp_path / "models")
    paths = ModelPaths.from_folder(root)
    report, ok = inspect_path(root)
    assert ok, report
    np.testing.assert_array_equal(_image(paths, samples, tmp_path), reference)


def test_weights_load_at_the_engine_dtype_not_the_configs(tiny, repo_dir):
    from dynamicid_rt.models.base import load_image_encoder, load_text_encoder

    paths = tiny.with_overrides(image_encoder=repo_dir / "laion-fp16-config", base=repo_dir / "sd15-fp16")
    assert json.loads((paths.image_encoder / "config.json").read_text())["torch_dtype"] == "float16"
    for module in (load_image_encoder(paths, torch.float32), load_text_encoder(paths, torch.float32)):
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # fp32 weights under an fp16 config: not rounded
        torch.testing.assert_close(load_image_encoder(paths, torch.float32)(pixels),
                                   load_image_encoder(tiny, torch.float32)(pixels), rtol=0, atol=0)


def test_engine_sources_are_the_files_the_loader_reads(tiny, repo_dir):
    from export.recipes import source_files

    paths = tiny.with_overrides(base=repo_dir / "sd15", image_encoder=repo_dir / "laion")
    names = {e: sorted(p.relative_to(repo_dir).as_posix() for p in source_files(paths, e) if repo_dir in p.parents)
             for e in ("unet", "text_encoder", "vae_decoder", "image_encoder")}
    assert names["unet"] == ["sd15/unet/config.json", "sd15/unet/diffusion_pytorch_model.safetensors"]
    assert names["text_encoder"] == ["sd15/text_encoder/config.json", "sd15/text_encoder/model.safetensors"]
    assert names["vae_decoder"] == ["sd15/vae/config.json", "sd15/vae/diffusion_pytorch_model.safetensors"]
    assert names["image_encoder"] == ["laion/config.json", "laion/model.safetensors"]
    fp16 = tiny.with_overrides(base=repo_dir / "sd15-fp16")
    assert [p.name for p in source_files(fp16, "unet")][:2] == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]


def test_unused_variants_do_not_change_the_engine_key(tiny, repo_dir, tmp_path):
    from export.recipes import source_fingerprint

    base = tmp_path / "sd15"
    shutil.copytree(repo_dir / "sd15", base)
    paths = tiny.with_overrides(base=base)
    before = source_fingerprint(paths, "unet")
    (base / "unet" / "diffusion_pytorch_model.fp16.bin").unlink()
    (base / "unet" / "diffusion_pytorch_model.non_ema.safetensors").write_bytes(b"changed")
    assert source_fingerprint(paths, "unet") == before
    (base / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # now the .bin is read
    assert source_fingerprint(paths, "unet") != before


def test_no_weights_lists_the_files_found(tiny, repo_dir, tmp_path):
    base = tmp_path / "sd15"
    shutil.copytree(repo_dir / "sd15-fp16", base)
    for f in [*(base / "unet").glob("*.safetensors"), *(base / "unet").glob("*.bin")]:
        f.rename(f.with_suffix(".pt"))
    problems = tiny.with_overrides(base=base).problems()
    assert len(problems) == 1 and "unet" in problems[0] and "holds no weights" in problems[0]
    assert "diffusion_pytorch_model.fp16.pt" in problems[0]  # what is there, named
    report, ok = inspect_path_with(tiny.with_overrides(base=base))
    assert not ok and "holds no weights" in report


def inspect_path_with(paths: ModelPaths) -> tuple[str, bool]:
    from dynamicid_rt.models.inspect import inspect_paths

    return inspect_paths(paths)


def test_safetensors_before_bin_said_once(tiny, tmp_path, caplog):
    root = tmp_path / "models"
    shutil.copytree(tiny.root, root)
    from safetensors.torch import save_file

    from dynamicid_rt.modelfiles.checkpoints import load_tensor_file

    imr = load_tensor_file(root / "dynamicid" / "IMR.bin")
    save_file({k: v.contiguous() for k, v in imr.items()}, str(root / "dynamicid" / "IMR.safetensors"))
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.modelfiles.paths"):
        paths = ModelPaths.from_folder(root)
    assert paths.imr.name == "IMR.safetensors"
    assert "IMR.safetensors, not IMR.bin" in caplog.text


@pytest.mark.parametrize("wrap", ["module_prefix", "state_dict", "both"])
def test_training_wrappers_load_with_one_line(tiny, tmp_path, caplog, wrap):
    from dynamicid_rt.modelfiles.checkpoints import load_tensor_file
    from dynamicid_rt.models.imr import load_imr

    state = load_tensor_file(tiny.imr)
    if wrap in ("module_prefix", "both"):
        state = {f"module.{k}": v for k, v in state.items()}
    if wrap in ("state_dict", "both"):
        state = {"state_dict": state, "epoch": 3}
    wrapped = tmp_path / "IMR.bin"
    torch.save(state, wrapped)
    report, ok = inspect_path(wrapped)
    assert ok, report
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.modelfiles.checkpoints"):
        got = load_imr(wrapped, tiny.keypoint_encoder)
    ref = load_imr(tiny.imr, tiny.keypoint_encoder)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(got.state_dict()[key], value, rtol=0, atol=0)
    assert "module." in caplog.text or "state_dict" in caplog.text


def test_single_file_in_base_with_configs_beside(tiny, tmp_path):
    """The single-file error's advice (configs beside the file in base/) gives a single-file base,
    and its tokenizer/ beside it is used: inspect passes without --tokenizer."""
    from dynamicid_rt.models.base import load_base_unet

    pytest.importorskip("diffusers")
    from test_tiny_bundle import _unet_to_ldm, _vae_to_ldm  # the LDM key writers of the single-file tests
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    root = tmp_path / "models"
    shutil.copytree(tiny.root, root, ignore=shutil.ignore_patterns("base"))
    base = root / "base"
    base.mkdir()
    unet = UNet2DConditionModel.from_pretrained(str(tiny.base / "unet"))
    vae = AutoencoderKL.from_pretrained(str(tiny.base / "vae"))
    text = CLIPTextModel.from_pretrained(str(tiny.base / "text_encoder"))
    state = _unet_to_ldm(unet.state_dict(), layers=1, levels=4) | _vae_to_ldm(vae.state_dict(), levels=4)
    state |= {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
              for k, v in text.state_dict().items()}
    state |= {"model_ema." + k.replace(".", ""): v.clone() for k, v in list(state.items())[:3]}  # an EMA set beside
    save_file({k: v.contiguous() for k, v in state.items()}, str(base / "tiny-sd15.safetensors"))
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        shutil.copytree(tiny.base / part, base / part, ignore=shutil.ignore_patterns("*.safetensors"))
    paths = ModelPaths.from_folder(root)
    assert paths.base_is_single_file and paths.tokenizer == base / "tokenizer"
    report, ok = inspect_path(root)
    assert ok, report
    got, ref = load_base_unet(paths, torch.float32).state_dict(), load_base_unet(tiny, torch.float32).state_dict()
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)


def test_single_file_ema_set_is_named(tiny, tmp_path, caplog):
    from safetensors.torch import save_file

    from dynamicid_rt.models.base import _single_file_unet

    checkpoint = tmp_path / "ema.safetensors"
    save_file({"model_ema.decay": torch.tensor(0.9999), "model.diffusion_model.x": torch.zeros(1)}, str(checkpoint))
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.models.base"), pytest.raises(ModelFolderError):
        _single_file_unet(checkpoint)  # no real UNet: only the line before the conversion matters
    assert "EMA" in caplog.text and "emaonly" in caplog.text


def test_inspect_doctor_and_generate_agree_on_a_part_that_does_not_load(tiny, tmp_path):
    """A config that passes every folder check but does not fit its weights: inspect and doctor
    run generate's loaders, so all three refuse it (no "usable" here and refused there)."""
    from dynamicid_rt.doctor import doctor_report

    encoder = tmp_path / "image_encoder"
    shutil.copytree(tiny.image_encoder, encoder)
    config = json.loads((encoder / "config.json").read_text())
    config["intermediate_size"] = config["intermediate_size"] * 2
    (encoder / "config.json").write_text(json.dumps(config))
    report, ok = inspect_path(tiny.root, image_encoder=encoder)
    assert not ok and "image_encoder:" in report and "do not fit" in report
    doctor, doctor_ok = doctor_report(tiny.root, {"image_encoder": encoder})
    assert not doctor_ok and "image_encoder:" in doctor
    pipe = Pipeline.load(tiny.root, backend="torch", device="cpu", cache_dir=tmp_path / "cache", image_encoder=encoder)
    try:
        with pytest.raises(ModelFolderError, match="do not fit"):
            pipe.encode_identity(tiny.root / "samples" / "person_a.png")
    finally:
        pipe.close()


def test_cli_inspect_takes_the_part_options(tiny, repo_dir, capsys):
    from dynamicid_rt.cli import main

    code = main(["inspect", str(tiny.root), "--image-encoder", str(repo_dir / "laion"), "--base", str(repo_dir / "sd15-fp16")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "diffusion_pytorch_model.fp16.safetensors" in out and "usable: yes" in out
