"""Every check of a model folder, made before any work: what ``inspect`` calls unusable,
``Pipeline.load`` and the engine export refuse, in a second or two, with the same lines.

- :func:`folder_problems` (cheap, every load): the layout, weight-file headers (truncation, lying
  headers and offsets), broken symlinks and loops, and config values no SD1.5 model has (a width
  of a million would make the export allocate terabytes);
- :func:`check_before_export` (when an engine must be built, before the first is): every checkpoint
  loads as ``inspect`` loads it (pickles only with ``weights_only``), and no weight is NaN or inf.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DynamicIDError, ModelFolderError
from ..modelfiles.paths import ModelPaths
from ..modelfiles.weightcheck import WEIGHT_SUFFIXES, header_shapes, weight_problems

# Bounds of config values: far above any SD1.5 / CLIP model, far below what exhausts memory.
MAX_WIDTH = 16384  # channels, hidden sizes, head counts
MAX_DEPTH = 256  # layers, blocks
MAX_INT = 1 << 20  # anything else (vocabularies, timesteps)
_WIDTH_WORDS = ("channels", "dim", "hidden_size", "intermediate_size", "heads", "size")
_DEPTH_WORDS = ("layers", "blocks", "depth")
_CONFIG_PARTS = ("unet", "vae", "text_encoder")


def folder_problems(paths: ModelPaths) -> list[str]:
    """One line per reason the model folder is unusable; empty when it passes every cheap check."""
    problems = paths.problems()
    if problems:
        return problems
    return weight_problems(paths) + config_problems(paths)


def check_folder(paths: ModelPaths) -> None:
    """Raise ModelFolderError listing :func:`folder_problems`."""
    problems = folder_problems(paths)
    if problems:
        raise ModelFolderError(f"model folder {paths.root or paths.base} is not usable: " + "; ".join(problems))


def config_files(paths: ModelPaths) -> list[Path]:
    """The diffusers / transformers config files of the parts (those present)."""
    files = []
    if not paths.base_is_single_file:
        base = paths.base if paths.base.name == "unet" else None
        files += [base / "config.json"] if base is not None else [paths.base / part / "config.json" for part in _CONFIG_PARTS]
    if paths.vae is not None and paths.vae.is_dir():
        files.append(paths.vae / "config.json")
    files.append(paths.image_encoder / "config.json")
    return [f for f in files if f.is_file()]


def config_problems(paths: ModelPaths) -> list[str]:
    out = []
    for file in config_files(paths):
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            out.append(f"config {file} is not readable JSON ({type(exc).__name__}); restore the file")
            continue
        if not isinstance(config, dict):
            out.append(f"config {file} is not a JSON object; restore the file")
            continue
        out += [f"config {file}: {key}={value!r} {why}; restore the file" for key, value, why in _implausible(config)]
    if out:
        return out
    from .base import read_model_dims

    try:
        dims = read_model_dims(paths)
    except ModelFolderError as exc:
        return [str(exc)]
    except (TypeError, ValueError, ZeroDivisionError) as exc:  # e.g. patch_size 0
        return [f"the model's configs give no usable sizes ({type(exc).__name__}: {exc}); restore the config files"]
    bounds = {"context_dim": MAX_WIDTH, "clip_width": MAX_WIDTH, "clip_image_size": 4096, "clip_tokens": 1 << 16,
              "text_len": 4096, "latent_channels": 64, "unet_in_channels": 129}
    out = [f"the model's configs give {name}={getattr(dims, name)!r}, outside 1..{hi}; restore the config files"
           for name, hi in bounds.items() if not 1 <= getattr(dims, name) <= hi]
    latent, unet_in = dims.latent_channels, dims.unet_in_channels
    if not out and unet_in not in (latent, 2 * latent + 1):
        out.append(f"the UNet takes {unet_in} input channels for {latent}-channel latents: dynamicid-rt runs an SD1.5 "
                   f"UNet ({latent}) or an SD1.5 inpainting UNet ({2 * latent + 1}); check base/unet/config.json")
    return out


def _implausible(config: dict, prefix: str = "") -> Iterator[tuple[str, object, str]]:
    """(key, value, why) for numbers no real model config holds."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _implausible(value, f"{name}.")
            continue
        values = value if isinstance(value, list) else [value]
        lowered = str(key).lower()
        limit = (MAX_DEPTH if any(w in lowered for w in _DEPTH_WORDS)
                 else MAX_WIDTH if any(w in lowered for w in _WIDTH_WORDS) and "vocab" not in lowered else MAX_INT)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                yield name, value, "is not a finite number"
                break
            low = 1 if lowered.endswith("_size") else -limit  # a patch or image size of 0 divides by zero
            if isinstance(v, int) and not low <= v <= limit:
                yield name, value, f"is not a plausible size ({low} to {limit})"
                break


