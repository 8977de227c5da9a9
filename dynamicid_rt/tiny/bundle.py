"""The tiny bundle: random weights in exactly the real file formats and folder layout (SPEC §3),
so every loader and the whole pipeline run for real without downloads.

Sizes are SD1.5's structure at toy widths (:data:`TINY`). Writing is atomic (built in a temporary
folder beside the target, then renamed) and deterministic for a seed; a complete bundle carries
the marker file ``tiny_bundle.json`` and is reused as it is.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..contract import ModelDims
from ..errors import ModelFolderError
from ..paths import INSIGHTFACE_PACK, ModelPaths
from .tokenizer import write_clip_tokenizer

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MARKER = "tiny_bundle.json"
BUNDLE_VERSION = 2
# Top-level entries of a bundle: a folder holding anything else is never replaced.
_ENTRIES = frozenset({"base", "image_encoder", "dynamicid", "insightface", "samples", MARKER})


@dataclass(frozen=True)
class TinySizes:
    """Sizes of the tiny bundle's models."""

    context_dim: int = 64  # C: text width = ID token width
    unet_channels: tuple[int, ...] = (32, 64, 64, 64)
    unet_heads: int = 8  # SD1.5's "attention_head_dim", which diffusers reads as a head count
    unet_sample_size: int = 32
    vae_channels: tuple[int, ...] = (32, 32, 64, 64)
    text_layers: int = 2
    text_heads: int = 2
    clip_width: int = 48
    clip_layers: int = 3
    clip_heads: int = 3
    clip_projection: int = 32
    clip_image_size: int = 224
    clip_patch: int = 14
    lora_rank: int = 4
    projector_depth: int = 4
    imr_dim: int = 128
    imr_depth: int = 1
    keypoint_widths: tuple[int, ...] = (8, 8, 16, 16, 32, 32)
    keypoint_residuals: tuple[int, ...] = (2, 3, 2, 2, 1)  # residual convs after each stride-2 conv

    @property
    def dims(self) -> ModelDims:
        return ModelDims(
            context_dim=self.context_dim,
            clip_width=self.clip_width,
            clip_tokens=(self.clip_image_size // self.clip_patch) ** 2 + 1,
            clip_image_size=self.clip_image_size,
        )


TINY = TinySizes()

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def default_tiny_dir() -> Path:
    """Where the demo and tests keep the tiny bundle: the user cache folder."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dynamicid-rt")) / "tiny-bundle"


def _is_complete(root: Path, seed: int) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("version") == BUNDLE_VERSION and marker.get("seed") == seed


def write_tiny_bundle(root: Path, seed: int = 0) -> ModelPaths:
    """Write (or reuse) the tiny bundle at ``root`` and return its paths.

    A complete bundle of the same version and seed is reused; anything else at ``root`` is
    replaced. Building happens in a temporary folder beside ``root`` that is renamed into place,
    so a crash never leaves a half-written bundle that looks complete.
    """
    root = Path(root).expanduser()
    if _is_complete(root, seed):
        return ModelPaths.from_folder(root)
    if root.exists() and not (root.is_dir() and {p.name for p in root.iterdir()} <= _ENTRIES):
        raise ModelFolderError(
            f"{root} exists and is not a tiny bundle (it holds other files); refusing to replace it: "
            "choose an empty or new folder for the tiny bundle"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _build(tmp, seed)
        (tmp / MARKER).write_text(json.dumps({"version": BUNDLE_VERSION, "seed": seed}), encoding="utf-8")
        if root.exists():
            log.info("replacing the incomplete or outdated tiny bundle at %s", root)
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process finished the same bundle first: keep theirs.
            if not _is_complete(root, seed):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("tiny bundle written to %s", root)
    return ModelPaths.from_folder(root)


def _build(root: Path, seed: int) -> None:
    import torch

    base = root / "base"
    write_clip_tokenizer(base / "tokenizer")
    unet = _write_base(base, seed)
    _write_image_encoder(root / "image_encoder", seed)
    dyn = root / "dynamicid"
    dyn.mkdir()
    gen = torch.Generator().manual_seed(seed)
    torch.save({"proj_module": projector_state(gen), "SAA_module": saa_state(unet, gen)}, dyn / "SAA.bin")
    torch.save(imr_state(gen), dyn / "IMR.bin")
    torch.save(keypoint_encoder_state(gen), dyn / "key_point_encoder.bin")
    _write_insightface(root / "insightface" / INSIGHTFACE_PACK, seed)
    _write_samples(root / "samples", seed)


def _write_insightface(pack_dir: Path, seed: int) -> None:
    from .face_models import write_face_models

    write_face_models(pack_dir, seed=seed)


def _write_samples(samples_dir: Path, seed: int) -> None:
    from .portraits import write_portraits

    write_portraits(samples_dir, seed=seed)


def _write_base(base: Path, seed: int) -> "torch.nn.Module":
    """SD1.5-shaped diffusers folder; returns the UNet (the SAA keys follow its layers)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.base import bundled_sd15_config_dir

    vocab = json.loads((base / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY.unet_sample_size,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=TINY.unet_channels,
        layers_per_block=1,
        cross_attention_dim=TINY.context_dim,
        attention_head_dim=TINY.unet_heads,
        norm_num_groups=32,
    )
    unet.save_pretrained(base / "unet")
    torch.manual_seed(seed + 1)
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=TINY.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        sample_size=256,
        scaling_factor=0.18215,
    ).save_pretrained(base / "vae")
    torch.manual_seed(seed + 2)
    eos = max(vocab.values())
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TINY.context_dim,
        intermediate_size=4 * TINY.context_dim,
        num_hidden_layers=TINY.text_layers,
        num_attention_heads=TINY.text_heads,
        max_position_embeddings=77,
        projection_dim=TINY.context_dim,
        hidden_act="quick_gelu",
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=eos,
        pad_token_id=eos,
    )
    CLIPTextModel(text_config).save_pretrained(base / "text_encoder")
    # SD1.5's own scheduler config (PNDM, clip_sample false), as the real base folder carries it.
    (base / "scheduler").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundled_sd15_config_dir() / "scheduler" / "scheduler_config.json", base / "scheduler" / "scheduler_config.json")
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.6.0",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (base / "model_index.json").write_text(json.dumps(model_index, indent=2), encoding="utf-8")
    return unet


