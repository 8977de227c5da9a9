"""LoRAs checked against the model before anything is loaded or exported: every layer's target and
shape, from the safetensors headers of the base model's files (no weight is read)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .lora import LoraFile, resolve
from .lora_names import model_layer_shapes

if TYPE_CHECKING:
    from .paths import ModelPaths

_shapes: dict[tuple, dict[str, dict[str, tuple[int, ...]]]] = {}


def _layer_shapes(base: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """The base's LoRA-targetable layers per part, remembered by the files' change times."""
    files = [base] if base.is_file() else [base / "unet" / "diffusion_pytorch_model.safetensors",
                                             base / "diffusion_pytorch_model.safetensors",
                                             base / "text_encoder" / "model.safetensors"]
    key = (str(base), *((f.stat().st_mtime_ns, f.stat().st_ctime_ns) if f.is_file() else None for f in files))
    if key not in _shapes:
        _shapes[key] = model_layer_shapes(base)
    return _shapes[key]


def check_loras_fit(paths: "ModelPaths", loras: Iterable[tuple[LoraFile, float]]) -> None:
    """Raise CheckpointError for the first LoRA that does not fit this model (a layer of another
    shape, or no layer that matches); parts whose weights are not in ``.safetensors`` headers are
    checked when they load."""
    shapes = _layer_shapes(paths.base)
    for lora, _ in loras:
        for part, modules in shapes.items():
            resolve(lora, {part: modules}, warn=False)  # the load warns once


def check_loras(models: "str | Path | ModelPaths", loras: object) -> None:
    """Read each LoRA (``Request.loras``' forms) and check it against the model folder ``models``
    (a folder or ModelPaths), loading no weights and exporting nothing: a front end's check before
    ``Pipeline.load``. Raises the first problem as a one-line RequestError or CheckpointError."""
    from .lora import check_lora_refs, load_loras
    from .paths import ModelPaths

    paths = models if isinstance(models, ModelPaths) else ModelPaths.from_folder(models)
    check_loras_fit(paths, load_loras(check_lora_refs(loras)))
