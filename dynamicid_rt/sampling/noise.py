"""Seeded noise: one independent random stream per image and purpose.

Image ``i`` of a batch has the seed ``seed + i`` (mod 2**32), as AUTOMATIC1111 numbers them, so
one image of a batch is regenerated alone from its own seed. ``numpy.random.SeedSequence(image_seed)``
is split into children, one per purpose, in this fixed order:

- child 0 (``spawn_key=(0,)``): the initial latent noise, one ``standard_normal((4, h, w))`` draw;
- child 1 (``spawn_key=(1,)``): the sampler's step noise (Euler a's ancestral noise), drawn per step.

The children are statistically independent of each other and of every other image's, so no step
re-adds the starting noise and no two images of a batch share noise. Streams are PCG64
(``numpy.random.default_rng``) and the draws are float64 cast to float32: the same seed gives the
same noise on every backend and device. This module imports only numpy.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import RequestError

INITIAL_NOISE, STEP_NOISE = 0, 1  # child index of each purpose in an image's SeedSequence
_PURPOSES = 2


def image_seeds(seed: int, batch: int) -> list[int]:
    """The seed of each image of a batch: ``seed + i`` modulo 2**32."""
    return [(seed + i) % 2**32 for i in range(batch)]


def image_streams(image_seed: int) -> list[np.random.Generator]:
    """The generators of one image, indexed by purpose (:data:`INITIAL_NOISE`, :data:`STEP_NOISE`)."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(image_seed).spawn(_PURPOSES)]


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
    """Unit Gaussian starting latents (len(seeds), *shape), float32, one image per seed."""
    return np.stack([image_streams(s)[INITIAL_NOISE].standard_normal(shape) for s in seeds]).astype(np.float32)


def step_noise_source(seeds: Sequence[int]) -> Callable[[tuple[int, ...]], np.ndarray]:
    """A sampler ``noise_source(shape)``: each call draws image i's slice from image i's step stream."""
    streams = [image_streams(s)[STEP_NOISE] for s in seeds]

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        if shape[0] != len(streams):
            raise RequestError(f"step noise asked for a batch of {shape[0]} but {len(streams)} seeds were given")
        return np.stack([g.standard_normal(shape[1:]) for g in streams]).astype(np.float32)

    return draw
