"""Loaders of the SD1.5 base parts and the CLIP image encoder, from a :class:`ModelPaths`.

The base is a diffusers folder, its bare ``unet/`` folder, or a single-file SD1.5 ``.safetensors``
checkpoint in the original LDM key layout. Single files are converted fully offline: the model
configs come from a diffusers-layout folder of ``config.json`` files beside the file (``unet/``,
``vae/``, ``text_encoder/``) when there is one, else from the SD1.5 configs shipped with the
package. :func:`read_model_dims` reads ``config.json`` files only and never imports torch.
"""
from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..contract import ModelDims
from ..errors import ModelFolderError
from ..modelfiles.part_files import DIFFUSERS, RULE, TRANSFORMERS, choose_weights, configs_beside
from ..modelfiles.paths import ModelPaths

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .encoders import ImageEncoder, TextEncoder, VAEDecoder, VAEEncoder

log = logging.getLogger(__name__)

# Key prefixes of the sub-models inside an LDM (original Stable Diffusion) single-file checkpoint.
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.transformer."
LDM_EMA_PREFIX = "model_ema."  # the UNet's EMA weights, beside the trained ones in some checkpoints

def bundled_sd15_config_dir() -> Path:
    """The SD1.5 diffusers configs shipped with the package (``unet/``, ``vae/``, ``text_encoder/``,
    ``scheduler/``), used for single-file checkpoints without configs beside them."""
    return Path(str(resources.files("dynamicid_rt") / "data" / "sd15"))


def single_file_config_dir(checkpoint: Path) -> Path:
    """Where the configs of a single-file checkpoint come from: a diffusers-layout folder of
    configs beside the file, or beside the file a link points to (``models pull --base FILE``
    links it), else the bundled SD1.5 ones."""
    beside = configs_beside(checkpoint)
    return beside if beside is not None else bundled_sd15_config_dir()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFolderError(f"{what}: {path} is missing (expected a JSON config file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{what}: {path} is not valid JSON ({exc}); download or copy it again") from exc
    if not isinstance(data, dict):
        raise ModelFolderError(f"{what}: {path} holds a {type(data).__name__}, expected a JSON object")
    return data


def _base_part_dir(paths: ModelPaths, part: str) -> Path:
    """The folder of one part of a diffusers-layout base (``paths.base`` may be its ``unet/``)."""
    base = paths.base
    if base.name == "unet" and (base / "config.json").is_file():
        if part == "unet":
            return base
        raise ModelFolderError(
            f"base {base} is a bare unet/ folder, which has no {part}; point the base at the full SD1.5 "
            f"folder (with unet/ vae/ text_encoder/ tokenizer/ scheduler/)"
        )
    if not base.is_dir():
        raise ModelFolderError(
            f"base model {base} does not exist (expected an SD1.5 diffusers folder or a single-file .safetensors)"
        )
    return base / part


def _pretrained(cls: Any, folder: Path, what: str, dtype: "torch.dtype") -> Any:
    """``cls.from_pretrained(folder)`` offline, reading the weights :func:`choose_weights` picks
    (and only those) at ``dtype``, whatever the config's ``torch_dtype`` says; missing weights are
    errors, not warnings."""
    if not (Path(folder) / "config.json").is_file():
        if not Path(folder).is_dir():
            raise ModelFolderError(f"{what} folder {folder} is missing (expected a diffusers/transformers model folder)")
        raise ModelFolderError(f"{what} folder {folder} lacks config.json")
    diffusers_model = cls.__module__.startswith("diffusers")
    choice = choose_weights(folder, DIFFUSERS if diffusers_model else TRANSFORMERS, what)
    if choice.variant or choice.ignored:
        log.info("%s: reading %s (%s)", what, choice.describe(), RULE)
    # diffusers calls the dtype argument torch_dtype, transformers 5 dtype.
    kwargs = {"torch_dtype" if diffusers_model else "dtype": dtype}
    try:
        model, info = cls.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True, variant=choice.variant,
            use_safetensors=choice.safetensors, **kwargs,
        )
    except ModelFolderError:
        raise
    except Exception as exc:  # corrupt file, wrong config, shape mismatch...
        text = str(exc).strip()
        if "mismatched_sizes" in text or "size mismatch" in text:
            raise ModelFolderError(
                f"the {what} weights {folder / choice.name} do not fit {folder / 'config.json'} (tensor sizes differ): "
                "the config and the weights come from different models; take both from the same repo"
            ) from exc
        raise ModelFolderError(
            f"cannot load the {what} from {folder / choice.name} ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"
        ) from exc
    _check_loading(info.get("missing_keys", ()), info.get("mismatched_keys", ()), folder / choice.name, what)
    return model


