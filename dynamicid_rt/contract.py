"""The engine contract (SPEC §4): one declaration per engine, read by every backend, the ONNX
exporter and the TensorRT builder, so tensor names, dynamic axes and shape ranges cannot drift.

Shapes are written with symbols: dynamic axes (``B``, ``h``, ``w``, ``N``, ``M``), model sizes from
:class:`ModelDims` (``C``, ``clip_width``...) and products such as ``4*N`` or ``8*h``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class ModelDims:
    """Model sizes the shapes depend on; defaults are the released SD1.5 model's."""

    context_dim: int = 768  # C: text width = ID token width
    clip_width: int = 1280  # CLIP ViT-H/14 hidden width
    clip_tokens: int = 257  # 16x16 patches + class token
    clip_image_size: int = 224
    text_len: int = 77
    latent_channels: int = 4
    tokens_per_identity: int = 4
    landmark_size: int = 96

    def symbols(self) -> dict[str, int]:
        return {
            "C": self.context_dim,
            "clip_width": self.clip_width,
            "clip_tokens": self.clip_tokens,
            "clip_size": self.clip_image_size,
            "L": self.text_len,
            "latent_c": self.latent_channels,
            "T": self.tokens_per_identity,
            "lm": self.landmark_size,
        }


@dataclass(frozen=True)
class Axis:
    """A dynamic axis and the range engines are built for (TensorRT min/opt/max)."""

    name: str
    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"


