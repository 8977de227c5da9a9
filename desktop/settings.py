"""Persistent app settings (QSettings): model folder, backend, output folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

from dynamicid_rt import AUTO, BACKENDS as _REGISTRY  # the registry only: imports no backend

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

    @classmethod
    def load(cls, store: QSettings) -> "AppSettings":
        model_dir = store.value("models/folder", "", str)
        backend = store.value("models/backend", DEFAULT_BACKEND, str)
        output_dir = store.value("output/folder", "", str)
        return cls(
            model_dir=Path(model_dir) if model_dir else None,
            backend=backend if backend in BACKENDS else DEFAULT_BACKEND,
            output_dir=Path(output_dir) if output_dir else default_output_dir(),
        )

    def save(self, store: QSettings) -> None:
        store.setValue("models/folder", str(self.model_dir) if self.model_dir else "")
        store.setValue("models/backend", self.backend)
        store.setValue("output/folder", str(self.output_dir))
        store.sync()

    def model_spec(self) -> ModelSpec:
        return ModelSpec(self.model_dir, self.backend)
