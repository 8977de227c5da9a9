"""Backends run the engines of the contract behind one interface (:class:`Backend`).

The registry maps a name to the module and class that implement it, imported only when chosen, so
that the ONNX Runtime path never imports torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from .base import Backend

if TYPE_CHECKING:
    from ..paths import ModelPaths

BACKENDS: dict[str, str] = {
    "torch": "dynamicid_rt.backends.torch_backend:TorchBackend",
    "onnxruntime": "dynamicid_rt.backends.onnxruntime_backend:OnnxRuntimeBackend",
}


def create_backend(
    name: str,
    paths: "ModelPaths",
    device: str | None = None,
    precision: str | None = None,
    engine_dir: Path | None = None,
) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module_name, _, class_name = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"torch": "torch", "onnxruntime": "cpu"}[name]
        raise ImportError(
            f"the {name} backend needs packages that are not installed ({exc.name}); "
            f"install them with: pip install 'dynamicid-rt[{extra}]'"
        ) from exc
    cls = getattr(module, class_name)
    if name == "torch":
        return cls(paths, device=device, precision=precision)
    return cls(paths, device=device, precision=precision, engine_dir=engine_dir)


__all__ = ["Backend", "BACKENDS", "create_backend"]
