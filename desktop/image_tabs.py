"""The tabs over the middle of the window: Layout (boxes), Preview (live), Result (the selected
image with a likeness badge per person) and Activation maps (with a legend of whose colour is whose)."""
from __future__ import annotations

import numpy as np
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from .gallery_entry import GalleryEntry
from .views import ChipRow, ImageView, match_chips, overlay_activation_maps

NO_MAPS = "Activation maps are not available for this backend."
MAPS_LATER = "Each person's activation map appears here after a run with people in it."
NO_PEOPLE = "No one was in this image, so it has no activation maps."


def _stacked(top: QWidget, main: QWidget) -> QWidget:
    box = QWidget()
    column = QVBoxLayout(box)
    column.setContentsMargins(0, 0, 0, 0)
    column.addWidget(top)
    column.addWidget(main, 1)
    return box


class ImageTabs(QTabWidget):
    def __init__(self, layout_tab: QWidget, parent=None) -> None:
        super().__init__(parent)
        self.preview_view = ImageView("The live preview appears here while generating.")
        self.result_view = ImageView("No image yet: press Generate (Ctrl+Enter).")
        self.badges = ChipRow()  # each person's likeness in the selected image
        self.maps_available = False  # whether the backend in use makes activation maps
        self.maps_view = ImageView(NO_MAPS)
        self.maps_legend = ChipRow()  # which colour is whose
        self.addTab(layout_tab, "Layout")
        self.addTab(self.preview_view, "Preview")
        self.result_tab = _stacked(self.badges, self.result_view)
        self.addTab(self.result_tab, "Result")
        self.addTab(_stacked(self.maps_legend, self.maps_view), "Activation maps")

    def set_maps_available(self, available: bool) -> None:
        """Whether the loaded backend makes activation maps (the message of an empty maps tab)."""
        self.maps_available = available
        if not self.maps_view.has_image():
            self.maps_view.set_text(MAPS_LATER if available else NO_MAPS)

    def show_preview(self) -> None:
        self.setCurrentWidget(self.preview_view)

    def set_preview(self, rgb: np.ndarray) -> None:
        """A new preview frame; the tab shown stays the user's choice."""
        self.preview_view.set_image(rgb)

    def show_entry(self, entry: GalleryEntry | None) -> None:
        if entry is None:
            return
        rgb = np.asarray(entry.image.convert("RGB"))
        self.result_view.set_image(rgb)
        self.badges.set_chips(match_chips(entry.matches or []))
        if entry.activation_map is None:
            self.maps_view.set_text(NO_PEOPLE if not entry.names else MAPS_LATER if self.maps_available else NO_MAPS)
            self.maps_legend.set_chips([])
            return
        self.maps_view.set_image(overlay_activation_maps(rgb, np.asarray(entry.activation_map), entry.colors))
        self.maps_legend.set_chips([(name, QColor(*color).name(), f"{name}'s identity acts here")
                                    for name, color in zip(entry.names, entry.colors)])
