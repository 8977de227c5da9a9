"""The session's images: a list model (one entry per image, with its parameters, seed and each
person's likeness) and its panel (thumbnails, the selected image's seed and parameters, Save,
Save as, Reuse seed). Every action acts on the selected image."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractListModel, QEvent, QModelIndex, QObject, QPersistentModelIndex, QSize, Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QCheckBox, QHBoxLayout, QLabel, QListView, QPlainTextEdit, QPushButton, QStyle, QVBoxLayout, QWidget,
)

from dynamicid_rt import DynamicIDError, save_image

from .gallery_delegate import CELL, GalleryDelegate
from .gallery_entry import ENTRY_ROLE, GalleryEntry
from .person_display import array_to_qimage
from .views import FOCUS_FRAME, RANKING, SCORE_HELP, ElidedLabel

THUMB_PX = 128  # the thumbnail kept per image; the gallery draws it at its cell's size


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

    def unsaved(self) -> list[GalleryEntry]:
        """The images of this session that are in no file yet."""
        return [e for e in self._entries if e.saved is None or not e.saved.exists()]

    def refresh(self, entry: GalleryEntry) -> None:
        row = next(i for i, e in enumerate(self._entries) if e is entry)
        self.dataChanged.emit(self.index(row), self.index(row))


class GalleryPanel(QWidget):
    """Thumbnails beside the selected image's details and actions. With ``save_each`` on, every
    result is written to the output folder as it arrives (PNG with its parameters, the CLI's
    atomic writer), as A1111 and ComfyUI do."""

    selected = Signal(object)  # GalleryEntry or None
    reuseSeed = Signal(object)  # int: seeds go up to 2**32 - 1, past a C++ int
    message = Signal(str)  # for the status bar
    problem = Signal(str)  # for the window's message line
    saveEachChanged = Signal(bool)

    def __init__(self, model: GalleryModel, output_dir: Path, save_each: bool = True, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.output_dir = output_dir
        self.view = QListView()
        self.view.setModel(model)
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setFlow(QListView.Flow.LeftToRight)
        self.view.setWrapping(True)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.delegate = GalleryDelegate(ENTRY_ROLE, self.view)
        self.view.setItemDelegate(self.delegate)
        self.view.setGridSize(CELL)
        self.view.viewport().installEventFilter(self)  # cells share each row's width (room for long names)
        self.view.setUniformItemSizes(True)
        self.view.setMinimumHeight(CELL.height() + 6)  # one full row at the smallest window
        self.header = QLabel()
        self.header.setToolTip(f"{RANKING}\n\n{SCORE_HELP}")
        self.save_each_check = QCheckBox("Save each result")
        self.save_each_check.setChecked(save_each)
        self.save_each_check.setToolTip("Write every result to the output folder as it is made (PNG with its settings)")
        self.seed_label = ElidedLabel("seed: –")  # seed and file: never wider than the panel
        self.params_view = QPlainTextEdit()
        self.params_view.setReadOnly(True)
        for widget in (self.view, self.params_view):
            widget.setStyleSheet(FOCUS_FRAME.format(type(widget).__name__))
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip("Save the selected image with its settings in the output folder (Ctrl+S)")
        self.save_as_button = QPushButton("Save as…")
        self.reuse_button = QPushButton("Reuse seed")
        self.reuse_button.setToolTip("Put the selected image's seed in the form (random off)")
        self.open_folder_button = QPushButton("Open folder")
        self.open_folder_button.setToolTip("Open the output folder")

        self.params_view.setFixedHeight(48)
        top = QHBoxLayout()
        top.addWidget(self.header, 1)
        top.addWidget(self.save_each_check)
        actions = QHBoxLayout()
        actions.addWidget(self.seed_label, 1)
        for b in (self.save_button, self.save_as_button, self.reuse_button, self.open_folder_button):
            actions.addWidget(b)
        # Thumbnails use the panel's whole width (several per row); the selection's details below.
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        layout.addLayout(top)
        layout.addWidget(self.view, 1)
        layout.addLayout(actions)

        self.view.selectionModel().currentChanged.connect(lambda *_: self._show_current())
        self.reuse_button.clicked.connect(self._reuse)
        self.save_each_check.toggled.connect(self.saveEachChanged)
        self._show_current()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.view.viewport() and event.type() == QEvent.Type.Resize:
            self._fit_cells(event.size().width())
        return False

    def _fit_cells(self, width: int) -> None:
        """As many cells per row as fit at the narrowest, widened to share the row's whole width."""
        # Qt lays the cells out leaving room for a vertical scroll bar, shown or not.
        usable = width - self.view.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent) - 4
        columns = max(1, usable // CELL.width())
        cell = QSize(max(CELL.width(), usable // columns), CELL.height())
        if cell != self.delegate.cell:
            self.delegate.cell = cell
            self.view.setGridSize(cell)

    def current_entry(self) -> GalleryEntry | None:
        index = self.view.currentIndex()
        return self.model.entry(index.row()) if index.isValid() else None

    def select(self, row: int) -> None:
        self.view.setCurrentIndex(self.model.index(row))

    def add(self, entries: list[GalleryEntry]) -> int:
        """Show new results (saved at once when ``Save each result`` is on); returns the first row."""
        first = self.model.add(entries)
        if self.save_each_check.isChecked():
            saved = [path for path in map(self._save_new, entries) if path is not None]
            if saved:
                self.message.emit(f"Saved {saved[0]}" if len(saved) == 1 else f"Saved {len(saved)} images in {saved[0].parent}")
        return first

    def _show_current(self) -> None:
        entry = self.current_entry()
        for b in (self.save_button, self.save_as_button, self.reuse_button):
            b.setEnabled(entry is not None)
        self.header.setText("<b>Results</b>" + (" (best-of run: best first)" if entry is not None and entry.ranked else ""))
        if entry is None:
            self.seed_label.setText("seed: –")
            self.seed_label.setToolTip("")
        else:
            where = f"saved as {entry.saved.name}" if entry.saved is not None else "not saved"
            self.seed_label.setText(f"seed {entry.seed} · {where}")
            self.seed_label.setToolTip(str(entry.saved) if entry.saved is not None else "Not in a file yet: Save (Ctrl+S)")
        self.params_view.setPlainText(entry.parameters if entry else "")
        self.selected.emit(entry)

    def _reuse(self) -> None:
        entry = self.current_entry()
        if entry is not None:
            self.reuseSeed.emit(entry.seed)

    def _new_path(self, entry: GalleryEntry) -> Path:
        """A file name in the output folder that no file has (none is ever overwritten)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.output_dir / f"dynamicid-{stamp}-{entry.seed}.png"
        n = 1
        while path.exists():
            path = self.output_dir / f"dynamicid-{stamp}-{entry.seed}-{n}.png"
            n += 1
        return path

    def _save_new(self, entry: GalleryEntry, path: str | Path | None = None) -> Path | None:
        path = Path(path) if path is not None else self._new_path(entry)
        try:
            saved = save_image(entry.image, path, entry.parameters)
        except (OSError, DynamicIDError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            self.problem.emit(f"Could not save {path}: {reason}; choose another folder with “Save as…”")
            return None
        entry.saved = Path(saved)
        self.model.refresh(entry)
        if entry is self.current_entry():
            self._show_current()
        return entry.saved

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
        saved = self._save_new(entry, path)
        if saved is not None:
            self.message.emit(f"Saved {saved}")
        return saved

    def save_all_unsaved(self) -> bool:
        """Save every image not in a file yet; False when one could not be saved."""
        return all(self._save_new(entry) is not None for entry in self.model.unsaved())
