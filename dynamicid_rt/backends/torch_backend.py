"""The PyTorch reference backend: eager modules of ``dynamicid_rt.models``, CPU or CUDA, fp32 or fp16."""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import torch

from ..contract import ENGINES
from ..models.engines import load_engine_module
from ..models.base import read_model_dims
from ..paths import ModelPaths
from .base import Backend

log = logging.getLogger(__name__)

FP32_INPUTS = frozenset({"timestep", "id_boxes", "id_scale", "id_boost", "id_gating", "id_mix"})
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, paths: ModelPaths, device: str | None = None, precision: str | None = None) -> None:
        super().__init__(read_model_dims(paths), paths.has_imr)
        self.paths = paths
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        precision = precision or ("fp16" if self.device.type == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.device.type == "cpu" and precision == "fp16":
            log.warning("fp16 on CPU is slow and not always supported; fp32 is recommended on CPU")
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self._modules: dict[str, torch.nn.Module] = {}

    def module(self, engine: str) -> torch.nn.Module:
        """The engine's module, loaded on first use (a model folder without IMR still generates)."""
        self.check_engine(engine)
        if engine not in self._modules:
            log.info("loading %s (%s, %s)", engine, self.device, self.precision)
            # The VAE decoder stays fp32 under fp16: SD1.5's VAE overflows in half precision.
            dtype = torch.float32 if engine == "vae_decoder" else self.dtype
            self._modules[engine] = load_engine_module(self.paths, engine, dtype=dtype, device=self.device)
        return self._modules[engine]

    @torch.inference_mode()
    def run(self, engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = ENGINES[engine]
        module = self.module(engine)
        missing = [t.name for t in spec.inputs if t.name not in inputs]
        if missing:
            raise KeyError(f"engine {engine} needs input(s) {', '.join(missing)}")
        args = [self._tensor(t.name, inputs[t.name], module) for t in spec.inputs]
        out = module(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {t.name: o.float().cpu().numpy() for t, o in zip(spec.outputs, outs)}

    @torch.inference_mode()
    def activation_maps(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-identity SAA activation maps (B, N, h, w) in [0, 1] for one UNet call."""
        module = self.module("unet")
        args = [self._tensor(t.name, inputs[t.name], module) for t in ENGINES["unet"].inputs]
        return module.activation_maps(*args).float().cpu().numpy()

    def _tensor(self, name: str, value: np.ndarray, module: torch.nn.Module) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
        # Activations take the module's precision; the small control inputs (timestep, boxes,
        # scales) stay fp32 so box edges and gating constants are exact under fp16.
        if tensor.is_floating_point() and name not in FP32_INPUTS:
            tensor = tensor.to(next(module.parameters()).dtype)
        return tensor

    def describe(self) -> dict[str, str]:
        info = {"backend": self.name, "device": str(self.device), "precision": self.precision, "torch": torch.__version__}
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info

    def close(self) -> None:
        self._modules.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
