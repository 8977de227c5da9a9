"""Text encoder, CLIP image encoder and VAE decoder as modules of the engine contract (SPEC §4).

Each wraps the transformers/diffusers model and returns exactly the contract's outputs, with plain
tensor ops only so that ``torch.onnx.export`` traces them.
"""
from __future__ import annotations

import torch
from torch import nn


class TextEncoder(nn.Module):
    """``input_ids`` (B,77) -> ``last_hidden_state`` (B,77,C), ``pooled`` (B,C).

    ``pooled`` is the final-LayerNorm state at the first end-of-text token. CLIP gives end-of-text
    the highest id of its vocabulary (and pads with it), so its position is the argmax of the ids;
    this holds for every CLIP tokenizer, unlike the ``eos_token_id`` of old SD1.5 configs (2).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(input_ids=input_ids, return_dict=True).last_hidden_state
        # int32 argmax: ONNX ArgMax on int64 is missing from some runtimes.
        eos = input_ids.to(torch.int32).argmax(dim=-1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]
        return hidden, pooled


class ImageEncoder(nn.Module):
    """``pixel_values`` (B,3,224,224) -> ``hidden_states`` (B,257,W): the penultimate hidden states
    of the vision tower (hidden_states[-2]), as the face projector was trained on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        return out.hidden_states[-2]


class VAEDecoder(nn.Module):
    """``latent`` (B,4,h,w), already divided by the latent scale -> ``image`` (B,3,8h,8w) in [-1, 1]."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latent, return_dict=False)[0]
        return image.clamp(-1.0, 1.0)


class VAEEncoder(nn.Module):
    """``image`` (B,3,8h,8w) in [-1, 1] -> ``latent`` (B,4,h,w): the posterior mean times the latent
    scale (the VAE config's ``scaling_factor``, 0.18215 for SD1.5), as the UNet takes latents."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scale = float(getattr(vae.config, "scaling_factor", None) or 0.18215)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # The mean, not a sample: the same photo gives the same latent on every backend.
        return self.vae.encode(image, return_dict=False)[0].mean * self.scale