def _check_loading(missing, mismatched, where: Path, what: str) -> None:
    missing, mismatched = sorted(missing), list(mismatched)
    if missing or mismatched:
        details = []
        if missing:
            details.append(f"missing weights {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if mismatched:
            details.append(f"wrong shapes {', '.join(str(m[0]) if isinstance(m, tuple) else str(m) for m in mismatched[:6])}")
        raise ModelFolderError(
            f"the {what} in {where} does not match its config ({'; '.join(details)}); the weights are truncated "
            "or belong to another model"
        )


def _read_prefixed(checkpoint: Path, prefix: str) -> dict[str, "torch.Tensor"]:
    """The tensors of ``checkpoint`` whose key starts with ``prefix`` (only those are read)."""
    from safetensors import safe_open

    if not checkpoint.is_file():
        raise ModelFolderError(f"single-file checkpoint {checkpoint} is missing")
    try:
        with safe_open(str(checkpoint), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except Exception as exc:  # not a safetensors file, truncated
        raise ModelFolderError(
            f"cannot read {checkpoint} as a .safetensors checkpoint ({type(exc).__name__}: {exc})"
        ) from exc


def _load_converted(model: "torch.nn.Module", state: dict, checkpoint: Path, what: str) -> None:
    """Load converted weights into ``model`` (built on the meta device: no memory, no random init)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches: the checkpoint is no SD1.5 of this config
        raise ModelFolderError(
            f"the {what} in {checkpoint} does not fit its config ({str(exc).splitlines()[-1].strip()}); "
            "put the model's own diffusers configs (unet/, vae/, text_encoder/ with config.json) beside the file"
        ) from exc
    still_empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    _check_loading(sorted(set(missing) | set(still_empty)), (), checkpoint, what)
    if unexpected:
        log.warning("%s: %d unused weights in %s", what, len(unexpected), checkpoint)


def _single_file_unet(checkpoint: Path) -> "UNet2DConditionModel":
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config_dir = single_file_config_dir(checkpoint)
    config = _read_json(config_dir / "unet" / "config.json", "UNet config for the single-file base")
    tensors = _read_prefixed(checkpoint, LDM_UNET_PREFIX)
    if not tensors:
        raise ModelFolderError(f"{checkpoint} holds no UNet weights (no keys starting with {LDM_UNET_PREFIX!r})")
    if _has_prefix(checkpoint, LDM_EMA_PREFIX):
        log.info(
            "%s holds two UNet weight sets: using the trained weights (%s*), as diffusers' single-file loader "
            "does, not the EMA ones (%s*); for the EMA set use a file that holds only it (SD1.5: "
            "v1-5-pruned-emaonly.safetensors)", checkpoint.name, LDM_UNET_PREFIX, LDM_EMA_PREFIX,
        )
    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(config)
    try:
        state = convert_ldm_unet_checkpoint(tensors, model.config)
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelFolderError(
            f"the UNet in {checkpoint} does not fit the SD1.5 UNet config {config_dir / 'unet'} ({exc})"
        ) from exc
    _load_converted(model, state, checkpoint, "UNet")
    return model


def _single_file_vae(checkpoint: Path, prefix: str) -> "AutoencoderKL":
    import torch
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config_dir = single_file_config_dir(checkpoint)
    config = _read_json(config_dir / "vae" / "config.json", "VAE config for the single-file checkpoint")
    tensors = _read_prefixed(checkpoint, prefix)
    if not tensors:
        raise ModelFolderError(f"{checkpoint} holds no VAE weights (no keys starting with {prefix!r})")
    with torch.device("meta"):
        model = AutoencoderKL.from_config(config)
    try:
        state = convert_ldm_vae_checkpoint(tensors, model.config)
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelFolderError(f"the VAE in {checkpoint} does not fit the config {config_dir / 'vae'} ({exc})") from exc
    _load_converted(model, state, checkpoint, "VAE")
    return model


def _single_file_text_model(checkpoint: Path) -> "torch.nn.Module":
    from transformers import CLIPTextConfig, CLIPTextModel

    config_dir = single_file_config_dir(checkpoint)
    config_file = config_dir / "text_encoder" / "config.json"
    _read_json(config_file, "text encoder config for the single-file base")
    tensors = _read_prefixed(checkpoint, LDM_TEXT_PREFIX)
    if not tensors:
        raise ModelFolderError(f"{checkpoint} holds no text encoder weights (no keys starting with {LDM_TEXT_PREFIX!r})")
    model = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder")))
    # Newer transformers flatten CLIPTextModel (no `text_model.` level); old checkpoints also hold
    # the position_ids buffer, which is no weight.
    strip = "" if hasattr(model, "text_model") else "text_model."
    state = {
        k[len(LDM_TEXT_PREFIX):].removeprefix(strip): v
        for k, v in tensors.items()
        if not k.endswith("position_ids")
    }
    _load_converted(model, state, checkpoint, "text encoder")
    return model


def _finish(model: "torch.nn.Module", dtype: "torch.dtype", device: "str | torch.device") -> Any:
    # Cast only when needed: diffusers warns on every dtype cast of a bare model.
    if any(p.dtype != dtype for p in model.parameters()):
        model = model.to(dtype=dtype)
    return model.to(device=device).eval().requires_grad_(False)


def load_base_unet(paths: ModelPaths, dtype: "torch.dtype", device: "str | torch.device" = "cpu") -> "UNet2DConditionModel":
    """The base UNet (without SAA) from a diffusers folder, its ``unet/`` folder or a single file."""
    if paths.base_is_single_file:
        model = _single_file_unet(paths.base)
    else:
        from diffusers import UNet2DConditionModel

        model = _pretrained(UNet2DConditionModel, _base_part_dir(paths, "unet"), "UNet", dtype)
    return _finish(model, dtype, device)


def load_text_encoder(paths: ModelPaths, dtype: "torch.dtype", device: "str | torch.device" = "cpu") -> "TextEncoder":
    """The SD text encoder as the ``text_encoder`` engine (last hidden state and pooled output)."""
    from .encoders import TextEncoder

    if paths.base_is_single_file:
        model = _single_file_text_model(paths.base)
    else:
        from transformers import CLIPTextModel

        model = _pretrained(CLIPTextModel, _base_part_dir(paths, "text_encoder"), "text encoder", dtype)
    return _finish(TextEncoder(model), dtype, device)


def _load_vae(paths: ModelPaths, dtype: "torch.dtype") -> "AutoencoderKL":
    """The SD VAE; ``paths.vae`` (a diffusers VAE folder or a single-file VAE ``.safetensors``)
    overrides the base's own."""
    from diffusers import AutoencoderKL

    if paths.vae is not None:
        if paths.vae.suffix == ".safetensors":
            keys_prefix = LDM_VAE_PREFIX if _has_prefix(paths.vae, LDM_VAE_PREFIX) else ""
            return _single_file_vae(paths.vae, keys_prefix)
        return _pretrained(AutoencoderKL, paths.vae, "VAE", dtype)
    if paths.base_is_single_file:
        return _single_file_vae(paths.base, LDM_VAE_PREFIX)
    return _pretrained(AutoencoderKL, _base_part_dir(paths, "vae"), "VAE", dtype)


def load_vae_decoder(paths: ModelPaths, dtype: "torch.dtype", device: "str | torch.device" = "cpu") -> "VAEDecoder":
    """The VAE decoder engine (of the base's VAE, or ``paths.vae``)."""
    from .encoders import VAEDecoder

    return _finish(VAEDecoder(_load_vae(paths, dtype)), dtype, device)


def load_vae_encoder(paths: ModelPaths, dtype: "torch.dtype", device: "str | torch.device" = "cpu") -> "VAEEncoder":
    """The VAE encoder engine (img2img, inpainting), of the same VAE as the decoder."""
    from .encoders import VAEEncoder

    return _finish(VAEEncoder(_load_vae(paths, dtype)), dtype, device)


def _has_prefix(checkpoint: Path, prefix: str) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(checkpoint), framework="pt", device="cpu") as f:
            return any(k.startswith(prefix) for k in f.keys())
    except Exception as exc:  # not a safetensors file, truncated
        raise ModelFolderError(f"cannot read {checkpoint} as a .safetensors file ({type(exc).__name__}: {exc})") from exc


def load_image_encoder(paths: ModelPaths, dtype: "torch.dtype", device: "str | torch.device" = "cpu") -> "ImageEncoder":
    """The CLIP vision tower as the ``image_encoder`` engine, from a vision-only folder
    (``CLIPVisionModelWithProjection``, h94/IP-Adapter's ``models/image_encoder``) or a full
    ``CLIPModel`` folder (laion's, whose legacy config gives the vision tower no
    ``projection_dim``). The projection is not loaded: the engine's output is
    ``hidden_states[-2]``, which no projection touches, and its width is not in every config."""
    from .encoders import ImageEncoder

    model = _pretrained(_vision_tower_class(paths.image_encoder), paths.image_encoder, "image encoder", dtype)
    return _finish(ImageEncoder(model), dtype, device)


def _vision_tower_class(folder: Path) -> type:
    """The transformers class that loads the vision tower of ``folder`` with no weight left over:
    with its projection where the config is a vision-only one that gives the projection's width,
    without it for a full CLIPModel (whose legacy config may not give that width)."""
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    config = _read_json(folder / "config.json", "image encoder config")
    if "vision_config" not in config and isinstance(config.get("projection_dim"), int):
        return CLIPVisionModelWithProjection
    return CLIPVisionModel


def read_model_dims(paths: ModelPaths) -> ModelDims:
    """The model sizes of the contract, from ``config.json`` files only (no weights, no torch)."""
    if paths.base_is_single_file:
        config_dir = single_file_config_dir(paths.base)
        unet_file = config_dir / "unet" / "config.json"
        text_file: Path | None = config_dir / "text_encoder" / "config.json"
    else:
        unet_file = _base_part_dir(paths, "unet") / "config.json"
        text_file = None if paths.base.name == "unet" else paths.base / "text_encoder" / "config.json"
    unet = _read_json(unet_file, "UNet config")
    context = unet.get("cross_attention_dim")
    unet_in = unet.get("in_channels", 4)
    latent = unet.get("out_channels", 4)
    if not all(isinstance(v, int) for v in (context, unet_in, latent)):
        raise ModelFolderError(
            f"UNet config {unet_file} has cross_attention_dim={context!r}, in_channels={unet_in!r}, "
            f"out_channels={latent!r}; expected integers (an SD1.5 UNet)"
        )
    text_len = 77
    if text_file is not None and text_file.is_file():
        text = _read_json(text_file, "text encoder config")
        text_len = int(text.get("max_position_embeddings", text_len))
        if text.get("hidden_size") not in (None, context):
            raise ModelFolderError(
                f"text encoder {text_file} has width {text.get('hidden_size')} but the UNet {unet_file} "
                f"expects {context}: the parts come from different models"
            )
    vision_file = paths.image_encoder / "config.json"
    vision = _read_json(vision_file, "image encoder config")
    vision = vision.get("vision_config", vision)  # a full CLIPConfig nests the vision tower's
    try:
        width, size, patch = int(vision["hidden_size"]), int(vision["image_size"]), int(vision["patch_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFolderError(
            f"image encoder config {vision_file} lacks hidden_size/image_size/patch_size ({exc}); "
            "expected a CLIP vision config (or a CLIPModel config with a vision_config)"
        ) from exc
    return ModelDims(
        context_dim=context,
        clip_width=width,
        clip_tokens=(size // patch) ** 2 + 1,
        clip_image_size=size,
        text_len=text_len,
        latent_channels=latent,
        unet_in_channels=unet_in,
    )
