"""What a generation gives back: the images with what made them (:class:`Result`), each person's
likeness in them (:class:`IdentityMatch`), and the progress reported after each step
(:class:`ProgressInfo`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .modelfiles.model_hash import ModelInfo
from .request import Box, Request

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class ProgressInfo:
    """Sent to the progress callback after each sampler step."""

    step: int  # 1-based steps done
    total: int
    latent: np.ndarray  # current latent (batch, 4, h, w), not yet divided by the VAE scale
    elapsed: float  # seconds since the sampler started
    # The model's current estimate of the final latent (x0 prediction), like ``latent``.
    denoised: np.ndarray | None = None
    # A live preview of the first image, (height, width, 3) uint8: the denoised estimate through the
    # tiny autoencoder where the model folder has one (refreshed within a time budget, so a frame can
    # repeat), else the latent through a linear map at 1/8 size (dynamicid_rt.sampling.preview.latent_to_rgb).
    preview: np.ndarray | None = None


@dataclass(frozen=True)
class IdentityMatch:
    """How well one person of a request shows in one generated image."""

    name: str
    box: Box  # the person's region, (y0, x0, y1, x1) fractions
    similarity: float | None  # ArcFace cosine to the person's reference; None: no face in the box
    face_box: tuple[float, float, float, float] | None  # (x0, y0, x1, y1) pixels of the face used
    looks_like: str | None = None  # another person's name when the face matches them better (a swap)

    @property
    def found(self) -> bool:
        return self.similarity is not None

    @property
    def swapped(self) -> bool:
        return self.looks_like is not None

    @property
    def ok(self) -> bool:
        return self.found and not self.swapped

    def label(self) -> str:
        """Short form for parameters and badges: ``a 0.61``, ``a no face``, ``a 0.31 swap``."""
        if self.similarity is None:
            return f"{self.name} no face"
        return f"{self.name} {self.similarity:.2f}{' swap' if self.swapped else ''}"

    def describe(self) -> str:
        """One line for people: what was found and what it means."""
        if self.similarity is None:
            return f"{self.name}: no face found in its box"
        text = f"{self.name}: ID match {self.similarity:.2f}"
        return text + (f" (looks more like {self.looks_like}: swapped?)" if self.swapped else "")


@dataclass
class Result:
    images: list["Image.Image"]
    request: Request  # as run: seed filled in, sampler and gating resolved
    seeds: list[int]
    sampler: str
    gating: bool
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    backend: str = ""
    # Per image (N, h/8, w/8) in [0, 1]: where each person's identity tokens act (None: not asked
    # for, or the backend cannot provide them).
    activation_maps: list[np.ndarray] | None = None
    # Per image, each person's likeness (Request.check_identities or best_of; None: not asked for).
    identity_scores: list[list[IdentityMatch]] | None = None
    # The final latents (batch, 4, height/8, width/8) float32, before the division by the VAE
    # scale: for img2img chains and checks.
    latents: np.ndarray | None = None
    model: ModelInfo | None = None  # what made the images, for the PNG parameters
    lora_hashes: dict[str, str] = field(default_factory=dict)  # A1111's "Lora hashes": LoRA name -> short hash
