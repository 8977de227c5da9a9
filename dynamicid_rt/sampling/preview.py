"""A cheap latent → RGB preview for live progress (no VAE): a fixed linear map of the four SD1.5
latent channels, the approximation image UIs use for step previews."""
from __future__ import annotations

import numpy as np

from ..errors import RequestError

# Least-squares fit of SD1.5 latents to RGB, as used by common SD front-ends for previews.
_LATENT_RGB = np.array(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ],
    dtype=np.float32,
)


def latent_to_rgb(latent: np.ndarray) -> np.ndarray:
    """(4, h, w) latent → (h, w, 3) uint8 preview at latent resolution."""
    try:
        with np.errstate(over="ignore"):  # beyond float32: inf, shown as white by the clip below
            latent = np.asarray(latent, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise RequestError(f"latent is not an array of numbers ({exc}); pass a (4, h, w) float array") from None
    if latent.ndim != 3 or latent.shape[0] != 4:
        raise RequestError(f"expected a (4, h, w) latent, got shape {latent.shape}")
    rgb = np.einsum("chw,cr->hwr", latent, _LATENT_RGB)
    rgb = np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=-1.0)
    return ((rgb + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
