"""Seeded noise streams: one independent stream per image and purpose, used by every image of a batch."""
from __future__ import annotations

import numpy as np
import pytest

from dynamicid_rt import Request
from dynamicid_rt.sampling import noise
from dynamicid_rt import pipeline as pipeline_module

SHAPE = (4, 32, 32)


def reference_draw(image_seed: int, purpose: int, shape: tuple[int, ...]) -> np.ndarray:
    """Written out here: child `purpose` of SeedSequence(image_seed) is the seed sequence with that spawn key."""
    child = np.random.SeedSequence(image_seed, spawn_key=(purpose,))
    return np.random.Generator(np.random.PCG64(child)).standard_normal(shape)


def test_streams_are_the_documented_seed_sequence_children():
    seeds = noise.image_seeds(2**32 - 1, 3)
    assert seeds == [2**32 - 1, 0, 1]
    start = noise.initial_noise(seeds, SHAPE)
    steps = noise.step_noise_source(seeds)
    first, second = steps((3, *SHAPE)), steps((3, *SHAPE))
    assert start.dtype == first.dtype == np.float32
    for i, s in enumerate(seeds):
        np.testing.assert_array_equal(start[i], reference_draw(s, 0, SHAPE).astype(np.float32))
        both = reference_draw(s, 1, (2, *SHAPE)).astype(np.float32)  # one stream, drawn twice in a row
        np.testing.assert_array_equal(first[i], both[0])
        np.testing.assert_array_equal(second[i], both[1])
    with pytest.raises(ValueError, match="batch of 2"):
        steps((2, *SHAPE))


def test_streams_are_independent():
    seeds = noise.image_seeds(7, 2)
    start = noise.initial_noise(seeds, SHAPE).reshape(2, -1)
    step = noise.step_noise_source(seeds)((2, *SHAPE)).reshape(2, -1)
    legacy = np.random.default_rng(7).standard_normal(SHAPE).ravel()  # the root stream itself is not used
    draws = [start[0], start[1], step[0], step[1], legacy]
    corr = np.corrcoef(np.stack(draws))
    off_diagonal = corr[~np.eye(len(draws), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.05  # 4096 samples: independent streams correlate ~0.016


@pytest.fixture
def recorded(monkeypatch):
    """Wraps the pipeline's sampler call to record its starting noise and every step-noise draw."""
    calls = []
    real_run = pipeline_module.run_schedule

    def spy(schedule, denoise, start, *, noise_source=None, **kwargs):
        record = {"sampler": schedule.sampler, "start": np.array(start), "draws": []}
        calls.append(record)

        def source(shape):
            record["draws"].append(np.array(noise_source(shape)))
            return record["draws"][-1]

        return real_run(schedule, denoise, start, noise_source=source, **kwargs)

    monkeypatch.setattr(pipeline_module, "run_schedule", spy)
    return calls


def test_pipeline_draws_each_images_streams(tiny_pipeline, recorded):
    request = Request(prompt="a portrait", width=256, height=256, steps=2, seed=41, batch=2, sampler="Euler a")
    first = tiny_pipeline.generate(request)
    assert first.sampler == "euler_a" and first.seeds == [41, 42]
    call = recorded[-1]
    assert len(call["draws"]) == 2
    for i, s in enumerate(first.seeds):
        np.testing.assert_array_equal(call["start"][i], reference_draw(s, 0, SHAPE).astype(np.float32))
        np.testing.assert_array_equal(call["draws"][0][i], reference_draw(s, 1, SHAPE).astype(np.float32))
    # Image 0's first step noise is not its starting noise, and the two images share nothing.
    assert np.abs(call["draws"][0][0] - call["start"][0]).max() > 1.0
    assert np.abs(call["start"][0] - call["start"][1]).max() > 1.0

    # The same seed reproduces: image 1 of the batch is image 0 of a run from its own seed (up to
    # batched-matmul rounding), with the same streams drawn; image 0 (seed 41) is another image.
    scale = np.abs(first.latents[1]).max()
    alone = tiny_pipeline.generate(request.with_updates(seed=42, batch=1))
    np.testing.assert_array_equal(recorded[-1]["start"][0], call["start"][1])
    np.testing.assert_array_equal(recorded[-1]["draws"][1][0], call["draws"][1][1])
    assert np.abs(alone.latents[0] - first.latents[1]).max() <= 1e-5 * scale
    assert np.abs(alone.latents[0] - first.latents[0]).max() > 1e-2 * scale