def check_before_export(paths: ModelPaths, weight_files: Iterable[Path]) -> None:
    """Before the first engine is exported: every checkpoint loads (as ``inspect`` loads it) and
    no tensor of ``weight_files`` (the sources of the engines to build) is NaN or inf. Needs
    torch, as the export does; without it the export's own message says so."""
    if importlib.util.find_spec("torch") is None:
        return
    from .checkpoint_report import checkpoint_problems

    problems = checkpoint_problems(paths) + shape_problems(paths)
    if not problems:
        for file in dict.fromkeys(weight_files):
            try:
                name = nonfinite_tensor(file) if file.suffix in WEIGHT_SUFFIXES else None
            except DynamicIDError as exc:  # a pickle holding objects, an unreadable checkpoint
                problems.append(f"weight file {file}: {exc}")
                continue
            if name is not None:
                problems.append(f"weight file {file}: tensor {name!r} holds NaN or infinite values (the file is "
                                "corrupt: download it again)")
    if problems:
        raise ModelFolderError(f"model folder {paths.root or paths.base} is not usable: " + "; ".join(problems))


# diffusers folders whose weights are checked against the shapes their config makes.
_DIFFUSERS_PARTS = (("vae", "AutoencoderKL"), ("unet", "UNet2DConditionModel"))


def shape_problems(paths: ModelPaths) -> list[str]:
    """A diffusers part (VAE, UNet) whose ``.safetensors`` tensors do not have the shapes its config
    makes: found from the header and a model built on the meta device, before any export."""
    out = []
    for part, cls_name in _DIFFUSERS_PARTS:
        if part == "vae" and paths.vae is not None:
            folder = paths.vae if paths.vae.is_dir() else None
        else:
            folder = None if paths.base_is_single_file else (paths.base if paths.base.name == part else paths.base / part)
        if folder is None or not (folder / "config.json").is_file():
            continue
        weights = folder / "diffusion_pytorch_model.safetensors"
        have = header_shapes(weights) if weights.is_file() else None
        if not have:
            continue
        want = _meta_shapes(folder / "config.json", cls_name)
        if want is None:
            continue
        for name, shape in want.items():
            if name in have and have[name] != shape:
                out.append(f"{part} weight file {weights}: tensor {name!r} has shape {list(have[name])} but its config makes "
                           f"{list(shape)} (a {part} of another model, or the wrong config.json); use the {part} that belongs to it")
                break
    return out


def _meta_shapes(config_file: Path, cls_name: str) -> dict[str, tuple[int, ...]] | None:
    """Parameter shapes of the diffusers model ``config_file`` describes (built without memory)."""
    import diffusers
    import torch

    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        with torch.device("meta"):
            model = getattr(diffusers, cls_name).from_config(config)
    except Exception:  # noqa: BLE001 - a config diffusers cannot build is reported where it loads
        return None
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def nonfinite_tensor(file: Path) -> str | None:
    """The name of the first floating-point tensor of ``file`` holding NaN or inf, or None."""
    import torch

    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return key
        return None
    from ..modelfiles.checkpoints import load_tensor_file

    return _nonfinite_in(load_tensor_file(file))  # CheckpointError for a pickle of objects or an unreadable file


def _nonfinite_in(state: dict, prefix: str = "") -> str | None:
    import torch

    for key, value in state.items():
        if isinstance(value, dict):
            found = _nonfinite_in(value, f"{prefix}{key}.")
            if found is not None:
                return found
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"{prefix}{key}"
    return None