def _write_image_encoder(folder: Path, seed: int) -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed + 3)
    config = CLIPVisionConfig(
        hidden_size=TINY.clip_width,
        intermediate_size=4 * TINY.clip_width,
        num_hidden_layers=TINY.clip_layers,
        num_attention_heads=TINY.clip_heads,
        image_size=TINY.clip_image_size,
        patch_size=TINY.clip_patch,
        projection_dim=TINY.clip_projection,
        hidden_act="gelu",
    )
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    # CLIPImageProcessor's defaults, written out as the released image_encoder folders have them.
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 224},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")


# --- checkpoints in the release's key layout ----------------------------------------------------


def _randn(gen: "torch.Generator", *shape: int, std: float) -> "torch.Tensor":
    import torch

    return torch.randn(*shape, generator=gen) * std


def _linear(sd: dict, name: str, gen: "torch.Generator", n_in: int, n_out: int, bias: bool) -> None:
    sd[f"{name}.weight"] = _randn(gen, n_out, n_in, std=n_in**-0.5)
    if bias:
        sd[f"{name}.bias"] = _randn(gen, n_out, std=0.02)


def _layer_norm(sd: dict, name: str, gen: "torch.Generator", dim: int) -> None:
    # Non-trivial affine parameters, so a missed norm shows up in parity tests.
    sd[f"{name}.weight"] = 1.0 + _randn(gen, dim, std=0.1)
    sd[f"{name}.bias"] = _randn(gen, dim, std=0.1)


def _perceiver_attention(sd: dict, name: str, gen: "torch.Generator", dim: int, inner: int, cross: bool) -> None:
    _layer_norm(sd, f"{name}.norm1", gen, dim)
    if cross:
        _layer_norm(sd, f"{name}.norm2", gen, dim)
    _linear(sd, f"{name}.to_q", gen, dim, inner, bias=False)
    _linear(sd, f"{name}.to_kv", gen, dim, 2 * inner, bias=False)
    _linear(sd, f"{name}.to_out", gen, inner, dim, bias=False)


def _feed_forward(sd: dict, name: str, gen: "torch.Generator", dim: int, mult: int = 4) -> None:
    _layer_norm(sd, f"{name}.0", gen, dim)
    _linear(sd, f"{name}.1", gen, dim, mult * dim, bias=False)
    _linear(sd, f"{name}.3", gen, mult * dim, dim, bias=False)


