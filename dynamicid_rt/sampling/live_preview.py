"""Live previews while sampling: the model's denoised estimate (its x0 prediction) at each step,
decoded to a full-size frame by a preview decoder (the tiny autoencoder) within a time budget, or,
without one, the current latent through the cheap linear map of :mod:`.preview`.

The samplers stay untouched: :class:`DenoisedEstimate` wraps the denoiser they call and computes
x0 from its last call, as k-diffusion's callbacks report ``denoised``.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from .preview import latent_to_rgb

Denoiser = Callable[[np.ndarray, float, int], np.ndarray]
FrameDecoder = Callable[[np.ndarray], np.ndarray]  # (1, 4, h, w) latent -> (8h, 8w, 3) uint8

PREVIEW_BUDGET = 0.05  # previews may take this share of the sampling time
PREVIEW_INTERVAL = 0.25  # seconds between decoded frames at least (a person sees no more)


def alpha_bar(alphas_cumprod: np.ndarray, t: float) -> float:
    """ᾱ at model timestep ``t``; a fractional ``t`` (Euler, DPM-Solver on Karras σ) is read as the
    samplers make it: linear in log σ between the two training timesteps around it."""
    low = min(max(int(math.floor(t)), 0), len(alphas_cumprod) - 1)
    frac = t - low
    if frac <= 0.0 or low + 1 >= len(alphas_cumprod):
        return float(alphas_cumprod[low])
    log_sigma = [0.5 * math.log((1.0 - a) / a) for a in (float(alphas_cumprod[low]), float(alphas_cumprod[low + 1]))]
    sigma = math.exp((1.0 - frac) * log_sigma[0] + frac * log_sigma[1])
    return 1.0 / (1.0 + sigma * sigma)


class DenoisedEstimate:
    """The sampler's denoiser, keeping what its last call implies about the final latent:
    ``x0 = (x - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)`` for the model input ``x`` (a VP sample at ``t``)."""

    def __init__(self, denoise: Denoiser, alphas_cumprod: np.ndarray) -> None:
        self._denoise = denoise
        self._alphas_cumprod = alphas_cumprod
        self._last: tuple[np.ndarray, float, np.ndarray] | None = None

    def __call__(self, x: np.ndarray, t: float, step: int) -> np.ndarray:
        eps = self._denoise(x, t, step)
        self._last = (x, t, eps)
        return eps

    def latest(self) -> np.ndarray | None:
        """The x0 estimate of the last call (float32, like the latent), or None before the first."""
        if self._last is None:
            return None
        x, t, eps = self._last
        a = alpha_bar(self._alphas_cumprod, t)
        x0 = (np.asarray(x, np.float64) - math.sqrt(1.0 - a) * np.asarray(eps, np.float64)) / math.sqrt(a)
        return x0.astype(np.float32)


class LivePreview:
    """Frames for the progress callback. With a ``decode``r, the denoised estimate of the first
    image is decoded after the first step, then again only when at least ``interval`` seconds have
    passed and the decodes so far plus one more stay within half of ``budget`` of the time since
    sampling started; in between, the last frame repeats. The next decode is reckoned at twice the
    dearest so far: with the other half of the budget as headroom, a decode up to four times dearer
    than any before (a busy machine's times vary that much) still keeps previews within ``budget``.
    Without a decoder, each frame is the latent's linear map. ``spent`` and ``frames`` say what
    decoding cost."""

    def __init__(
        self,
        decode: FrameDecoder | None,
        *,
        budget: float = PREVIEW_BUDGET,
        interval: float = PREVIEW_INTERVAL,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._decode = decode
        self.budget, self.interval = budget, interval
        self._clock = clock
        self._start = clock()
        self._frame: np.ndarray | None = None
        self._last_at = 0.0
        self._dearest = 0.0
        self.spent = 0.0
        self.frames = 0

    def frame(self, latent: np.ndarray, denoised: np.ndarray | None) -> np.ndarray:
        """The preview after a step, from its latent and denoised estimate (batch, 4, h, w)."""
        if self._decode is None or denoised is None:
            return latent_to_rgb(latent[0])
        now = self._clock() - self._start
        due = now - self._last_at >= self.interval and self.spent + 2.0 * self._dearest <= 0.5 * self.budget * now
        if self._frame is None or due:
            began = self._clock()
            self._frame = self._decode(denoised[:1])
            cost = self._clock() - began
            self._dearest = max(self._dearest, cost)
            self.spent += cost
            self.frames += 1
            self._last_at = self._clock() - self._start
        return self._frame
