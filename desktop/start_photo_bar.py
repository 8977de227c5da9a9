"""The "Start from a photo" controls under the layout canvas: choose or remove the photo, how much
of it to change (Denoising strength) and the mask's tools and blur. Strength and blur restore from
a PNG's "Denoising strength" and "Mask blur" like the form's fields."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from dynamicid_rt import DynamicIDError, Request

from .mask_tool import TOOLS, MaskTool
from .start_photo import StartPhoto
from .views import ElidedLabel

DEFAULTS = Request(prompt="")
PHOTO_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp)"
TOOL_TIPS = {
    "boxes": "Drag the people's boxes",
    "brush": "Paint where the picture is repainted (the rest stays as it is, pixel for pixel)",
    "rectangle": "Drag a rectangle to repaint",
    "eraser": "Take paint off the mask",
}


class StartPhotoBar(QWidget):
    """``photoChosen(width, height)``: a photo was opened, with the size it fits by default;
    ``problem(text)``: a file could not be used; ``changed``: strength or blur edited."""

    photoChosen = Signal(int, int)
    problem = Signal(str)
    changed = Signal()

    def __init__(self, photo: StartPhoto, tool: MaskTool, parent=None) -> None:
        super().__init__(parent)
        self.photo, self.tool = photo, tool
        self.photo_folder = ""  # where the file dialog opens
        self.choose_button = QPushButton("Start from a photo…")
        self.choose_button.setToolTip("img2img: generate from a picture; paint a mask to change only part of it")
        self.remove_button = QPushButton("Remove photo")
        self.photo_label = ElidedLabel()
        self.strength_spin = QDoubleSpinBox()
        self.strength_spin.setRange(0.0, 1.0)
        self.strength_spin.setSingleStep(0.05)
        self.strength_spin.setValue(DEFAULTS.strength)
        self.strength_spin.setToolTip("How much to change the picture (A1111's denoising strength): "
                                      "0 keeps it, 1 redraws it; runs steps × strength steps")
        self.blur_spin = QSpinBox()
        self.blur_spin.setRange(0, 64)
        self.blur_spin.setValue(DEFAULTS.mask_blur)
        self.blur_spin.setSuffix(" px")
        self.blur_spin.setToolTip("Softens the mask's edge so the repainted area blends in (A1111's mask blur)")
        self.tool_group = QButtonGroup(self)
        self.tool_buttons: dict[str, QToolButton] = {}
        for name in TOOLS:
            button = QToolButton()
            button.setText(name.capitalize())
            button.setCheckable(True)
            button.setToolTip(TOOL_TIPS[name])
            self.tool_group.addButton(button)
            self.tool_buttons[name] = button
        self.tool_buttons["boxes"].setChecked(True)
        self.brush_spin = QSpinBox()
        self.brush_spin.setRange(4, 512)
        self.brush_spin.setValue(tool.brush_px)
        self.brush_spin.setSuffix(" px")
        self.brush_spin.setToolTip("The brush's size, in pixels of the picture")
        self.clear_mask_button = QPushButton("Clear mask")
        self.hint = QLabel()
        self.hint.setWordWrap(True)

        photo_row = QHBoxLayout()
        for widget, stretch in ((self.choose_button, 0), (self.photo_label, 1), (self.remove_button, 0)):
            photo_row.addWidget(widget, stretch)
        settings_row = QHBoxLayout()
        for widget in (QLabel("Strength:"), self.strength_spin, QLabel("Mask blur:"), self.blur_spin):
            settings_row.addWidget(widget)
        settings_row.addStretch(1)
        tools_row = QHBoxLayout()
        for button in self.tool_buttons.values():
            tools_row.addWidget(button)
        tools_row.addWidget(self.brush_spin)
        tools_row.addStretch(1)
        tools_row.addWidget(self.clear_mask_button)
        # What only applies to a photo shows with one: the canvas keeps its room for txt2img.
        self.details = QWidget()
        details = QVBoxLayout(self.details)
        details.setContentsMargins(0, 0, 0, 0)
        details.addLayout(settings_row)
        details.addLayout(tools_row)
        details.addWidget(self.hint)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(photo_row)
        column.addWidget(self.details)

        self.choose_button.clicked.connect(self.choose_photo)
        self.remove_button.clicked.connect(photo.clear)
        self.clear_mask_button.clicked.connect(photo.clear_mask)
        self.tool_group.buttonClicked.connect(lambda _: self._set_tool())
        self.brush_spin.valueChanged.connect(lambda px: setattr(self.tool, "brush_px", px))
        self.strength_spin.valueChanged.connect(lambda _: self.changed.emit())
        self.blur_spin.valueChanged.connect(lambda _: self.changed.emit())
        photo.photoChanged.connect(self.refresh)
        photo.maskChanged.connect(self.refresh)
        self.refresh()

    # -- the photo -----------------------------------------------------------------------------

    def choose_photo(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Start from a photo", self.photo_folder, PHOTO_FILTER)
        if path:
            self.photo_folder = str(Path(path).parent)
            self.open_photo(path)

    def open_photo(self, source: str | Path | np.ndarray, name: str = "") -> bool:
        """Use a photo file (or an RGB array called ``name``) as the start photo; False (the reason
        sent as ``problem``) when it cannot be read."""
        try:
            width, height = self.photo.load(source, name)
        except (OSError, DynamicIDError) as exc:
            what = name or (Path(source).name if isinstance(source, (str, Path)) else "the picture")
            self.problem.emit(f"Could not use {what} as the start photo: {exc}")
            return False
        self.photoChosen.emit(width, height)
        return True

    def set_tool(self, name: str) -> None:
        self.tool_buttons[name].setChecked(True)
        self._set_tool()

    def _set_tool(self) -> None:
        self.tool.mode = next(name for name, button in self.tool_buttons.items() if button.isChecked())
        self.brush_spin.setEnabled(self.tool.mode in ("brush", "eraser"))

    # -- the settings (request fields) ---------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """The Request fields this bar holds: the photo fitted to the output size, the mask, strength, blur."""
        if not self.photo.has_photo:
            return {}
        return {"init_image": self.photo.fitted(), "mask": self.photo.mask_array(),
                "strength": round(self.strength_spin.value(), 2), "mask_blur": self.blur_spin.value()}

    def apply(self, values: Mapping[str, Any]) -> list[str]:
        """Set strength and blur from parsed PNG parameters; returns those out of range."""
        skipped = []
        for name, spin in (("strength", self.strength_spin), ("mask_blur", self.blur_spin)):
            if name in values:
                value = values[name]
                if isinstance(value, (int, float)) and spin.minimum() <= value <= spin.maximum():
                    spin.setValue(value)
                else:
                    skipped.append(name)
        return skipped

    def refresh(self) -> None:
        has_photo = self.photo.has_photo
        self.remove_button.setEnabled(has_photo)
        self.details.setVisible(has_photo)
        painted = has_photo and self.photo.mask_array() is not None
        self.blur_spin.setEnabled(painted)
        self.brush_spin.setEnabled(has_photo and self.tool.mode in ("brush", "eraser"))
        if not has_photo:
            self.photo_label.setText("")
            return
        width, height = self.photo.photo_size
        out_w, out_h = self.photo.output_size
        fitted = "" if (width, height) == (out_w, out_h) else f" → {out_w}×{out_h} (cropped and resized)"
        self.photo_label.setText(f"{self.photo.name}: {width}×{height}{fitted}")
        self.hint.setText("Only the painted area is repainted; the rest stays as it is." if painted else
                          "Nothing painted: the whole picture is redrawn. Paint to change only part of it.")
