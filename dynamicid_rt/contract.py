"""The engine contract (SPEC §4): one declaration per engine, read by every backend, the ONNX
exporter and the TensorRT builder, so tensor names, dynamic axes and shape ranges cannot drift.

Shapes are written with symbols: dynamic axes (``B``, ``h``, ``w``, ``N``, ``M``), model sizes from
:class:`ModelDims` (``C``, ``clip_width``...) and products such as ``4*N`` or ``8*h``.

Each declaration also carries the engine's recipe and its numerical facts (what it is built from,
how its module is loaded, which precisions it tolerates), so a new engine is one declaration here,
:func:`register_engine`, and its loader. This module imports only numpy: the loader is a
``"module:function"`` name, imported when a module is first built.
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
    # The UNet's input channels: the latent's, or 2 x latent + 1 for an inpainting UNet (the mask
    # and the masked picture's latent beside the latent, runwayml's SD1.5 inpainting layout).
    unet_in_channels: int = 4
    tokens_per_identity: int = 4
    landmark_size: int = 96

    @property
    def inpainting_unet(self) -> bool:
        """Whether the UNet takes the mask and the masked picture's latent beside the latent."""
        return self.unet_in_channels == 2 * self.latent_channels + 1

    def symbols(self) -> dict[str, int]:
        return {
            "C": self.context_dim,
            "clip_width": self.clip_width,
            "clip_tokens": self.clip_tokens,
            "clip_size": self.clip_image_size,
            "L": self.text_len,
            "latent_c": self.latent_channels,
            "unet_c": self.unet_in_channels,
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
    """One engine: its tensors and axes, its recipe (``loader``, ``sources``) and its facts."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: tuple[Axis, ...] = field(default=())
    # "module:function" taking (ModelPaths, torch dtype, device) and returning the engine's module,
    # whose forward takes the inputs and returns the outputs in contract order.
    loader: str = ""
    # The ModelPaths parts it is built from (ModelPaths.source): the export cache's fingerprint.
    sources: tuple[str, ...] = ()
    # Present only when the model folder has every one of its sources; ``needs`` says which files.
    optional: bool = False
    needs: str = ""
    fp32_in_fp16: bool = False  # kept fp32 when the others run fp16 (it overflows in half precision)
    bf16: bool = False  # runs bf16 under the bf16 precision (the others stay fp32 then)
    refittable: bool = False  # TensorRT plans are built refittable: new weights refit, not rebuild
    user_loras: bool = False  # user LoRAs merge into it (a LoRA file's part of the same name)
    fused_attention: bool = False  # fp16 caches also hold a fused-attention graph for ORT's CUDA provider
    one_image_per_call: bool = False  # the pipeline runs it per image (batch 1), whatever the request's batch
    step_inputs: tuple[str, ...] = ()  # the inputs that change at every sampler step (the rest are bound once)
    control_inputs: tuple[str, ...] = ()  # small precision-critical inputs: kept fp32 in every precision
    decoder: str = ""  # a latent -> image decoder, chosen for final images by this Request.decoder name
    previews: bool = False  # live previews decode the denoised estimate with it where the folder has it

    @property
    def sized(self) -> bool:
        """Whether its shapes follow the image size (the engines static plans exist for)."""
        names = {a.name for a in self.axes}
        return "h" in names and "w" in names

    @property
    def image_inputs(self) -> list[str]:
        """Inputs laid out as images (``..., h, w``): the ones convolution-heavy backends reorder."""
        return [t.name for t in self.inputs if t.shape[-2:] == ("h", "w")]

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
    loader="dynamicid_rt.models.base:load_text_encoder",
    sources=("base/text_encoder",),
    user_loras=True,
)
IMAGE_ENCODER = EngineSpec(
    "image_encoder",
    inputs=(TensorSpec("pixel_values", ("B", 3, "clip_size", "clip_size")),),
    outputs=(TensorSpec("hidden_states", ("B", "clip_tokens", "clip_width")),),
    axes=(Axis("B", 1, 1, 4),),
    loader="dynamicid_rt.models.base:load_image_encoder",
    sources=("image_encoder",),
)
FACE_PROJECTOR = EngineSpec(
    "face_projector",
    inputs=(TensorSpec("id_embeds", ("B", 512)), TensorSpec("clip_hidden", ("B", "clip_tokens", "clip_width"))),
    outputs=(TensorSpec("id_tokens", ("B", "T", "C")),),
    axes=(Axis("B", 1, 1, 4),),
    loader="dynamicid_rt.models.engines:load_face_projector_module",
    sources=("saa", "projector"),  # the projector file only where the SAA file lacks the projector
)
IMR = EngineSpec(
    "imr",
    inputs=(
        TensorSpec("id_tokens", (1, "T", "C")),
        TensorSpec("landmarks", (2, 1, "lm", "lm")),
        TensorSpec("text_pooled", (2, "C")),
    ),
    outputs=(TensorSpec("edited_tokens", (1, "T", "C")),),
    loader="dynamicid_rt.models.engines:load_imr_module",
    sources=("imr", "keypoint_encoder"),
    optional=True,
    needs="IMR.bin and key_point_encoder.bin in the model folder's dynamicid/ folder (expression editing)",
)
UNET = EngineSpec(
    "unet",
    inputs=(
        TensorSpec("sample", ("B", "unet_c", "h", "w")),  # 4 channels; 9 for an inpainting UNet
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
    loader="dynamicid_rt.models.engines:load_unet_module",
    sources=("base/unet", "saa"),
    bf16=True,
    refittable=True,  # it carries the checkpoint-specific weights (fine-tune + SAA LoRA)
    user_loras=True,
    fused_attention=True,
    step_inputs=("sample", "timestep", "id_boost"),
    # Timestep embedding and box arithmetic lose their fractions in fp16 (export/fp16_islands.py).
    control_inputs=("timestep", "id_boxes", "id_scale", "id_boost", "id_gating", "id_mix"),
)
VAE_DECODER = EngineSpec(
    "vae_decoder",
    inputs=(TensorSpec("latent", ("B", "latent_c", "h", "w")),),
    outputs=(TensorSpec("image", ("B", 3, "8*h", "8*w")),),
    axes=(Axis("B", 1, 1, 4), Axis("h", 32, 64, 128), Axis("w", 32, 64, 128)),
    loader="dynamicid_rt.models.base:load_vae_decoder",
    sources=("base/vae",),  # the vae override where given
    # SD1.5's VAE overflows in fp16 (bf16 has fp32's range).
    fp32_in_fp16=True,
    bf16=True,
    one_image_per_call=True,
    decoder="vae",
)
TAESD_DECODER = EngineSpec(
    "taesd_decoder",
    inputs=(TensorSpec("latent", ("B", "latent_c", "h", "w")),),
    outputs=(TensorSpec("image", ("B", 3, "8*h", "8*w")),),
    axes=(Axis("B", 1, 1, 4), Axis("h", 32, 64, 128), Axis("w", 32, 64, 128)),
    loader="dynamicid_rt.models.taesd:load_taesd_decoder",
    sources=("taesd",),
    optional=True,
    needs="a taesd/ folder (diffusers AutoencoderTiny, e.g. madebyollin/taesd: config.json and weights) for previews and fast decodes",
    # Distilled to run in fp16 (no fp32 island needed); the pipeline still retries an overflow in fp32.
    bf16=True,
    one_image_per_call=True,
    decoder="taesd",
    previews=True,
)
VAE_ENCODER = EngineSpec(
    "vae_encoder",
    inputs=(TensorSpec("image", ("B", 3, "8*h", "8*w")),),
    outputs=(TensorSpec("latent", ("B", "latent_c", "h", "w")),),
    axes=(Axis("B", 1, 1, 4), Axis("h", 32, 64, 128), Axis("w", 32, 64, 128)),
    loader="dynamicid_rt.models.base:load_vae_encoder",
    sources=("base/vae",),
    fp32_in_fp16=True,  # the same VAE, the same fp16 overflow as the decoder
    bf16=True,
    one_image_per_call=True,
)

# v2: ``id_scale`` per person (N) and the imr output named ``edited_tokens`` (v1: (1) and ``id_tokens``).
CONTRACT_VERSION = 2
# What each version changed, for the reason logged when an engine cache from an older one is rebuilt.
CONTRACT_CHANGES = {2: "per-person id_scale, imr output edited_tokens"}

ENGINES: dict[str, EngineSpec] = {
    e.name: e for e in (TEXT_ENCODER, IMAGE_ENCODER, FACE_PROJECTOR, IMR, UNET, VAE_DECODER, TAESD_DECODER, VAE_ENCODER)
}

# The engines user LoRAs change, in the order LoRA cache keys are listed.
LORA_ENGINES = tuple(name for name, spec in ENGINES.items() if spec.user_loras)

# The engines whose weights make an identity's tokens, in the order the identity fingerprint
# (fingerprint.py) digests their sources: saved identities carry that digest, so do not reorder.
IDENTITY_ENGINES = ("face_projector", "image_encoder", "imr")


def engine_spec(name: str) -> EngineSpec:
    """The declaration of engine ``name``; an unknown name is a KeyError naming the known ones."""
    if name not in ENGINES:
        raise KeyError(f"unknown engine {name!r}; the contract has {', '.join(ENGINES)}")
    return ENGINES[name]


def decoder_engines() -> dict[str, str]:
    """``{Request.decoder name: engine}`` of the contract's image decoders (the first is the default)."""
    return {spec.decoder: name for name, spec in ENGINES.items() if spec.decoder}


def register_engine(spec: EngineSpec) -> EngineSpec:
    """Add an engine to the contract: every consumer (exporter, caches, backends, plans) reads
    :data:`ENGINES`, so it is built, cached and run like the others. A name already taken is refused."""
    if spec.name in ENGINES:
        raise ValueError(f"the contract already has an engine named {spec.name!r}")
    if spec.loader.count(":") != 1:
        raise ValueError(f"engine {spec.name!r}: loader must be 'module:function', not {spec.loader!r}")
    ENGINES[spec.name] = spec
    return spec


VAE_SCALE = 0.18215  # SD1.5 latent scale, the default when the VAE config has no scaling_factor; the vae_decoder engine takes latents already divided by it
