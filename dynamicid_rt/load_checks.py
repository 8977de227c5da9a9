"""``Pipeline.load``'s arguments checked before anything is opened: each wrong type or value is the
project's own error naming the argument (``device=5``, ``models=5``, an ONNX cache that is
``/dev/null``), never a TypeError from deep inside a backend."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .errors import BackendError, ModelFolderError, OutputError


def check_load_arguments(models: object, backend: object, device: object, precision: object, onnx_cache: object,
                         backend_options: object, cache_dir: object) -> None:
    from .modelfiles.paths import ModelPaths

    if models is not None and not isinstance(models, (str, os.PathLike, ModelPaths)):
        raise ModelFolderError(f"models={models!r}: give a model folder (str or Path), a ModelPaths, or None for the demo bundle")
    for name, value in (("backend", backend), ("device", device), ("precision", precision)):
        if value is not None and not isinstance(value, str):
            raise BackendError(f"{name}={value!r}: must be text such as 'auto', 'cpu' or 'fp16' (or None for the default)")
    if backend is None:
        raise BackendError("backend=None: give a backend name, or 'auto'")
    if backend_options is not None and not isinstance(backend_options, Mapping):
        raise BackendError(f"backend_options={backend_options!r}: must be a dict of option names, e.g. {{'cuda_graphs': True}}")
    for name, value in (("onnx_cache", onnx_cache), ("cache_dir", cache_dir)):
        if value is None:
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise OutputError(f"{name}={value!r}: must be a folder path (str or Path)")
        folder = Path(value).expanduser()
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{name} {folder} exists and is not a folder; give a folder for the cache")
