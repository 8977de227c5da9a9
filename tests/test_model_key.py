"""The ONNX cache is keyed by the content of the files the engines are built from (the model hash,
issue #29): the byte-identical model at another path reuses the cache, a changed weight does not."""
from __future__ import annotations

import shutil

import pytest

from dynamicid_rt.modelfiles.paths import ModelPaths


@pytest.fixture()
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_identical_bundle_at_another_path_has_the_same_cache(tiny_bundle, tmp_path, user_cache):
    from dynamicid_rt.export.cache import default_engine_dir, engines_root

    copy = tmp_path / "elsewhere" / "models"
    shutil.copytree(tiny_bundle, copy)
    here, there = default_engine_dir(ModelPaths.from_folder(tiny_bundle)), default_engine_dir(ModelPaths.from_folder(copy))
    assert here == there and here.parent == engines_root() and str(user_cache) in str(here)
    # A file no engine reads does not change the key; one an engine reads does.
    (copy / "base" / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"unused variant")
    assert default_engine_dir(ModelPaths.from_folder(copy)) == here
    weights = copy / "base" / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert default_engine_dir(ModelPaths.from_folder(copy)) != here


def test_built_cache_is_reused_from_the_copy(tiny_bundle, tmp_path, user_cache):
    from dynamicid_rt.export.cache import build_engines, default_engine_dir

    built = build_engines(ModelPaths.from_folder(tiny_bundle), engines=["text_encoder"])
    assert not built[0].reused and built[0].path.parent == default_engine_dir(ModelPaths.from_folder(tiny_bundle))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    again = build_engines(ModelPaths.from_folder(copy), engines=["text_encoder"])
    assert again[0].reused and again[0].path == built[0].path
