"""The latent scale comes from the VAE config's scaling_factor (default 0.18215)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dynamicid_rt import Pipeline, Request
from dynamicid_rt.errors import ModelFolderError
from dynamicid_rt.modelfiles.paths import ModelPaths, vae_scaling_factor

SCALE = 0.5


def _copy_vae(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def rescaled_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with its own VAE copied and given scaling_factor 0.5 (other parts linked)."""
    root = tmp_path_factory.mktemp("rescaled-bundle")
    for entry in tiny_bundle.iterdir():
        if entry.name != "base":
            (root / entry.name).symlink_to(entry)
    (root / "base").mkdir()
    for entry in (tiny_bundle / "base").iterdir():
        if entry.name != "vae":
            (root / "base" / entry.name).symlink_to(entry)
    _copy_vae(tiny_bundle / "base" / "vae", root / "base" / "vae", scaling_factor=SCALE)
    return root


def test_scale_read_from_the_vae_config(tiny_bundle, rescaled_bundle, tmp_path):
    assert vae_scaling_factor(ModelPaths.from_folder(tiny_bundle)) == pytest.approx(0.18215)
    assert vae_scaling_factor(ModelPaths.from_folder(rescaled_bundle)) == SCALE
    # A --vae override wins over the base's VAE.
    override = _copy_vae(tiny_bundle / "base" / "vae", tmp_path / "vae", scaling_factor=0.25)
    assert vae_scaling_factor(ModelPaths.from_folder(tiny_bundle, vae=override)) == 0.25
    # Configs older than the key, and single-file bases without a VAE folder: SD1.5's value.
    old = _copy_vae(tiny_bundle / "base" / "vae", tmp_path / "old-vae", scaling_factor=None)
    assert vae_scaling_factor(ModelPaths.from_folder(tiny_bundle, vae=old)) == pytest.approx(0.18215)
    single = ModelPaths.from_folder(tiny_bundle, base=tmp_path / "model.safetensors")
    assert vae_scaling_factor(single) == pytest.approx(0.18215)
    bad = _copy_vae(tiny_bundle / "base" / "vae", tmp_path / "bad-vae", scaling_factor="large")
    with pytest.raises(ModelFolderError, match="scaling_factor"):
        vae_scaling_factor(ModelPaths.from_folder(tiny_bundle, vae=bad))


def test_pipeline_divides_latents_by_the_configured_scale(rescaled_bundle, tmp_path):
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL

    with Pipeline.load(rescaled_bundle, backend="torch", device="cpu", cache_dir=tmp_path) as pipe:
        result = pipe.generate(Request(prompt="a portrait", width=256, height=256, steps=1, seed=3, sampler="ddim"))
    # Reference: diffusers' own VAE from the copied folder, scaled by its own config.
    vae = AutoencoderKL.from_pretrained(rescaled_bundle / "base" / "vae").eval()
    assert vae.config.scaling_factor == SCALE
    with torch.no_grad():
        image = vae.decode(torch.from_numpy(result.latents) / vae.config.scaling_factor).sample[0].numpy()
    expected = ((image.transpose(1, 2, 0) + 1.0) * 127.5).round().clip(0, 255)
    got = np.asarray(result.images[0], dtype=np.float64)
    assert np.abs(got - expected).max() <= 1.0
    with torch.no_grad():  # the default scale would give a clearly different image
        default = vae.decode(torch.from_numpy(result.latents) / 0.18215).sample[0].numpy()
    assert np.abs(((default.transpose(1, 2, 0) + 1.0) * 127.5).round().clip(0, 255) - got).max() > 10
