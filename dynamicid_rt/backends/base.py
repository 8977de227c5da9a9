"""The backend seam: every backend runs the engines of the contract (SPEC §4) on numpy arrays."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, Collection, Mapping, Sequence

import numpy as np

from ..contract import ENGINES, EngineSpec, ModelDims, engine_spec
from ..errors import ModelFolderError

if TYPE_CHECKING:
    from ..modelfiles.lora import LoraRef

EngineCall = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class Backend(ABC):
    """Runs contract engines by name. Inputs and outputs are numpy arrays named as in SPEC §4."""

    name: str = "abstract"

    def __init__(self, dims: ModelDims, has_imr: bool) -> None:
        self.dims = dims
        self.has_imr = has_imr

    @abstractmethod
    def run(self, engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one engine; returns every output of its contract."""

    def bind(self, engine: str, constants: Mapping[str, np.ndarray]) -> EngineCall:
        """A callable for repeated calls whose other inputs stay fixed (the UNet inside the sampler
        loop). Backends that keep tensors on a device override this to upload ``constants`` once."""
        fixed = dict(constants)
        return lambda inputs: self.run(engine, {**fixed, **inputs})

    def run_fp32(self, engine: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one engine in fp32 whatever the backend's precision: the retry of a VAE decode that
        overflowed. Backends whose engines may run in reduced precision override this."""
        return self.run(engine, inputs)

    def set_loras(self, loras: Sequence["LoraRef"]) -> None:
        """Merge exactly these user LoRAs into the unet and text_encoder weights (the previous set is
        undone; the same set again changes nothing). Backends that can override this."""
        if loras:
            from ..errors import BackendError

            raise BackendError(f"the {self.name} backend cannot load user LoRAs yet; use the torch, onnxruntime or openvino backend")

    def describe(self) -> dict[str, str]:
        """Human-readable facts for logs and ``doctor``: device, precision, providers."""
        return {"backend": self.name}

    def generation_done(self) -> None:
        """Called after each generation: a backend may keep what it learned (TensorRT-RTX stores
        the kernels it compiled just in time)."""

    def prepare(self, engines: Collection[str]) -> None:
        """Start loading ``engines`` in the background, because they run soon (the UNet while the
        text encoder runs); their first run waits for it. Backends whose loading overlaps other
        work override this; an error surfaces at that run, not here."""

    def release(self, engines: Collection[str]) -> None:
        """Free what ``engines`` hold beyond their cache entries (compiled plans), because they will
        not run for a while; their next run builds them again from the cache. Backends whose plans
        are costly to hold override this."""

    def close(self) -> None:
        """Release device memory and sessions."""

    @staticmethod
    def check_engine(engine: str) -> EngineSpec:
        """The engine's declaration; an unknown name is a KeyError naming the known ones."""
        return engine_spec(engine)

    @staticmethod
    def check_inputs(engine: str, given: Collection[str], complete: bool = True) -> EngineSpec:
        """The engine's declaration, once the input names ``given`` are checked against it: each must
        be an input of the engine and, when ``complete`` (a call, not the constants of ``bind``),
        every input must be there. Raises a one-line KeyError saying which are extra or missing."""
        spec = Backend.check_engine(engine)
        extra = sorted(set(given) - set(spec.input_names))
        if extra:
            raise KeyError(f"{engine} has no input(s) {', '.join(extra)}; its inputs are {', '.join(spec.input_names)}")
        missing = [name for name in spec.input_names if name not in given] if complete else []
        if missing:
            raise KeyError(f"{engine} needs input(s) {', '.join(missing)}; got {', '.join(given) or 'none'}")
        return spec

    @staticmethod
    def unavailable(engine: str) -> ModelFolderError:
        """The error for an optional engine this model folder lacks the weights of."""
        return ModelFolderError(f"engine {engine!r} is not available: the model folder lacks {ENGINES[engine].needs}")
