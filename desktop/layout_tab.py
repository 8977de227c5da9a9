"""The Layout tab: the box canvas plus identity mixing (several people in one box), a reset, and
the photo a generation can start from with its mask (:mod:`.start_photo_bar`)."""
from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel, Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget

from .canvas import BoxCanvas
from .people import PeopleModel
from .start_photo import StartPhoto
from .start_photo_bar import StartPhotoBar


class LayoutTab(QWidget):
    def __init__(self, model: PeopleModel, selection: QItemSelectionModel, mix: float, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.start_photo = StartPhoto(model.history, self)
        self.canvas = BoxCanvas(model, selection, self.start_photo)
        self.start_bar = StartPhotoBar(self.start_photo, self.canvas.mask_tool)
        self.mix_check = QCheckBox("Mix people in one box")
        self.mix_check.setToolTip("Two or more people in one box blend their identities")
        self.mix_slider = QSlider(Qt.Orientation.Horizontal)
        self.mix_slider.setRange(0, 100)
        self.mix_slider.setValue(round(mix * 100))
        self.mix_slider.setToolTip("Share of person 1 in the mixed identity")
        self.mix_label = QLabel()
        self.reset_boxes_button = QPushButton("Reset boxes")
        self.reset_boxes_button.setToolTip("One box per person: equal vertical strips, or the mask's painted regions "
                                           "(undo: Ctrl+Z)")
        row = QHBoxLayout()
        for widget, stretch in ((self.mix_check, 0), (self.mix_slider, 1), (self.mix_label, 0), (self.reset_boxes_button, 0)):
            row.addWidget(widget, stretch)
        column = QVBoxLayout(self)
        column.setContentsMargins(4, 4, 4, 4)
        column.addWidget(self.canvas, 1)
        column.addLayout(row)
        column.addWidget(self.start_bar)

        self.mix_check.clicked.connect(self._set_mix)  # the user's click only: refresh() sets it too
        self.mix_slider.valueChanged.connect(lambda _: self.refresh())
        self.reset_boxes_button.clicked.connect(self._reset_boxes)
        self.start_bar.tool_group.buttonClicked.connect(lambda _: self.canvas.update())
        for signal in (model.rowsInserted, model.rowsRemoved):
            signal.connect(lambda *_: self.refresh())
        model.mixChanged.connect(self.refresh)
        self.refresh()

    def mix(self) -> float:
        return self.mix_slider.value() / 100.0

    def set_mix(self, mix: float) -> None:
        self.mix_slider.setValue(round(mix * 100))

    def set_output_size(self, width: int, height: int) -> None:
        self.start_photo.set_output_size(width, height)
        self.canvas.set_output_size(width, height)
        self.model.min_box = self.canvas.min_fraction()
        self.canvas.fit_boxes()

    def _reset_boxes(self) -> None:
        before = self.model.history.snapshot()
        self.model.reset_boxes()
        self.model.history.record(before, "reset boxes")

    def _set_mix(self, on: bool) -> None:
        before = self.model.history.snapshot()
        self.model.set_mix(on)
        self.model.history.record(before, "mix people" if on else "separate boxes")

    def refresh(self) -> None:
        self.mix_check.setEnabled(self.model.rowCount() >= 2)
        self.mix_check.setChecked(self.model.mix)
        self.mix_slider.setEnabled(self.model.mix)
        self.mix_label.setText(f"{self.mix_slider.value()}% person 1")
