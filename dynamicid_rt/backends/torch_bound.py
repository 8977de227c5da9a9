"""The UNet step bound to one generation's constant inputs (``TorchBackend.bind("unet", ...)``).

Within one ``generate`` the text context, identity tokens, boxes, scales, gating and mixing stay
fixed; only the latents, the timestep and the boost change. :class:`BoundUNet` uploads the constant
inputs once, builds the shared SAA inputs once (region masks per level, each layer's to_k_ip/to_v_ip
projections of the tokens: :meth:`SAAUNet.prepare`) and then runs only the UNet per step, optionally
replayed from a CUDA graph captured on the first step (the shapes are fixed within a generation).
Nothing is stored on the attention processors: the prepared bundle travels with each call.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

import torch

from ..contract import UNET
from ..models.saa import SAAInputs, SAAUNet

log = logging.getLogger(__name__)

STEP_INPUTS = UNET.step_inputs  # deprecated alias: the contract's EngineSpec.step_inputs


class BoundUNet:
    """``__call__({"sample", "timestep", "id_boost"}) -> {"noise_pred"}`` with the other inputs bound."""

    def __init__(self, module: SAAUNet, constants: Mapping[str, torch.Tensor], cuda_graphs: bool = False) -> None:
        self.module = module
        self.context = constants["encoder_hidden_states"]
        self.constants = constants
        self.cuda_graphs = cuda_graphs and constants["encoder_hidden_states"].device.type == "cuda"
        self._prepared: tuple[tuple[int, int], SAAInputs] | None = None
        self._graph: _CapturedStep | None = None

    def _saa_for(self, latent_hw: tuple[int, int], boost: torch.Tensor) -> SAAInputs:
        """The prepared SAA inputs for this latent size (built on the first step), with this step's boost."""
        if self._prepared is None or self._prepared[0] != latent_hw:
            c = self.constants
            saa = self.module.prepare(
                latent_hw, c["id_tokens"], c["id_boxes"], c["id_scale"], boost, c["id_gating"], c["id_mix"],
                project_tokens=True,
            )
            self._prepared = (latent_hw, saa)
        return dataclasses.replace(self._prepared[1], boost=boost)

    @torch.inference_mode()
    def step(self, sample: torch.Tensor, timestep: torch.Tensor, boost: torch.Tensor) -> torch.Tensor:
        """The noise prediction on device tensors (the engine's output, not yet copied to the host)."""
        hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        if not self.cuda_graphs:
            return self.module.denoise(sample, timestep, self.context, self._saa_for(hw, boost))
        if self._graph is None or not self._graph.fits(sample, timestep):
            self._graph = _CapturedStep(self, sample, timestep, boost)
        return self._graph.replay(sample, timestep, boost)


class _CapturedStep:
    """One UNet step captured as a CUDA graph: static input buffers, replayed after a copy-in.

    Replays cut the launch overhead of the many small kernels of a UNet step; the shapes must stay
    those of the capture (checked by :meth:`fits`; a new shape is captured afresh). Capture and
    replay run with the tensors' device current and capture on a side stream made on that device:
    left to itself, ``torch.cuda.graph`` captures on a stream of the current device, which on a
    ``cuda:1`` model records nothing (and every replay then leaves the first step's output)."""

    def __init__(self, bound: BoundUNet, sample: torch.Tensor, timestep: torch.Tensor, boost: torch.Tensor) -> None:
        self.sample, self.timestep, self.boost = sample.clone(), timestep.clone(), boost.clone()
        hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        saa = bound._saa_for(hw, self.boost)  # the masks and projections are built outside the capture

        def run() -> torch.Tensor:
            return bound.module.denoise(self.sample, self.timestep, bound.context, saa)

        self.device = sample.device
        with torch.cuda.device(self.device):
            # Warm-up on a side stream (cuDNN/attention kernel choice, allocator), as torch's docs ask.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    run()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=side):
                self.out = run()
        log.info("captured the UNet step as a CUDA graph (sample %s)", tuple(sample.shape))

    def fits(self, sample: torch.Tensor, timestep: torch.Tensor) -> bool:
        return sample.shape == self.sample.shape and timestep.shape == self.timestep.shape and sample.dtype == self.sample.dtype

    def replay(self, sample: torch.Tensor, timestep: torch.Tensor, boost: torch.Tensor) -> torch.Tensor:
        self.sample.copy_(sample)
        self.timestep.copy_(timestep)
        self.boost.copy_(boost)
        with torch.cuda.device(self.device):  # replay launches on the current device's stream
            self.graph.replay()
        return self.out
