"""Two people inpainted into two regions of one photo (issue #32), identities on: each region
changes, every other pixel stays the photo's own, and each CPU backend agrees with torch fp32
(>= 40 dB), the VAE encoder included."""
from __future__ import annotations

import numpy as np
import pytest

from dynamicid_rt import Pipeline, Request

SIZE = 256


def _photo() -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    return (np.stack([0.2 + 0.6 * yy, xx, 0.5 + 0.4 * np.cos(7 * xx)], axis=-1) * 255).round().astype(np.uint8)


def _mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[40:216, 8:120] = 255
    mask[24:200, 140:250] = 255
    return mask


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _inpaint(pipe: Pipeline, samples) -> tuple[np.ndarray, Request]:
    people = [pipe.encode_identity(samples / "person_a.png"),
              pipe.encode_identity(samples / "person_b.png", face_prompt="in a happy expression, facing up")]
    request = Request(prompt="two friends at a window", identities=people, init_image=_photo(), mask=_mask(), strength=0.7,
                      width=SIZE, height=SIZE, steps=5, seed=21, sampler="dpmpp_2m")
    return np.asarray(pipe.generate(request).images[0]), request


@pytest.fixture(scope="module")
def torch_image(tiny_pipeline, samples):
    return _inpaint(tiny_pipeline, samples)


def check_two_regions(image: np.ndarray, request: Request) -> None:
    """Every pixel the (blurred) mask leaves at 0 is the photo's own; each person's region changed."""
    photo, alpha = _photo(), request.mask_alpha()
    assert np.array_equal(image[alpha == 0], photo[alpha == 0])
    for region in (np.s_[40:216, 8:120], np.s_[24:200, 140:250]):
        assert np.abs(image[region].astype(int) - photo[region]).mean() > 2.0  # each person's region was repainted


def test_two_people_in_two_regions_and_the_rest_bit_exact(torch_image):
    image, request = torch_image
    assert request.resolved_boxes()[0][1] < 0.5 < request.resolved_boxes()[1][1]  # one box per region, left to right
    check_two_regions(image, request)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_cpu_backends_match_torch(backend, torch_image, tiny_bundle, tiny_engines, samples, tmp_path):
    pytest.importorskip(backend)
    pipe = Pipeline.load(tiny_bundle, backend=backend, device="cpu", precision="fp32", onnx_cache=tiny_engines,
                         cache_dir=tmp_path)
    try:
        image, request = _inpaint(pipe, samples)
    finally:
        pipe.close()
    alpha = request.mask_alpha()
    assert np.array_equal(image[alpha == 0], _photo()[alpha == 0])
    assert _psnr(image, torch_image[0]) >= 40.0