def projector_state(gen: "torch.Generator") -> dict[str, "torch.Tensor"]:
    """Face projector weights with IP-Adapter-FaceID-PlusV2's ProjPlusModel keys (4 tokens)."""
    c, w = TINY.context_dim, TINY.clip_width
    sd: dict = {}
    _linear(sd, "proj.0", gen, 512, 1024, bias=True)
    _linear(sd, "proj.2", gen, 1024, 4 * c, bias=True)
    _layer_norm(sd, "norm", gen, c)
    _linear(sd, "perceiver_resampler.proj_in", gen, w, c, bias=True)
    _linear(sd, "perceiver_resampler.proj_out", gen, c, c, bias=True)
    _layer_norm(sd, "perceiver_resampler.norm_out", gen, c)
    inner = (c // 64) * 64
    for i in range(TINY.projector_depth):
        _perceiver_attention(sd, f"perceiver_resampler.layers.{i}.0", gen, c, inner, cross=True)
        _feed_forward(sd, f"perceiver_resampler.layers.{i}.1", gen, c)
    return sd


def saa_state(unet: "torch.nn.Module", gen: "torch.Generator") -> dict[str, "torch.Tensor"]:
    """SAA processor weights: LoRA on q, k, v, out of every attention layer, plus ``to_k_ip`` and
    ``to_v_ip`` on cross-attention layers; ``i`` is the layer's position in ``attn_processors``."""
    r, c = TINY.lora_rank, TINY.context_dim
    sd: dict = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.rsplit(".processor", 1)[0])
        for proj, layer in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v), ("out", attn.to_out[0])):
            # Small non-zero up matrices: the LoRA changes the output, the images stay finite.
            sd[f"{i}.to_{proj}_lora.down.weight"] = _randn(gen, r, layer.in_features, std=layer.in_features**-0.5)
            sd[f"{i}.to_{proj}_lora.up.weight"] = _randn(gen, layer.out_features, r, std=0.02)
        if attn.is_cross_attention:
            width = attn.to_k.out_features
            sd[f"{i}.to_k_ip.weight"] = _randn(gen, width, c, std=0.05)
            sd[f"{i}.to_v_ip.weight"] = _randn(gen, width, c, std=0.05)
    return sd


def imr_state(gen: "torch.Generator") -> dict[str, "torch.Tensor"]:
    """IMR weights in the release's key layout (D = imr_dim, heads D/64, depth imr_depth)."""
    c, d = TINY.context_dim, TINY.imr_dim
    sd: dict = {}
    _layer_norm(sd, "feature_fusion.0", gen, 2 * c)
    _linear(sd, "feature_fusion.1", gen, 2 * c, d, bias=True)
    _layer_norm(sd, "feature_fusion.3", gen, d)
    _linear(sd, "feature_fusion.4", gen, d, 4 * d, bias=True)
    _layer_norm(sd, "norm_in", gen, c)
    _linear(sd, "proj_in", gen, c, d, bias=True)
    _linear(sd, "proj_out", gen, d, c, bias=True)
    _layer_norm(sd, "norm_out", gen, d)
    for net in ("disentangleNet", "entangleNet"):
        for i in range(TINY.imr_depth):
            _perceiver_attention(sd, f"{net}.{i}.0", gen, d, d, cross=True)
            _perceiver_attention(sd, f"{net}.{i}.1", gen, d, d, cross=False)
            _feed_forward(sd, f"{net}.{i}.2", gen, d)
    return sd


def _conv_bn(sd: dict, name: str, gen: "torch.Generator", n_in: int, n_out: int, k: int) -> None:
    import torch

    sd[f"{name}.conv_block.0.weight"] = _randn(gen, n_out, n_in, k, k, std=(n_in * k * k) ** -0.5)
    sd[f"{name}.conv_block.0.bias"] = _randn(gen, n_out, std=0.05)
    sd[f"{name}.conv_block.1.weight"] = 1.0 + _randn(gen, n_out, std=0.1)
    sd[f"{name}.conv_block.1.bias"] = _randn(gen, n_out, std=0.1)
    # Non-trivial running statistics, so inference-mode BatchNorm is really exercised.
    sd[f"{name}.conv_block.1.running_mean"] = _randn(gen, n_out, std=0.1)
    sd[f"{name}.conv_block.1.running_var"] = 0.5 + torch.rand(n_out, generator=gen)
    sd[f"{name}.conv_block.1.num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)


def keypoint_encoder_state(gen: "torch.Generator") -> dict[str, "torch.Tensor"]:
    """Keypoint encoder weights in the release's layout: k7 stem; stride-2 stages each followed by
    residual 3x3 convs; a 3x3 unpadded conv and a 1x1 conv to C (96x96 -> C x 1 x 1)."""
    widths = TINY.keypoint_widths
    sd: dict = {}
    _conv_bn(sd, "blocks.0.0", gen, 1, widths[0], 7)
    for stage, residuals in enumerate(TINY.keypoint_residuals, start=1):
        _conv_bn(sd, f"blocks.{stage}.0", gen, widths[stage - 1], widths[stage], 3)
        for j in range(1, residuals + 1):
            _conv_bn(sd, f"blocks.{stage}.{j}", gen, widths[stage], widths[stage], 3)
    last = len(TINY.keypoint_residuals) + 1
    _conv_bn(sd, f"blocks.{last}.0", gen, widths[-1], widths[-1], 3)
    _conv_bn(sd, f"blocks.{last}.1", gen, widths[-1], TINY.context_dim, 1)
    return sd
