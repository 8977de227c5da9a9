"""The session's images: a list model (one entry per image, with its parameters, seed and each
person's likeness) and its panel (thumbnails, the selected image's seed and parameters, Save,
Save as, Reuse seed). Every action acts on the selected image."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListView, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from dynamicid_rt import format_parameters, save_png

from .gallery_delegate import CELL, GalleryDelegate
from .person_display import array_to_qimage
from .views import RANKING, SCORE_HELP

if TYPE_CHECKING:
    from PIL import Image

    from dynamicid_rt import IdentityMatch, Result

ENTRY_ROLE = Qt.ItemDataRole.UserRole + 1
THUMB_PX = 128  # the thumbnail kept per image; the gallery draws it at its cell's size


@dataclass
class GalleryEntry:
    """One image of this session, with what its PNG and its badges need."""

    image: "Image.Image"
    parameters: str  # the PNG "parameters" text
    seed: int
    names: list[str]  # the people, in request order
    colors: list[tuple[int, int, int]]  # their box colours, in request order
    matches: list["IdentityMatch"] | None = None  # each person's likeness (None: not measured)
    activation_map: np.ndarray | None = None  # (N, h, w) in [0, 1]
    saved: Path | None = None


def entries_of(result: "Result", colors: list[tuple[int, int, int]]) -> list[GalleryEntry]:
    names = [person.name for person in result.request.identities]
    scores = result.identity_scores or [None] * len(result.images)
    maps = result.activation_maps or [None] * len(result.images)
    return [
        GalleryEntry(image, format_parameters(result, i), result.seeds[i], names, list(colors), scores[i], maps[i])
        for i, image in enumerate(result.images)
    ]


def thumbnail(entry: GalleryEntry, size: int = THUMB_PX) -> QPixmap:
    """The image fitted in a square (the gallery paints each person's badge beside it)."""
    rgb = np.asarray(entry.image.convert("RGB"))
    return QPixmap.fromImage(array_to_qimage(rgb)).scaled(
        size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )


class GalleryModel(QAbstractListModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._entries: list[GalleryEntry] = []
        self._thumbs: list[QPixmap] = []

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._entries)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._entries):
            return None
        entry = self._entries[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return f"seed {entry.seed}"
        if role == Qt.ItemDataRole.DecorationRole:
            return self._thumbs[index.row()]
        if role == Qt.ItemDataRole.ToolTipRole:
            likeness = [m.describe() for m in entry.matches or []]
            return "\n".join([f"seed {entry.seed}", *likeness, *([SCORE_HELP] if likeness else []), "", entry.parameters])
        if role == ENTRY_ROLE:
            return entry
        return None

    def add(self, entries: list[GalleryEntry]) -> int:
        """Append entries; returns the row of the first."""
        first = len(self._entries)
        self.beginInsertRows(QModelIndex(), first, first + len(entries) - 1)
        self._entries += entries
        self._thumbs += [thumbnail(e) for e in entries]
        self.endInsertRows()
        return first

    def entry(self, row: int) -> GalleryEntry | None:
        return self._entries[row] if 0 <= row < len(self._entries) else None

    def entries(self) -> list[GalleryEntry]:
        return list(self._entries)


class GalleryPanel(QWidget):
    """Thumbnails beside the selected image's details and actions."""

    selected = Signal(object)  # GalleryEntry or None
    reuseSeed = Signal(int)
    message = Signal(str)  # for the status bar
    problem = Signal(str)  # for the window's error line

    def __init__(self, model: GalleryModel, output_dir: Path, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.output_dir = output_dir
        self.view = QListView()
        self.view.setModel(model)
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setFlow(QListView.Flow.LeftToRight)
        self.view.setWrapping(True)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setItemDelegate(GalleryDelegate(ENTRY_ROLE, self.view))
        self.view.setGridSize(CELL)
        self.view.setUniformItemSizes(True)
        self.view.setMinimumHeight(2 * CELL.height() + 6)  # two full rows: six results at the default size
        self.header = QLabel("<b>Results</b> (a best-of run: best first)")
        self.header.setToolTip(f"{RANKING}\n\n{SCORE_HELP}")
        self.seed_label = QLabel("seed: –")
        self.seed_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.params_view = QPlainTextEdit()
        self.params_view.setReadOnly(True)
        self.save_button = QPushButton("Save PNG")
        self.save_button.setToolTip("Save the selected image with its settings in the output folder (Ctrl+S)")
        self.save_as_button = QPushButton("Save as…")
        self.reuse_button = QPushButton("Reuse seed")
        self.reuse_button.setToolTip("Put the selected image's seed in the form (random off)")
        self.open_folder_button = QPushButton("Open output folder")

        self.params_view.setFixedHeight(48)
        actions = QHBoxLayout()
        actions.addWidget(self.seed_label, 1)
        for b in (self.save_button, self.save_as_button, self.reuse_button, self.open_folder_button):
            actions.addWidget(b)
        # Thumbnails use the panel's whole width (several per row); the selection's details below.
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        layout.addWidget(self.header)
        layout.addWidget(self.view, 1)
        layout.addLayout(actions)

        self.view.selectionModel().currentChanged.connect(lambda *_: self._show_current())
        self.reuse_button.clicked.connect(self._reuse)
        self._show_current()

    def current_entry(self) -> GalleryEntry | None:
        index = self.view.currentIndex()
        return self.model.entry(index.row()) if index.isValid() else None

    def select(self, row: int) -> None:
        self.view.setCurrentIndex(self.model.index(row))

    def _show_current(self) -> None:
        entry = self.current_entry()
        for b in (self.save_button, self.save_as_button, self.reuse_button):
            b.setEnabled(entry is not None)
        self.seed_label.setText(f"seed: {entry.seed}" if entry else "seed: –")
        self.params_view.setPlainText(entry.parameters if entry else "")
        self.selected.emit(entry)

    def _reuse(self) -> None:
        entry = self.current_entry()
        if entry is not None:
            self.reuseSeed.emit(entry.seed)

    def save_current(self, path: str | Path | None = None) -> Path | None:
        """Save the selected image as PNG with its parameters. Without ``path``: a new file in the
        output folder, once (saving the same image again reports the file it already has)."""
        entry = self.current_entry()
        if entry is None:
            self.message.emit("Select an image to save")
            return None
        if path is None and entry.saved is not None and entry.saved.exists():
            self.message.emit(f"Already saved as {entry.saved}")
            return entry.saved
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = self.output_dir / f"dynamicid-{stamp}-{entry.seed}.png"
            n = 1
            while path.exists():
                path = self.output_dir / f"dynamicid-{stamp}-{entry.seed}-{n}.png"
                n += 1
        try:
            saved = save_png(entry.image, path, entry.parameters)
        except OSError as exc:
            self.problem.emit(f"Could not save {path}: {exc.strerror or exc}; choose another folder with “Save as…”")
            return None
        entry.saved = Path(saved)
        self.message.emit(f"Saved {saved}")
        return entry.saved
