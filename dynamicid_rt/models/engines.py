"""Entry points that build the module of each contract engine (SPEC §4, §5) from a model folder.

Which function builds which engine is the contract's ``EngineSpec.loader``; the loaders that need
more than ``(paths, dtype, device)`` live here.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..contract import ENGINES
from ..errors import ModelFolderError
from ..modelfiles.checkpoints import read_saa_checkpoint
from . import base
from .imr import load_imr
from .projector import load_face_projector
from .saa import SAAUNet, install_saa
from .saa import load_unet as _load_unet_folder

if TYPE_CHECKING:
    from ..modelfiles.paths import ModelPaths

EngineLoader = Callable[["ModelPaths", torch.dtype, "str | torch.device"], torch.nn.Module]


def load_unet(base_model, saa_checkpoint: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> SAAUNet:
    """SD1.5 UNet with SAA fused in (SPEC §5). ``base_model``: an SD1.5 diffusers folder, its
    ``unet/`` folder, a single-file ``.safetensors`` checkpoint or a ``UNet2DConditionModel``."""
    if isinstance(base_model, (str, Path)) and Path(base_model).suffix == ".safetensors":
        from ..modelfiles.paths import ModelPaths

        paths = ModelPaths(root=None, base=Path(base_model), image_encoder=Path(), saa=Path(saa_checkpoint), insightface=Path())
        base_model = base.load_base_unet(paths, torch.float32, device)
    return _load_unet_folder(base_model, saa_checkpoint, dtype=dtype, device=device)


def load_unet_module(paths: "ModelPaths", dtype: torch.dtype, device: str | torch.device) -> torch.nn.Module:
    # The LoRA is merged in fp32, then the merged weights are cast: merging in fp16 would round twice.
    unet = base.load_base_unet(paths, torch.float32, device)
    return install_saa(unet, read_saa_checkpoint(paths.saa).processors, source=str(paths.saa))


def load_face_projector_module(paths: "ModelPaths", dtype: torch.dtype, device: str | torch.device) -> torch.nn.Module:
    return load_face_projector(paths.saa, paths.projector, dtype=dtype, device=device)


def load_imr_module(paths: "ModelPaths", dtype: torch.dtype, device: str | torch.device) -> torch.nn.Module:
    return load_imr(paths.imr, paths.keypoint_encoder, dtype=dtype, device=device)


def engine_loader(engine: str) -> EngineLoader:
    """The function the contract names as ``engine``'s loader, imported now."""
    if engine not in ENGINES:
        raise KeyError(f"unknown engine {engine!r}; the contract has {', '.join(ENGINES)}")
    module_name, _, function = ENGINES[engine].loader.partition(":")
    return getattr(importlib.import_module(module_name), function)


def load_engine_module(paths: "ModelPaths", engine: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The module that implements one engine of the contract, in eval mode, with ``forward`` taking
    the engine's inputs in contract order and returning its outputs in contract order."""
    loader = engine_loader(engine)
    if not paths.provides(engine):
        raise ModelFolderError(f"engine {engine!r} is not available: the model folder lacks {ENGINES[engine].needs}")
    return loader(paths, dtype, device).to(device=device, dtype=dtype).eval()
