"""Entry points that build the module of each contract engine (SPEC §4, §5) from a model folder."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoints import read_saa_checkpoint
from ..errors import ModelFolderError
from . import base
from .imr import load_imr
from .projector import load_face_projector
from .saa import SAAUNet, install_saa
from .saa import load_unet as _load_unet_folder

if TYPE_CHECKING:
    from ..paths import ModelPaths


def load_unet(base_model, saa_checkpoint: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> SAAUNet:
    """SD1.5 UNet with SAA fused in (SPEC §5). ``base_model``: an SD1.5 diffusers folder, its
    ``unet/`` folder, a single-file ``.safetensors`` checkpoint or a ``UNet2DConditionModel``."""
    if isinstance(base_model, (str, Path)) and Path(base_model).suffix == ".safetensors":
        from ..paths import ModelPaths

        paths = ModelPaths(root=None, base=Path(base_model), image_encoder=Path(), saa=Path(saa_checkpoint), insightface=Path())
        base_model = base.load_base_unet(paths, torch.float32, device)
    return _load_unet_folder(base_model, saa_checkpoint, dtype=dtype, device=device)


def load_engine_module(paths: "ModelPaths", engine: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The module that implements one engine of the contract, in eval mode, with ``forward`` taking
    the engine's inputs in contract order and returning its outputs in contract order."""
    if engine == "unet":
        # The LoRA is merged in fp32, then the merged weights are cast: merging in fp16 would round twice.
        unet = base.load_base_unet(paths, torch.float32, device)
        module = install_saa(unet, read_saa_checkpoint(paths.saa).processors, source=str(paths.saa))
    elif engine == "text_encoder":
        module = base.load_text_encoder(paths, dtype, device)
    elif engine == "image_encoder":
        module = base.load_image_encoder(paths, dtype, device)
    elif engine == "vae_decoder":
        module = base.load_vae_decoder(paths, dtype, device)
    elif engine == "face_projector":
        module = load_face_projector(paths.saa, paths.projector, dtype=dtype, device=device)
    elif engine == "imr":
        if not paths.has_imr:
            raise ModelFolderError("this model folder has no IMR.bin / key_point_encoder.bin: expression editing is unavailable")
        module = load_imr(paths.imr, paths.keypoint_encoder, dtype=dtype, device=device)
    else:
        raise KeyError(f"unknown engine {engine!r}")
    return module.to(device=device, dtype=dtype).eval()
