"""The model: PyTorch modules that implement the engine contract (SPEC §4, §5), the model's
dimensions read from its configs (``base``), and whether a model folder's files fit it
(``preflight``, ``checkpoint_report``, ``inspect``).

Imports the core modules, ``files`` and ``modelfiles``. Submodules import torch; this package's namespace resolves them lazily so that light helpers such as
``dynamicid_rt.models.base.read_model_dims`` stay importable without torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engines import load_engine_module, load_unet
    from .imr import IMREditor, load_imr
    from .projector import FaceProjector, load_face_projector
    from .saa import SAAUNet

_LAZY = {
    "load_unet": ".engines",
    "load_engine_module": ".engines",
    "load_face_projector": ".projector",
    "FaceProjector": ".projector",
    "load_imr": ".imr",
    "IMREditor": ".imr",
    "SAAUNet": ".saa",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
