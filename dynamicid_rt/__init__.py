"""dynamicid-rt: a fast local runtime for DynamicID (arXiv 2503.06505).

The public API is imported lazily so that ``import dynamicid_rt`` stays light (no torch).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "Pipeline": "dynamicid_rt.pipeline",
    "Request": "dynamicid_rt.request",
    "Result": "dynamicid_rt.request",
    "ProgressInfo": "dynamicid_rt.request",
    "Identity": "dynamicid_rt.identity",
    "ModelPaths": "dynamicid_rt.paths",
}

if TYPE_CHECKING:
    from .identity import Identity
    from .paths import ModelPaths
    from .pipeline import Pipeline
    from .request import ProgressInfo, Request, Result


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dynamicid_rt' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
