"""User LoRAs merged into the torch modules of the ``unet`` and ``text_encoder`` engines, in place.

The deltas come from :func:`dynamicid_rt.modelfiles.lora.weight_deltas` (fp32, order-independent); each
touched weight's original is kept on the CPU so that switching to another LoRA set restores it
exactly before merging the next, and the same set is not merged twice.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..modelfiles.lora import LoraFile, cache_key, weight_deltas

log = logging.getLogger(__name__)



def lora_root(module: nn.Module, engine: str) -> nn.Module:
    """The diffusers/transformers model inside an engine module, whose module paths LoRAs name."""
    return getattr(module, "unet" if engine == "unet" else "model")


def weight_shapes(root: nn.Module) -> dict[str, tuple[int, ...]]:
    """Module path -> weight shape of every linear and convolution layer (what LoRAs can target)."""
    return {name: tuple(m.weight.shape) for name, m in root.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


class LoraMerger:
    """The LoRA set merged into one engine module; :meth:`apply` switches it."""

    def __init__(self, module: nn.Module, engine: str) -> None:
        self.engine = engine
        self.root = lora_root(module, engine)
        self.shapes = weight_shapes(self.root)
        self.key: list[list] = []
        self._originals: dict[str, torch.Tensor] = {}

    def check(self, loras: Sequence[tuple[LoraFile, float]]) -> dict[str, np.ndarray]:
        """The summed deltas of ``loras`` for this engine; raises for LoRAs that do not fit."""
        return weight_deltas(loras, self.engine, self.shapes)

    def is_merged(self, loras: Sequence[tuple[LoraFile, float]]) -> bool:
        return cache_key(loras, self.engine) == self.key

    @torch.no_grad()
    def apply(self, loras: Sequence[tuple[LoraFile, float]], deltas: dict[str, np.ndarray] | None = None) -> bool:
        """Merge exactly ``loras`` (undoing the previous set); returns False when already merged.
        ``deltas``: their :meth:`check`, when the caller computed it already."""
        if self.is_merged(loras):
            return False
        key = cache_key(loras, self.engine)
        deltas = self.check(loras) if deltas is None else deltas  # raises before any weight changes
        modules = dict(self.root.named_modules())
        for name, original in self._originals.items():
            modules[name].weight.copy_(original)
        self._originals.clear()
        for name, delta in deltas.items():
            weight = modules[name].weight
            self._originals[name] = weight.detach().to("cpu", copy=True)
            merged = weight.float() + torch.from_numpy(delta).to(weight.device)  # in fp32, then cast
            weight.copy_(merged.to(weight.dtype))
        self.key = key
        log.info("%s: %d LoRA(s) merged into %d layers", self.engine, len(key), len(deltas))
        return True
