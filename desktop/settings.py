"""Persistent app settings (QSettings): model folder, backend, output folder, whether each result
is saved, the folders photos and LoRAs were last chosen from, the generation settings last used
(size, sampler, steps, guidance and LoRAs, saved and restored together so that they fit each
other) and the window's geometry."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, QStandardPaths

from dynamicid_rt import AUTO, BACKENDS as _REGISTRY, SAMPLERS, SIZE_RANGE  # the registry only: imports no backend

from .worker import ModelSpec

BACKENDS = (AUTO, *_REGISTRY)
DEFAULT_BACKEND = AUTO


def pictures_dir() -> Path:
    return Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation) or str(Path.home()))


def default_output_dir() -> Path:
    return pictures_dir() / "dynamicid-rt"


def is_hidden(folder: str | Path) -> bool:
    """A folder a file dialog should not open in: in a hidden (dot) folder, such as a cache."""
    return any(part.startswith(".") and part not in (".", "..") for part in Path(folder).parts)


@dataclass
class AppSettings:
    """What the app remembers between sessions. ``model_dir`` None opens the tiny demo bundle."""

    model_dir: Path | None
    backend: str
    output_dir: Path
    photo_dir: str = ""  # "": the samples of the models in use
    size: tuple[int, int] = (512, 512)  # width, height
    steps: int = 50
    sampler: str = "default"
    guidance: float = 5.0
    loras: list[tuple[Path, float]] = field(default_factory=list)
    lora_dir: str = ""
    save_each: bool = True  # every result is written to the output folder as it is made
    geometry: QByteArray | None = None  # the window's (QWidget.saveGeometry)

    @classmethod
    def load(cls, store: QSettings) -> "AppSettings":
        model_dir = store.value("models/folder", "", str)
        backend = store.value("models/backend", DEFAULT_BACKEND, str)
        output_dir = store.value("output/folder", "", str)
        lo, hi = SIZE_RANGE
        # A hand-edited or older file may hold anything: out-of-range values fall back to the defaults.
        width, height = (_int(store, f"generation/{name}", 512, lo, hi) for name in ("width", "height"))
        sampler = store.value("generation/sampler", "default", str)
        geometry = store.value("window/geometry")
        return cls(
            model_dir=Path(model_dir) if model_dir else None,
            backend=backend if backend in BACKENDS else DEFAULT_BACKEND,
            output_dir=Path(output_dir) if output_dir else default_output_dir(),
            photo_dir=store.value("photos/folder", "", str),
            size=(width // 64 * 64, height // 64 * 64),
            steps=_int(store, "generation/steps", 50, 1, 1000),
            sampler=sampler if sampler in ("default", *SAMPLERS) else "default",
            guidance=_float(store, "generation/guidance", 5.0, 0.0, 30.0),
            loras=_loras(store.value("generation/loras", "[]", str)),
            lora_dir=store.value("loras/folder", "", str),
            save_each=store.value("output/save_each", True, bool),
            geometry=geometry if isinstance(geometry, QByteArray) else None,
        )

    def save(self, store: QSettings) -> None:
        store.setValue("models/folder", str(self.model_dir) if self.model_dir else "")
        store.setValue("models/backend", self.backend)
        store.setValue("output/folder", str(self.output_dir))
        store.setValue("photos/folder", self.photo_dir)
        store.setValue("generation/width", self.size[0])
        store.setValue("generation/height", self.size[1])
        store.setValue("generation/steps", self.steps)
        store.setValue("generation/sampler", self.sampler)
        store.setValue("generation/guidance", float(self.guidance))
        store.setValue("generation/loras", json.dumps([[str(path), float(strength)] for path, strength in self.loras]))
        store.setValue("loras/folder", self.lora_dir)
        store.setValue("output/save_each", bool(self.save_each))
        if self.geometry is not None:
            store.setValue("window/geometry", self.geometry)
        store.sync()

    def model_spec(self) -> ModelSpec:
        return ModelSpec(self.model_dir, self.backend)


def _int(store: QSettings, key: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(store.value(key, default))
    except (TypeError, ValueError):
        return default
    return value if lo <= value <= hi else default


def _float(store: QSettings, key: str, default: float, lo: float, hi: float) -> float:
    try:
        value = float(store.value(key, default))
    except (TypeError, ValueError):
        return default
    return value if lo <= value <= hi else default


def _loras(text: str) -> list[tuple[Path, float]]:
    """The LoRA list as saved: [[path, strength], ...]; anything else is no list."""
    try:
        items = json.loads(text)
        return [(Path(str(path)), float(strength)) for path, strength in items]
    except (TypeError, ValueError):
        return []
