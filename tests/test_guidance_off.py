"""Guidance off (guidance <= 1): one UNet row per image, on every backend, within the engine profiles."""
from __future__ import annotations

import numpy as np
import pytest

from dynamicid_rt.backends.base import Backend
from dynamicid_rt.contract import UNET, ModelDims
from dynamicid_rt.denoiser.guided_unet import GuidedUNet
from dynamicid_rt.denoiser.unet_feed import IdentityInputs


class RowCounter(Backend):
    """Returns a noise prediction that tells the conditional rows from the unconditional ones."""

    name = "rows"

    def __init__(self) -> None:
        super().__init__(ModelDims(context_dim=8), has_imr=False)
        self.rows: list[int] = []

    def run(self, engine, inputs):
        sample, context = inputs["sample"], inputs["encoder_hidden_states"]
        self.rows.append(len(sample))
        return {"noise_pred": sample * 0 + context[:, :1, :1, None]}


def _denoise(guidance: float, batch: int, backend: RowCounter) -> GuidedUNet:
    states = np.stack([np.zeros((77, 8)), np.ones((77, 8))]).astype(np.float32)  # negative 0, prompt 1
    tokens = np.zeros((4, 8), np.float32)
    identity = IdentityInputs(tokens, tokens, *(np.zeros(shape, np.float32) for shape in ((1, 4), (1,), (1,), (1,))))
    return GuidedUNet(backend, states, identity, batch, guidance, boost=lambda step: 0.0)


@pytest.mark.parametrize("guidance", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("batch", [1, 3])
def test_guidance_off_runs_one_row_per_image(guidance, batch):
    backend = RowCounter()
    out = _denoise(guidance, batch, backend)(np.zeros((batch, 4, 8, 8), np.float32), 500.0, 0)
    assert backend.rows == [batch]
    np.testing.assert_array_equal(out, 1.0)  # the prompt's rows alone, not mixed with the negative


def test_guidance_on_runs_two_rows_per_image():
    backend = RowCounter()
    out = _denoise(3.0, 2, backend)(np.zeros((2, 4, 8, 8), np.float32), 500.0, 0)
    assert backend.rows == [4]
    np.testing.assert_allclose(out, 0.0 + 3.0 * (1.0 - 0.0))


def test_engine_profiles_accept_batch_one():
    """The contract's UNet axis and the dynamic TensorRT profile built from it reach B = 1."""
    from engines.profiles import engine_profile, out_of_profile, request_shapes

    assert UNET.axis("B").min == 1
    dims = ModelDims()
    profile = engine_profile(UNET, dims)
    for width, people in ((512, 1), (768, 2), (256, 0)):
        shapes = request_shapes("unet", dims, width, width, batch=1, people=people, guidance=False)
        assert shapes["sample"][0] == 1
        assert out_of_profile(profile, shapes) == []
