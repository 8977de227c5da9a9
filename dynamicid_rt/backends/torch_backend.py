"""The PyTorch reference backend: eager modules of ``dynamicid_rt.models``, CPU or CUDA, fp32, fp16 or bf16."""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import ContextManager, Mapping, Sequence

import numpy as np
import torch

from ..contract import ENGINES, LORA_ENGINES, EngineSpec
from ..modelfiles.lora import LoraFile, LoraRef, load_loras
from ..modelfiles.lora_fit import check_loras_fit
from ..modelfiles.paths import ModelPaths
from ..models.base import read_model_dims
from ..models.engines import load_engine_module
from ..models.lora_merge import LoraMerger
from .base import Backend, EngineCall
from .torch_bound import BoundUNet

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # per precision the registry declares
_LOAD_LOCK = threading.RLock()


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, paths: ModelPaths, device: str = "cpu", precision: str = "fp32", cuda_graphs: bool = False) -> None:
        """``device`` and ``precision`` as the registry resolved them (``create_backend``), taken as
        given; ``cuda_graphs``: replay the bound UNet step from a CUDA graph (CUDA only; see :meth:`bind`)."""
        super().__init__(read_model_dims(paths), paths.has_imr)
        self.paths = paths
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.cuda_graphs = cuda_graphs
        if cuda_graphs and self.device.type != "cuda":
            log.warning("cuda_graphs needs a CUDA device; running eagerly on %s", self.device)
        self._modules: dict[str, torch.nn.Module] = {}
        self._loras: list[tuple[LoraFile, float]] = []
        self._mergers: dict[str, LoraMerger] = {}

    def module(self, engine: str) -> torch.nn.Module:
        """The engine's module, loaded on first use (a model folder without IMR still generates)."""
        self.check_engine(engine)
        if engine in self._modules:
            return self._modules[engine]
        # One loader at a time in the process: transformers' and diffusers' lazy imports are not
        # thread-safe (two threads' first calls fail with "cannot import name ..."). Loaded outside
        # inference mode even when first used inside run(): LoRA merges update the weights in place.
        with _LOAD_LOCK, torch.inference_mode(False):
            if engine in self._modules:
                return self._modules[engine]
            log.info("loading %s (%s, %s)", engine, self.device, self.precision)
            module = load_engine_module(self.paths, engine, dtype=self.engine_dtype(engine), device=self.device)
            # Image-sized (convolution-heavy) engines run channels_last on CUDA: tensor-core convolutions without transposes.
            if ENGINES[engine].sized and self.device.type == "cuda":
                module = module.to(memory_format=torch.channels_last)
            if engine in LORA_ENGINES:
                self._mergers[engine] = LoraMerger(module, engine)
                self._mergers[engine].apply(self._loras)
            self._modules[engine] = module
        return self._modules[engine]

    def set_loras(self, loras: Sequence[LoraRef]) -> None:
        """Merge the LoRAs in place (fp32 deltas, cast to the module's precision); the previous set's
        weights are restored first. Both engines are checked before either changes."""
        files = load_loras(loras)
        check_loras_fit(self.paths, files)  # before any engine loads
        for engine in LORA_ENGINES:
            self.module(engine)  # loading creates the engine's merger
        changed = [self._mergers[engine] for engine in LORA_ENGINES if not self._mergers[engine].is_merged(files)]
        deltas = [merger.check(files) for merger in changed]  # every engine checked before either changes
        with _LOAD_LOCK:
            for merger, merger_deltas in zip(changed, deltas):
                merger.apply(files, merger_deltas)
            self._loras = files

    def engine_dtype(self, engine: str) -> torch.dtype:
        if self.precision == "bf16":
            # Only the heavy engines (run every step / per image) drop precision; the identity and text
            # engines run once per request and stay fp32, which keeps identity tokens exact.
            return self.dtype if ENGINES[engine].bf16 else torch.float32
        # The VAE decoder stays fp32 under fp16: SD1.5's VAE overflows in half precision (bf16 has fp32's range).
        return torch.float32 if ENGINES[engine].fp32_in_fp16 else self.dtype

    def on_device(self) -> ContextManager[object]:
        """The backend's GPU made current on the calling thread for the duration (a no-op on the
        CPU): CUDA's current device is per thread, and the calls that take no device (streams,
        graph replay, empty_cache) act on it."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    @torch.inference_mode()
    def run(self, engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.check_inputs(engine, inputs)
        module = self.module(engine)
        with self.on_device():
            args = [self._tensor(spec, t.name, inputs[t.name], module) for t in spec.inputs]
            return _outputs(spec, module(*args))

    @torch.inference_mode()
    def run_fp32(self, engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``run`` with an fp32 copy of the engine when it runs in reduced precision (loaded on first use)."""
        if self.engine_dtype(engine) == torch.float32:
            return self.run(engine, inputs)
        key = f"{engine}:fp32"
        if key not in self._modules:
            log.info("loading an fp32 %s to retry in full precision", engine)
            self._modules[key] = load_engine_module(self.paths, engine, dtype=torch.float32, device=self.device)
        spec, module = self.check_inputs(engine, inputs), self._modules[key]
        with self.on_device():
            return _outputs(spec, module(*(self._tensor(spec, n, inputs[n], module) for n in spec.input_names)))

    @torch.inference_mode()
    def bind(self, engine: str, constants: Mapping[str, np.ndarray]) -> EngineCall:
        """A callable with ``constants`` uploaded to the device once. For the UNet bound to every
        input but the per-step ones (sample, timestep, id_boost), the region masks and each layer's
        identity-token projections are also built once (:class:`BoundUNet`), and with
        ``cuda_graphs`` the step is replayed from a CUDA graph. Results equal :meth:`run`'s."""
        spec = self.check_inputs(engine, constants, complete=False)
        module = self.module(engine)
        with self.on_device():
            fixed = {name: self._tensor(spec, name, value, module) for name, value in constants.items()}
        if spec.step_inputs and set(fixed) == set(spec.input_names) - set(spec.step_inputs):
            bound = BoundUNet(module, fixed, cuda_graphs=self.cuda_graphs)

            @torch.inference_mode()
            def unet_step(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
                self.check_inputs(engine, {*fixed, *inputs})
                with self.on_device():
                    args = [self._tensor(spec, name, inputs[name], module) for name in spec.step_inputs]
                    return {"noise_pred": bound.step(*args).float().cpu().numpy()}

            return unet_step

        @torch.inference_mode()
        def call(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            self.check_inputs(engine, {*fixed, *inputs})
            with self.on_device():
                args = [fixed[n] if n in fixed else self._tensor(spec, n, inputs[n], module) for n in spec.input_names]
                return _outputs(spec, module(*args))

        return call

    @torch.inference_mode()
    def activation_maps(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-identity SAA activation maps (B, N, h, w) in [0, 1] for one UNet call."""
        module = self.module("unet")
        spec = self.check_inputs("unet", inputs)
        with self.on_device():
            args = [self._tensor(spec, t.name, inputs[t.name], module) for t in spec.inputs]
            return module.activation_maps(*args).float().cpu().numpy()

    def _tensor(self, spec: EngineSpec, name: str, value: np.ndarray, module: torch.nn.Module) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
        # Activations take the module's precision; the small control inputs (timestep, boxes,
        # scales) stay fp32 so box edges and gating constants are exact under fp16.
        if tensor.is_floating_point() and name not in spec.control_inputs:
            tensor = tensor.to(next(module.parameters()).dtype)
        if self.device.type == "cuda" and name in spec.image_inputs:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def describe(self) -> dict[str, str]:
        info = {"backend": self.name, "device": str(self.device), "precision": self.precision, "torch": torch.__version__}
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info

    def close(self) -> None:
        self._modules.clear()
        if self.device.type == "cuda":
            with self.on_device():
                torch.cuda.empty_cache()


def _outputs(spec: EngineSpec, out: torch.Tensor | tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    """A module's outputs as fp32 host arrays named as in the contract."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return {t.name: o.float().cpu().numpy() for t, o in zip(spec.outputs, outs)}
