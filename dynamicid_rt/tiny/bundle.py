"""The tiny bundle: random weights in exactly the real file formats and folder layout (SPEC §3),
so every loader and the whole pipeline run for real without downloads.

Sizes are SD1.5's structure at toy widths (:data:`TINY`), or with ``full_size=True`` the released
models' sizes (:data:`FULL`: SD1.5, CLIP ViT-H/14, IMR) with random weights, for benchmarks.
Writing is atomic (built in a temporary folder beside the target, then renamed) and deterministic
for a seed; a complete bundle carries the marker file ``tiny_bundle.json`` and is reused as it is.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from ..errors import ModelFolderError
from ..files.atomic import write_error
from ..files.stamps import STAMP, first_mismatch, sha256_file
from ..modelfiles.paths import INSIGHTFACE_PACK, ModelPaths
from .checkpoints import imr_state, keypoint_encoder_state, projector_state, saa_state
from .sizes import FULL, TINY, TinySizes
from .tokenizer import write_clip_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTextConfig

log = logging.getLogger(__name__)

MARKER = "tiny_bundle.json"
BUNDLE_VERSION = 3  # 3: taesd/
# Top-level entries of a bundle: a folder holding anything else is never replaced.
_ENTRIES = frozenset({"base", "image_encoder", "dynamicid", "insightface", "taesd", "samples", MARKER, STAMP})

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def default_tiny_dir() -> Path:
    """Where the demo and tests keep the tiny bundle: the user cache folder."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dynamicid-rt")) / "tiny-bundle"


def default_full_size_dir() -> Path:
    """Where ``demo --full-size`` keeps the full-size random bundle: the user cache folder."""
    return default_tiny_dir().with_name("full-size-bundle")


def _marker(seed: int, sizes: TinySizes) -> dict:
    return {"version": BUNDLE_VERSION, "seed": seed, "sizes": sizes.name}


def _is_complete(root: Path, seed: int, sizes: TinySizes) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        return False  # bundles from before file digests were recorded are rebuilt once
    files = marker.pop("files")
    # Bundles written before sizes were recorded are tiny ones.
    if {"sizes": TINY.name} | marker != _marker(seed, sizes):
        return False
    problem = _files_problem(root, files)
    if problem:
        log.info("tiny bundle at %s is damaged (%s); rebuilding it", root, problem)
    return problem is None


def _file_digests(root: Path) -> dict[str, list]:
    """Every file of a freshly built bundle: relative path -> [size, SHA-256]."""
    return {p.relative_to(root).as_posix(): [p.stat().st_size, sha256_file(p)]
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER}


def _files_problem(root: Path, files: dict) -> str | None:
    """Why the bundle's files differ from its marker (missing, truncated, changed), or None."""
    for name, (size, _) in files.items():
        path = root / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or has the wrong size"
    bad = first_mismatch(root, {name: digest for name, (_, digest) in files.items()})
    return f"{bad} does not match its recorded SHA-256" if bad else None


