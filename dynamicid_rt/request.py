"""Generation requests and results: plain dataclasses, validated before any model runs."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from .errors import RequestError

if TYPE_CHECKING:
    from PIL import Image

    from .identity import Identity

Box = tuple[float, float, float, float]  # (y0, x0, y1, x1) in [0, 1] of the image
MAX_IDENTITIES = 4
SIZE_RANGE = (256, 1024)


def default_boxes(count: int) -> list[Box]:
    """N equal vertical strips (the release's default layout)."""
    return [(0.0, i / count, 1.0, (i + 1) / count) for i in range(count)]


@dataclass
class Request:
    """Everything one generation needs. Defaults are the release's (SPEC §1.5)."""

    prompt: str
    identities: Sequence["Identity"] = ()
    negative_prompt: str = ""
    boxes: Sequence[Box] | None = None  # one per identity; a single box with several identities mixes them
    width: int = 512
    height: int = 512
    steps: int = 50
    guidance: float = 5.0
    sampler: str = "default"  # "default": the base model's scheduler (PNDM for SD1.5)
    seed: int | None = None  # None: a random seed, reported in the result
    batch: int = 1
    id_scale: float = 1.0
    gating: Literal["auto", "on", "off"] | bool = "auto"  # auto: on for two or more identities
    boost: float = 4.0
    boost_steps: int = 3
    mix: float = 0.5  # share of the first identity when several share one box
    initial_latents: np.ndarray | None = None  # unit-Gaussian (batch, 4, height/8, width/8)
    activation_maps: bool = False  # also return each person's SAA activation map (backends that can)

    def resolved_boxes(self) -> list[Box]:
        if self.boxes is None:
            return default_boxes(len(self.identities)) if self.identities else []
        return [tuple(float(v) for v in b) for b in self.boxes]  # type: ignore[misc]

    def gating_on(self) -> bool:
        if isinstance(self.gating, bool):
            return self.gating
        if self.gating == "auto":
            return len(self.identities) >= 2
        return self.gating == "on"

    def validate(self) -> None:
        """Raise RequestError naming the first inconsistent field and how to fix it."""
        lo, hi = SIZE_RANGE
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v % 64 or not lo <= v <= hi:
                raise RequestError(f"{name}={v!r}: must be a multiple of 64 between {lo} and {hi} (e.g. 512 or 768)")
        if not isinstance(self.steps, (int, np.integer)) or not 1 <= self.steps <= 1000:
            raise RequestError(f"steps={self.steps!r}: must be an integer from 1 to 1000")
        if not isinstance(self.batch, (int, np.integer)) or not 1 <= self.batch <= 16:
            raise RequestError(f"batch={self.batch!r}: must be an integer from 1 to 16")
        for name in ("guidance", "id_scale", "boost", "mix"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.floating)) or not math.isfinite(v):
                raise RequestError(f"{name}={v!r}: must be a finite number")
        if self.boost < 0 or self.boost_steps < 0:
            raise RequestError("boost and boost_steps must be >= 0")
        if not 0.0 <= self.mix <= 1.0:
            raise RequestError(f"mix={self.mix}: must lie in [0, 1]")
        if self.gating not in ("auto", "on", "off", True, False):
            raise RequestError(f"gating={self.gating!r}: use 'auto', 'on' or 'off'")
        if self.seed is not None and not (isinstance(self.seed, (int, np.integer)) and 0 <= self.seed < 2**32):
            raise RequestError(f"seed={self.seed!r}: must be an integer in [0, 2**32)")
        n = len(self.identities)
        if n > MAX_IDENTITIES:
            raise RequestError(f"{n} identities given; at most {MAX_IDENTITIES} people per image are supported")
        boxes = self.resolved_boxes()
        if n == 0 and self.boxes:
            raise RequestError("boxes were given but no identities: add a face or drop the boxes")
        if n and len(boxes) not in (n, 1):
            raise RequestError(
                f"{len(boxes)} boxes for {n} identities: give one box per identity (or one box to mix them)"
            )
        for i, b in enumerate(boxes):
            if len(b) != 4 or not all(math.isfinite(v) for v in b):
                raise RequestError(f"box {i} {b!r}: expected four numbers y0,x0,y1,x1")
            y0, x0, y1, x1 = b
            if not all(0.0 <= v <= 1.0 for v in b):
                raise RequestError(f"box {i} {b}: coordinates must lie in [0, 1] (fractions of the image)")
            if not (y1 > y0 and x1 > x0):
                raise RequestError(f"box {i} {b}: empty box; need y1 > y0 and x1 > x0 (order is y0,x0,y1,x1)")
            # The coarsest SAA layer is 1/64 of the image: a box must cover at least one of its cells.
            if (int(y1 * self.height / 64) - int(y0 * self.height / 64)) < 1 or (int(x1 * self.width / 64) - int(x0 * self.width / 64)) < 1:
                raise RequestError(f"box {i} {b}: too small for a {self.width}x{self.height} image (at least 64 px each way)")
        if self.initial_latents is not None:
            shape = (self.batch, 4, self.height // 8, self.width // 8)
            lat = np.asarray(self.initial_latents)
            if lat.shape != shape:
                raise RequestError(f"initial_latents has shape {lat.shape}; expected {shape} for this size and batch")
            if not np.all(np.isfinite(lat)):
                raise RequestError("initial_latents holds NaN or infinite values")

    def with_updates(self, **changes) -> "Request":
        return replace(self, **changes)


@dataclass
class ProgressInfo:
    """Sent to the progress callback after each sampler step."""

    step: int  # 1-based steps done
    total: int
    latent: np.ndarray  # current latent (batch, 4, h, w), not yet divided by the VAE scale
    elapsed: float  # seconds since the sampler started


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

    def parameters(self, index: int = 0) -> str:
        """The image's settings as AUTOMATIC1111 writes them in a PNG 'parameters' chunk."""
        from .pngmeta import format_parameters

        return format_parameters(self, index)
