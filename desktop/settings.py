"""Persistent app settings (QSettings): model folder, backend, output folder, the folder photos were
last chosen from, and the image size and step count last used."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

from dynamicid_rt import AUTO, BACKENDS as _REGISTRY, SIZE_RANGE  # the registry only: imports no backend

from .worker import ModelSpec

BACKENDS = (AUTO, *_REGISTRY)
DEFAULT_BACKEND = AUTO


def default_output_dir() -> Path:
    pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation) or str(Path.home())
    return Path(pictures) / "dynamicid-rt"


@dataclass
class AppSettings:
    """What the app remembers between sessions. ``model_dir`` None opens the tiny demo bundle."""

    model_dir: Path | None
    backend: str
    output_dir: Path
    photo_dir: str = ""  # "": the samples of the models in use
    size: tuple[int, int] = (512, 512)  # width, height
    steps: int = 50

    @classmethod
    def load(cls, store: QSettings) -> "AppSettings":
        model_dir = store.value("models/folder", "", str)
        backend = store.value("models/backend", DEFAULT_BACKEND, str)
        output_dir = store.value("output/folder", "", str)
        lo, hi = SIZE_RANGE
        # A hand-edited or older file may hold anything: out-of-range values fall back to the defaults.
        width, height = (_int(store, f"generation/{name}", 512, lo, hi) for name in ("width", "height"))
        return cls(
            model_dir=Path(model_dir) if model_dir else None,
            backend=backend if backend in BACKENDS else DEFAULT_BACKEND,
            output_dir=Path(output_dir) if output_dir else default_output_dir(),
            photo_dir=store.value("photos/folder", "", str),
            size=(width // 64 * 64, height // 64 * 64),
            steps=_int(store, "generation/steps", 50, 1, 1000),
        )

    def save(self, store: QSettings) -> None:
        store.setValue("models/folder", str(self.model_dir) if self.model_dir else "")
        store.setValue("models/backend", self.backend)
        store.setValue("output/folder", str(self.output_dir))
        store.setValue("photos/folder", self.photo_dir)
        store.setValue("generation/width", self.size[0])
        store.setValue("generation/height", self.size[1])
        store.setValue("generation/steps", self.steps)
        store.sync()

    def model_spec(self) -> ModelSpec:
        return ModelSpec(self.model_dir, self.backend)


def _int(store: QSettings, key: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(store.value(key, default))
    except (TypeError, ValueError):
        return default
    return value if lo <= value <= hi else default