def write_tiny_bundle(root: Path, seed: int = 0, full_size: bool = False) -> ModelPaths:
    """Write (or reuse) the tiny bundle at ``root`` and return its paths. ``full_size``: the
    released models' sizes with random weights (about 8 GB, minutes to write), for benchmarks.

    A complete bundle of the same version and seed is reused; anything else at ``root`` is
    replaced. Building happens in a temporary folder beside ``root`` that is renamed into place,
    so a crash never leaves a half-written bundle that looks complete.
    """
    root = Path(root).expanduser()
    sizes = FULL if full_size else TINY
    if _is_complete(root, seed, sizes):
        return ModelPaths.from_folder(root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        # One writer per bundle: a second process (or thread) waits, then reuses the finished bundle.
        with FileLock(str(root.parent / f".lock-{root.name}")):
            if _is_complete(root, seed, sizes):
                return ModelPaths.from_folder(root)
            return _write(root, seed, sizes)
    except Exception as exc:  # safetensors and torch report a full disk in their own exception types
        error = write_error(root, exc)
        if error is None:
            raise
        raise error from exc


def _write(root: Path, seed: int, sizes: TinySizes) -> ModelPaths:
    if root.exists() and not (root.is_dir() and {p.name for p in root.iterdir()} <= _ENTRIES):
        raise ModelFolderError(
            f"{root} exists and is not a tiny bundle (it holds other files); refusing to replace it: "
            "choose an empty or new folder for the tiny bundle"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _build(tmp, seed, sizes)
        marker = _marker(seed, sizes) | {"files": _file_digests(tmp)}
        (tmp / MARKER).write_text(json.dumps(marker), encoding="utf-8")
        if root.exists():
            log.info("replacing the incomplete or outdated tiny bundle at %s", root)
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process finished the same bundle first: keep theirs.
            if not _is_complete(root, seed, sizes):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s random bundle written to %s", sizes.name, root)
    return ModelPaths.from_folder(root)


def _build(root: Path, seed: int, sizes: TinySizes) -> None:
    import torch

    base = root / "base"
    write_clip_tokenizer(base / "tokenizer")
    unet = _write_base(base, seed, sizes)
    _write_image_encoder(root / "image_encoder", seed, sizes)
    dyn = root / "dynamicid"
    dyn.mkdir()
    gen = torch.Generator().manual_seed(seed)
    saa = {"proj_module": projector_state(gen, sizes), "SAA_module": saa_state(unet, gen, sizes)}
    del unet  # the full-size UNet is 3.4 GB
    torch.save(saa, dyn / "SAA.bin")
    torch.save(imr_state(gen, sizes), dyn / "IMR.bin")
    torch.save(keypoint_encoder_state(gen, sizes), dyn / "key_point_encoder.bin")
    _write_taesd(root / "taesd", seed, sizes)
    _write_insightface(root / "insightface" / INSIGHTFACE_PACK, seed)
    _write_samples(root / "samples", seed)


def _taesd_config(sizes: TinySizes) -> dict:
    """madebyollin/taesd's config.json (AutoencoderTiny), at the bundle's width."""
    width = sizes.taesd_channels
    return {
        "_class_name": "AutoencoderTiny",
        "act_fn": "relu",
        "decoder_block_out_channels": [width] * 4,
        "encoder_block_out_channels": [width] * 4,
        "force_upcast": False,
        "in_channels": 3,
        "latent_channels": 4,
        "latent_magnitude": 3,
        "latent_shift": 0.5,
        "num_decoder_blocks": [3, 3, 3, 1],
        "num_encoder_blocks": [1, 3, 3, 3],
        "out_channels": 3,
        "scaling_factor": 1.0,
        "upsampling_scaling_factor": 2,
    }


def _write_taesd(folder: Path, seed: int, sizes: TinySizes) -> None:
    """The tiny autoencoder as madebyollin/taesd ships it: config.json and
    diffusion_pytorch_model.safetensors, encoder and decoder."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed + 4)
    taesd = AutoencoderTiny.from_config(_taesd_config(sizes))
    # Default init shrinks the signal layer by layer, so every pixel would sit at the -1 clamp and
    # hide decoding errors: widen the last layer so the random images spread over [-1, 1].
    with torch.no_grad():
        taesd.decoder.layers[-1].weight.mul_(8.0)
        taesd.decoder.layers[-1].bias.fill_(0.25)
    taesd.save_pretrained(folder)
    # The config as the repo has it: save_pretrained adds a key its own loader warns about.
    config = {"_diffusers_version": "0.20.0.dev0"} | _taesd_config(sizes)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _write_insightface(pack_dir: Path, seed: int) -> None:
    from .face_models import write_face_models

    write_face_models(pack_dir, seed=seed)


def _write_samples(samples_dir: Path, seed: int) -> None:
    from .portraits import write_portraits

    write_portraits(samples_dir, seed=seed)


def _sd15_config(part: str) -> dict:
    from ..models.base import bundled_sd15_config_dir

    return json.loads((bundled_sd15_config_dir() / part / "config.json").read_text(encoding="utf-8"))


def _unet_config(sizes: TinySizes) -> dict:
    if sizes.sd15_configs:
        return _sd15_config("unet")
    return {
        "sample_size": sizes.unet_sample_size,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "block_out_channels": sizes.unet_channels,
        "layers_per_block": 1,
        "cross_attention_dim": sizes.context_dim,
        "attention_head_dim": sizes.unet_heads,
        "norm_num_groups": 32,
    }


def _vae_config(sizes: TinySizes) -> dict:
    if sizes.sd15_configs:
        return _sd15_config("vae")
    return {
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": sizes.vae_channels,
        "layers_per_block": 1,
        "latent_channels": 4,
        "sample_size": 256,
        "scaling_factor": 0.18215,
    }


def _text_config(sizes: TinySizes, vocab: dict[str, int]) -> "CLIPTextConfig":
    from transformers import CLIPTextConfig

    eos = max(vocab.values())
    # The bundled tokenizer's special tokens; SD1.5's vocabulary size where full-size (its ids fit).
    tokens = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": eos, "pad_token_id": eos}
    if sizes.sd15_configs:
        return CLIPTextConfig(**(_sd15_config("text_encoder") | tokens))
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=sizes.context_dim,
        intermediate_size=4 * sizes.context_dim,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        max_position_embeddings=77,
        projection_dim=sizes.context_dim,
        hidden_act="quick_gelu",
        **tokens,
    )


def _write_base(base: Path, seed: int, sizes: TinySizes) -> "torch.nn.Module":
    """SD1.5-shaped diffusers folder; returns the UNet (the SAA keys follow its layers)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ..models.base import bundled_sd15_config_dir

    vocab = json.loads((base / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_unet_config(sizes))
    unet.save_pretrained(base / "unet")
    torch.manual_seed(seed + 1)
    AutoencoderKL.from_config(_vae_config(sizes)).save_pretrained(base / "vae")
    torch.manual_seed(seed + 2)
    CLIPTextModel(_text_config(sizes, vocab)).save_pretrained(base / "text_encoder")
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


def _write_image_encoder(folder: Path, seed: int, sizes: TinySizes) -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed + 3)
    config = CLIPVisionConfig(
        hidden_size=sizes.clip_width,
        intermediate_size=4 * sizes.clip_width,
        num_hidden_layers=sizes.clip_layers,
        num_attention_heads=sizes.clip_heads,
        image_size=sizes.clip_image_size,
        patch_size=sizes.clip_patch,
        projection_dim=sizes.clip_projection,
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
