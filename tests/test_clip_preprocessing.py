"""CLIP preprocessing of a reference photo against transformers' CLIPImageProcessor (PIL path)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dynamicid_rt.identity.clip_preprocessing import clip_pixel_values
from dynamicid_rt.identity.photos import load_photo

transformers = pytest.importorskip("transformers")


def release_processor():
    """CLIPImageProcessor() with its defaults, on PIL as the release ran it (transformers 5 names that
    path CLIPImageProcessorPil; its default CLIPImageProcessor switches to torchvision when installed)."""
    try:
        from transformers import CLIPImageProcessorPil as processor
    except ImportError:
        from transformers import CLIPImageProcessor as processor
    return processor()


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like RGB uint8 image: smooth gradients plus texture, so resampling matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    smooth = 127 + 100 * np.sin(6 * x[..., None] + 4 * y[..., None] + np.array([0.0, 1.0, 2.0]))
    return np.clip(smooth + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "height, width",
    [(300, 200), (200, 300), (224, 224), (225, 224), (131, 97), (333, 1001), (64, 64), (64, 100), (1024, 768), (511, 512)],
    ids=lambda v: str(v),
)
def test_matches_clip_image_processor(height, width):
    image = photo(height, width, seed=height * 7 + width)
    ref = release_processor()(images=image, return_tensors="np")["pixel_values"][0]
    ours = clip_pixel_values(image)
    assert ours.shape == ref.shape == (3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-6


def test_matches_on_the_sample_photo(samples):
    image = load_photo(samples / "two_faces.png")
    ref = release_processor()(images=image, return_tensors="np")["pixel_values"][0]
    assert np.abs(clip_pixel_values(image) - ref).max() <= 1e-6


def test_preprocessing_imports_neither_torch_nor_transformers():
    code = (
        "import sys, numpy as np\n"
        "from dynamicid_rt.identity.clip_preprocessing import clip_pixel_values\n"
        "clip_pixel_values(np.zeros((300, 200, 3), np.uint8))\n"
        "sys.exit(int('torch' in sys.modules) + 2 * int('transformers' in sys.modules))\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