def _eval_dim(dim: int | str, values: Mapping[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    factor, _, name = dim.rpartition("*")
    return (int(factor) if factor else 1) * values[name]


@dataclass(frozen=True)
class EngineSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: tuple[Axis, ...] = field(default=())

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def axis(self, name: str) -> Axis:
        return next(a for a in self.axes if a.name == name)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{tensor: {index: axis name}}`` as ``torch.onnx.export`` takes it."""
        names = {a.name for a in self.axes}
        out: dict[str, dict[int, str]] = {}
        for t in self.inputs + self.outputs:
            dyn = {}
            for i, d in enumerate(t.shape):
                if isinstance(d, str) and d.rpartition("*")[2] in names:
                    dyn[i] = d.replace("*", "x")
            if dyn:
                out[t.name] = dyn
        return out

    def shapes(self, dims: ModelDims, **axis_values: int) -> dict[str, tuple[int, ...]]:
        """Concrete shapes of every input and output for the given axis values (default: opt)."""
        values = dims.symbols() | {a.name: a.opt for a in self.axes} | axis_values
        return {t.name: tuple(_eval_dim(d, values) for d in t.shape) for t in self.inputs + self.outputs}

    def profile(self, dims: ModelDims) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """``{input: (min, opt, max)}`` shapes, as a TensorRT optimisation profile takes them."""
        lo = self.shapes(dims, **{a.name: a.min for a in self.axes})
        mid = self.shapes(dims, **{a.name: a.opt for a in self.axes})
        hi = self.shapes(dims, **{a.name: a.max for a in self.axes})
        return {t.name: (lo[t.name], mid[t.name], hi[t.name]) for t in self.inputs}

    def sample_inputs(self, dims: ModelDims, seed: int = 0, **axis_values: int) -> dict[str, np.ndarray]:
        """Random inputs of the right shapes and dtypes (export tracing, parity tests)."""
        rng = np.random.default_rng(seed)
        shapes = self.shapes(dims, **axis_values)
        return {t.name: _SAMPLERS.get((self.name, t.name), _default_sample)(rng, shapes[t.name], t.dtype) for t in self.inputs}


def _default_sample(rng: np.random.Generator, shape, dtype: str) -> np.ndarray:
    if dtype.startswith("int"):
        return rng.integers(0, 1000, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _sample_boxes(rng, shape, dtype):
    # M vertical strips: valid boxes in [0, 1] (y0, x0, y1, x1).
    m = shape[0]
    edges = np.linspace(0.0, 1.0, m + 1)
    return np.stack([np.zeros(m), edges[:-1], np.ones(m), edges[1:]], axis=1).astype(dtype)


_SAMPLERS = {
    ("text_encoder", "input_ids"): lambda rng, shape, dtype: rng.integers(0, 256, size=shape).astype(dtype),
    ("unet", "timestep"): lambda rng, shape, dtype: np.full(shape, 500, dtype=dtype),
    ("unet", "id_boxes"): _sample_boxes,
    ("unet", "id_scale"): lambda rng, shape, dtype: np.ones(shape, dtype=dtype),
    ("unet", "id_boost"): lambda rng, shape, dtype: np.full(shape, 4.0, dtype=dtype),
    ("unet", "id_gating"): lambda rng, shape, dtype: np.ones(shape, dtype=dtype),
    ("unet", "id_mix"): lambda rng, shape, dtype: np.full(shape, 0.5, dtype=dtype),
    ("imr", "landmarks"): lambda rng, shape, dtype: np.where(rng.random(shape) < 0.02, 1.0, -1.0).astype(dtype),
}

BATCH = Axis("B", 1, 2, 8)

TEXT_ENCODER = EngineSpec(
    "text_encoder",
    inputs=(TensorSpec("input_ids", ("B", "L"), "int64"),),
    outputs=(TensorSpec("last_hidden_state", ("B", "L", "C")), TensorSpec("pooled", ("B", "C"))),
    axes=(BATCH,),
)
IMAGE_ENCODER = EngineSpec(
    "image_encoder",
    inputs=(TensorSpec("pixel_values", ("B", 3, "clip_size", "clip_size")),),
    outputs=(TensorSpec("hidden_states", ("B", "clip_tokens", "clip_width")),),
    axes=(Axis("B", 1, 1, 4),),
)
FACE_PROJECTOR = EngineSpec(
    "face_projector",
    inputs=(TensorSpec("id_embeds", ("B", 512)), TensorSpec("clip_hidden", ("B", "clip_tokens", "clip_width"))),
    outputs=(TensorSpec("id_tokens", ("B", "T", "C")),),
    axes=(Axis("B", 1, 1, 4),),
)
IMR = EngineSpec(
    "imr",
    inputs=(
        TensorSpec("id_tokens", (1, "T", "C")),
        TensorSpec("landmarks", (2, 1, "lm", "lm")),
        TensorSpec("text_pooled", (2, "C")),
    ),
    outputs=(TensorSpec("edited_tokens", (1, "T", "C")),),
)
UNET = EngineSpec(
    "unet",
    inputs=(
        TensorSpec("sample", ("B", "latent_c", "h", "w")),
        TensorSpec("timestep", ("B",)),
        TensorSpec("encoder_hidden_states", ("B", "L", "C")),
        TensorSpec("id_tokens", ("B", "4*N", "C")),
        TensorSpec("id_boxes", ("M", 4)),
        TensorSpec("id_scale", ("N",)),  # per person (contract v2)
        TensorSpec("id_boost", (1,)),
        TensorSpec("id_gating", (1,)),
        TensorSpec("id_mix", (1,)),
    ),
    outputs=(TensorSpec("noise_pred", ("B", "latent_c", "h", "w")),),
    # B = 2 x images with classifier-free guidance; h, w = pixels / 8 (256..1024 px).
    axes=(Axis("B", 1, 2, 8), Axis("h", 32, 64, 128), Axis("w", 32, 64, 128), Axis("N", 1, 2, 4), Axis("M", 1, 2, 4)),
)
VAE_DECODER = EngineSpec(
    "vae_decoder",
    inputs=(TensorSpec("latent", ("B", "latent_c", "h", "w")),),
    outputs=(TensorSpec("image", ("B", 3, "8*h", "8*w")),),
    axes=(Axis("B", 1, 1, 4), Axis("h", 32, 64, 128), Axis("w", 32, 64, 128)),
)

# v2: ``id_scale`` per person (N) and the imr output named ``edited_tokens`` (v1: (1) and ``id_tokens``).
CONTRACT_VERSION = 2
# What each version changed, for the reason logged when an engine cache from an older one is rebuilt.
CONTRACT_CHANGES = {2: "per-person id_scale, imr output edited_tokens"}

ENGINES: dict[str, EngineSpec] = {
    e.name: e for e in (TEXT_ENCODER, IMAGE_ENCODER, FACE_PROJECTOR, IMR, UNET, VAE_DECODER)
}

VAE_SCALE = 0.18215  # SD1.5 latent scale, the default when the VAE config has no scaling_factor; the vae_decoder engine takes latents already divided by it
