"""dynamicid-rt: a fast local runtime for DynamicID (arXiv 2503.06505).

The public API: the names below, which the CLI and the desktop app use too. They are imported
lazily so that ``import dynamicid_rt`` stays light (no torch, no onnxruntime).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .errors import (
    BackendError,
    Cancelled,
    CheckpointError,
    DynamicIDError,
    ImageError,
    ModelFolderError,
    NoFaceError,
    NumericalError,
    OutputError,
    RequestError,
)

_LAZY = {
    "Pipeline": "dynamicid_rt.pipeline",
    "Request": "dynamicid_rt.request",
    "Result": "dynamicid_rt.results",
    "ProgressInfo": "dynamicid_rt.results",
    "Person": "dynamicid_rt.request",
    "ModelInfo": "dynamicid_rt.modelfiles.model_hash",
    "Box": "dynamicid_rt.request",
    "MAX_IDENTITIES": "dynamicid_rt.request",
    "SIZE_RANGE": "dynamicid_rt.request",
    "default_boxes": "dynamicid_rt.request",
    "Identity": "dynamicid_rt.identity.value",
    "IdentityMatch": "dynamicid_rt.results",
    "ModelPaths": "dynamicid_rt.modelfiles.paths",
    "SAMPLERS": "dynamicid_rt.sampling.names",
    "canonical_sampler": "dynamicid_rt.sampling.names",
    "max_sampler_steps": "dynamicid_rt.sampling.schedules",  # the step limit a form offers per sampler
    "AUTO": "dynamicid_rt.backends",
    # User LoRAs (Request.loras): a file and its strength, and the CLI's PATH[:SCALE].
    "LoraRef": "dynamicid_rt.modelfiles.lora",
    "parse_lora_arg": "dynamicid_rt.modelfiles.lora",
    "prompt_loras": "dynamicid_rt.formats.lora_tags",  # <lora:name:scale> tags of a restored prompt
    "lora_short_hash": "dynamicid_rt.formats.lora_tags",
    "check_loras": "dynamicid_rt.modelfiles.lora_fit",  # LoRA files against a model folder, loading nothing
    "BACKENDS": "dynamicid_rt.backends",
    # Each backend's switches (Pipeline.load(backend_options=...)) and every precision some backend runs.
    "BACKEND_OPTIONS": "dynamicid_rt.backends",
    "precision_choices": "dynamicid_rt.backends",
    "cpu_fastest_path": "dynamicid_rt.backends.probes",  # one line: the fastest CPU path this CPU has
    # A1111-format image parameters (a PNG "parameters" chunk).
    "format_parameters": "dynamicid_rt.formats.pngmeta",
    "parse_parameters": "dynamicid_rt.formats.pngmeta",
    "save_png": "dynamicid_rt.formats.pngmeta",
    "read_parameters": "dynamicid_rt.formats.pngmeta",
    # Output files: checked before the work, written atomically (PNG, JPEG, WebP).
    "check_output_path": "dynamicid_rt.formats.outputs",
    "save_image": "dynamicid_rt.formats.outputs",
    # Photos as the pipeline reads them, and the live preview of a latent.
    "load_photo": "dynamicid_rt.identity.photos",
    "face_thumbnail": "dynamicid_rt.identity.photos",
    "latent_to_rgb": "dynamicid_rt.sampling.preview",
    # Starting from a photo: the size it is fitted to, A1111's "Crop and resize", a mask's boxes.
    "start_size": "dynamicid_rt.sampling.start_image",
    "crop_resize": "dynamicid_rt.sampling.start_image",
    "mask_boxes": "dynamicid_rt.sampling.start_image",
    # How a first run's ONNX export goes (Pipeline.load(build_progress=...)).
    # Real models from the Hugging Face Hub (`dynamicid-rt models pull`).
    "pull_models": "dynamicid_rt.hub.pull",
    "default_models_dir": "dynamicid_rt.hub.pull",
    "BuildStatus": "dynamicid_rt.export.progress",
    "BuildProgress": "dynamicid_rt.export.progress",
}

if TYPE_CHECKING:
    from .backends import AUTO, BACKEND_OPTIONS, BACKENDS, precision_choices
    from .backends.probes import cpu_fastest_path
    from .export.progress import BuildProgress, BuildStatus
    from .formats.lora_tags import lora_short_hash, prompt_loras
    from .formats.outputs import check_output_path, save_image
    from .formats.pngmeta import format_parameters, parse_parameters, read_parameters, save_png
    from .hub.pull import default_models_dir, pull_models
    from .identity.photos import face_thumbnail, load_photo
    from .identity.value import Identity
    from .modelfiles.lora import LoraRef, parse_lora_arg
    from .modelfiles.lora_fit import check_loras
    from .modelfiles.model_hash import ModelInfo
    from .modelfiles.paths import ModelPaths
    from .pipeline import Pipeline
    from .request import MAX_IDENTITIES, SIZE_RANGE, Box, Person, Request, default_boxes
    from .results import IdentityMatch, ProgressInfo, Result
    from .sampling.names import SAMPLERS, canonical_sampler
    from .sampling.preview import latent_to_rgb
    from .sampling.schedules import max_sampler_steps
    from .sampling.start_image import crop_resize, mask_boxes, start_size


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dynamicid_rt' has no attribute {name!r}")


__all__ = list(_LAZY) + [
    "__version__", "BackendError", "Cancelled", "CheckpointError", "DynamicIDError", "ImageError", "ModelFolderError",
    "NoFaceError", "NumericalError", "OutputError", "RequestError",
]
