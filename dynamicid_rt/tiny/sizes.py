"""Model sizes of the random bundles: :data:`TINY` (SD1.5's structure at toy widths, for tests) and
:data:`FULL` (the released SD1.5, CLIP ViT-H/14 and DynamicID sizes, for benchmarks and slow tests)."""
from __future__ import annotations

from dataclasses import dataclass

from ..contract import ModelDims


@dataclass(frozen=True)
class TinySizes:
    """Sizes of a random bundle's models. ``sd15_configs``: build the UNet, VAE and text encoder
    from the SD1.5 configs shipped in ``dynamicid_rt/data/sd15`` (the real layout) instead of the
    widths below."""

    name: str = "tiny"
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
    taesd_channels: int = 16  # TAESD's width in every block (madebyollin/taesd: 64)
    sd15_configs: bool = False

    @property
    def dims(self) -> ModelDims:
        return ModelDims(
            context_dim=self.context_dim,
            clip_width=self.clip_width,
            clip_tokens=(self.clip_image_size // self.clip_patch) ** 2 + 1,
            clip_image_size=self.clip_image_size,
        )


TINY = TinySizes()

# The released model's sizes: SD1.5 (from its shipped configs), CLIP ViT-H/14 (32 layers, width
# 1280, 16 heads, projection 1024), SAA LoRA rank 128, IMR width 1024, keypoint encoder 16..512.
FULL = TinySizes(
    name="full",
    context_dim=768,
    unet_channels=(320, 640, 1280, 1280),
    unet_sample_size=64,
    vae_channels=(128, 256, 512, 512),
    text_layers=12,
    text_heads=12,
    clip_width=1280,
    clip_layers=32,
    clip_heads=16,
    clip_projection=1024,
    lora_rank=128,
    imr_dim=1024,
    keypoint_widths=(16, 32, 64, 128, 256, 512),
    taesd_channels=64,
    sd15_configs=True,
)
