"""The ``taesd_decoder`` engine: the tiny autoencoder's decoder (TAESD, diffusers ``AutoencoderTiny``,
as ``madebyollin/taesd`` ships it), about 1 % of the SD VAE decoder's arithmetic.

TAESD decodes the latents the UNet works on (the VAE's latents times 0.18215; its own config says
``scaling_factor: 1.0``), while the engine contract's ``latent`` is already divided by 0.18215 like
the ``vae_decoder``'s: the module multiplies it back, so both decoders take the same input and the
pipeline can swap one for the other.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..contract import VAE_SCALE
from .base import _finish, _pretrained

if TYPE_CHECKING:
    from ..modelfiles.paths import ModelPaths


class TinyDecoder(nn.Module):
    """``latent`` (B,4,h,w), already divided by 0.18215 -> ``image`` (B,3,8h,8w) in [-1, 1]."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder  # diffusers' DecoderTiny: UNet-space latents -> image in about [-1, 1]

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent * VAE_SCALE).clamp(-1.0, 1.0)


def load_taesd_decoder(paths: "ModelPaths", dtype: torch.dtype, device: str | torch.device = "cpu") -> TinyDecoder:
    """The decoder of the ``AutoencoderTiny`` folder ``paths.taesd`` (its encoder is not kept)."""
    from diffusers import AutoencoderTiny

    tiny = _pretrained(AutoencoderTiny, paths.taesd, "TAESD", dtype)
    return _finish(TinyDecoder(tiny.decoder), dtype, device)
