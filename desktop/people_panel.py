"""The people panel: the list of people (rows in their box colour) and the editor of the selected
one (face, expression, pose, identity strength). Edits go through the model only."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PySide6.QtCore import QModelIndex, QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from dynamicid_rt import MAX_IDENTITIES

from .face_prompt import EXPRESSIONS, POSES, UNCHANGED
from .people import PHOTO_FILTER, PHOTO_SUFFIXES, PeopleModel, Role, Status
from .person_display import array_to_qimage
from .views import FOCUS_FRAME

PANEL_WIDTH = 300  # fixed, so that photos and messages never resize the window's columns


def degrees(value: float) -> str:
    """Whole degrees without a "-0"."""
    return f"{round(value) + 0}"


def faces_note(num_faces: int, face_index: int) -> str:
    """The several-faces note, numbered as the Face picker numbers them (from 1)."""
    return f"{num_faces} faces in this photo: using face {face_index + 1} (the largest unless you chose); pick another under Face."


def _message_label(color: str) -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(f"color: {color};")
    label.setMinimumWidth(1)  # long text wraps instead of widening the panel
    return label


class PeoplePanel(QWidget):
    photoFolderChanged = Signal(str)  # the folder photos were last chosen from (remembered by the window)
    filesDropped = Signal(list)  # paths dropped on the panel: the window sorts photos, saved PNGs and LoRAs

    def __init__(self, model: PeopleModel, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.photo_folder = ""  # where the photo dialogs open ("": the current folder)
        self._editor_key: int | None = None  # whose values the editor shows
        self.setAcceptDrops(True)
        self.setFixedWidth(PANEL_WIDTH)
        self.expressions_enabled = True

        self.list = QListView()
        self.list.setModel(model)
        self.list.setIconSize(QSize(64, 64))
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setWordWrap(True)
        self.list.setStyleSheet(FOCUS_FRAME.format("QListView"))
        self.list.setMinimumHeight(90)
        self.add_button = QPushButton("Add photo…")
        self.add_button.setToolTip("Add a reference photo (or drop photos here); up to four people")
        self.remove_button = QPushButton("Remove")
        self.retry_button = QPushButton("Retry")

        self.notice_label = _message_label("#c62828")  # photos that could not be added
        self.error_label = _message_label("#c62828")  # the selected person's error
        self.warning_label = _message_label("#8d6e00")
        self.source_label = _message_label("palette(text)")
        self.face_combo = QComboBox()
        self.face_combo.setIconSize(QSize(40, 40))
        self.face_combo.setToolTip("The photo holds several faces: choose the person")
        self.expression_combo = QComboBox()
        self.expression_combo.addItems([UNCHANGED, *EXPRESSIONS])
        self.pose_combo = QComboBox()
        self.pose_combo.addItems([UNCHANGED, *POSES])
        self.face_prompt_edit = QLineEdit()
        self.face_prompt_edit.setPlaceholderText("no expression/pose edit")
        self.strength_spin = QDoubleSpinBox()
        self.strength_spin.setRange(0.0, 3.0)
        self.strength_spin.setSingleStep(0.05)
        self.strength_spin.setValue(1.0)
        self.strength_spin.setToolTip("How strongly this person's identity is imposed (1 = the release's; 0 = not at all)")
        self.target_label = QLabel("none")
        self.target_button = QPushButton("Photo…")
        self.target_button.setToolTip("Take the target face layout (landmarks) from another photo")
        self.target_clear = QPushButton("Clear")

        buttons = QHBoxLayout()
        for b in (self.add_button, self.remove_button, self.retry_button):
            buttons.addWidget(b)
        target_row = QHBoxLayout()
        target_row.addWidget(self.target_label, 1)
        target_row.addWidget(self.target_button)
        target_row.addWidget(self.target_clear)
        self.editor = QWidget()
        form = QFormLayout(self.editor)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Photo shows:", self.source_label)
        form.addRow("Face:", self.face_combo)
        form.addRow("Identity strength:", self.strength_spin)
        form.addRow("Expression:", self.expression_combo)
        form.addRow("Pose:", self.pose_combo)
        form.addRow("Face prompt:", self.face_prompt_edit)
        form.addRow("Target landmarks:", target_row)

        # The messages share one area of fixed height (scrolling when long): appearing or going,
        # they never move the list, the buttons or the editor.
        messages = QWidget()
        message_column = QVBoxLayout(messages)
        message_column.setContentsMargins(0, 0, 0, 0)
        message_column.setSpacing(2)
        for label in (self.notice_label, self.error_label, self.warning_label):
            message_column.addWidget(label)
        message_column.addStretch(1)
        self.messages = QScrollArea()
        self.messages.setWidget(messages)
        self.messages.setWidgetResizable(True)
        self.messages.setFrameShape(QFrame.Shape.NoFrame)
        self.messages.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.messages.setFixedHeight(5 * self.fontMetrics().lineSpacing() + 6)
        self.source_label.setFixedHeight(2 * self.fontMetrics().lineSpacing() + 2)  # one or two lines: same room

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>People</b> (drop photos here)"))
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.editor)
        layout.addWidget(self.messages)

        self.add_button.clicked.connect(self.choose_photos)
        self.remove_button.clicked.connect(lambda: self.model.remove(self.current_row()))
        self.retry_button.clicked.connect(lambda: self.model.retry(self.current_row()))
        self.list.selectionModel().currentChanged.connect(lambda *_: self.refresh())
        model.dataChanged.connect(lambda *_: self.refresh())
        model.rowsInserted.connect(self._select_new)
        model.rowsRemoved.connect(lambda *_: self._rows_removed())
        self.face_combo.activated.connect(self._face_chosen)
        self.expression_combo.activated.connect(lambda _: self._set(Role.EXPRESSION, self.expression_combo.currentText()))
        self.pose_combo.activated.connect(lambda _: self._set(Role.POSE, self.pose_combo.currentText()))
        self.strength_spin.valueChanged.connect(self._strength_changed)
        self.face_prompt_edit.editingFinished.connect(self._face_prompt_edited)
        self.target_button.clicked.connect(self._choose_target)
        self.target_clear.clicked.connect(lambda: self._set(Role.TARGET, None))
        self.refresh()

    def current_row(self) -> int:
        index = self.list.currentIndex()
        return index.row() if index.isValid() else -1

    def select_row(self, row: int) -> None:
        self.list.setCurrentIndex(self.model.index(row))

    def set_expressions_enabled(self, enabled: bool) -> None:
        """Without IMR weights the pipeline cannot edit expressions: grey the controls out."""
        self.expressions_enabled = enabled
        self.refresh()

    def add_photos(self, paths: Sequence[str | Path]) -> list[str]:
        """Add photos as people; returns messages for those that could not be added."""
        problems = []
        for path in paths:
            if Path(path).suffix.lower() not in PHOTO_SUFFIXES:
                problems.append(f"{Path(path).name}: not a photo ({', '.join(PHOTO_SUFFIXES)})")
            elif self.model.is_full():
                problems.append(f"{Path(path).name}: at most {MAX_IDENTITIES} people per image")
            else:
                self.model.add_photo(path)
        self.notice_label.setText("\n".join(problems))
        return problems

    def choose_photos(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add reference photos", self.photo_folder, PHOTO_FILTER)
        if paths:
            self._remember_folder(paths[0])
            self.add_photos(paths)

    def _remember_folder(self, path: str) -> None:
        self.photo_folder = str(Path(path).parent)
        self.photoFolderChanged.emit(self.photo_folder)

    def _select_new(self, _parent: QModelIndex, first: int, _last: int) -> None:
        self.list.setCurrentIndex(self.model.index(first))

    def _rows_removed(self) -> None:
        self.refresh()

    def _set(self, role: Role, value: Any) -> None:
        row = self.current_row()
        if row >= 0:
            self.model.setData(self.model.index(row), value, role)

    def _strength_changed(self, value: float) -> None:
        row = self.current_row()
        if row >= 0 and self.model.index(row).data(Role.ID_SCALE) != value:
            self._set(Role.ID_SCALE, value)

    def _face_chosen(self, combo_row: int) -> None:
        self._set(Role.FACE_INDEX, self.face_combo.itemData(combo_row))

    def _face_prompt_edited(self) -> None:
        row = self.current_row()
        if row >= 0 and (self.face_prompt_edit.text().strip() or None) != self.model.data(self.model.index(row), Role.FACE_PROMPT):
            self._set(Role.FACE_PROMPT, self.face_prompt_edit.text())

    def _choose_target(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Target face layout from a photo", self.photo_folder, PHOTO_FILTER)
        if path:
            self._remember_folder(path)
            self._set(Role.TARGET, path)

    def refresh(self) -> None:
        """Show the selected person's state in the editor."""
        row = self.current_row()
        has = row >= 0
        if not self.model.is_full() and "at most" in self.notice_label.text():
            self.notice_label.clear()  # there is a place again (a person went or has no face): the note no longer applies
        self.remove_button.setEnabled(has)
        self.add_button.setEnabled(not self.model.is_full())
        self.editor.setEnabled(has)
        if not has:
            self._editor_key = None
            self.retry_button.setEnabled(False)
            self.error_label.clear()
            self.warning_label.clear()
            self.source_label.clear()
            return
        index = self.model.index(row)
        status = Status(index.data(Role.STATUS))
        identity = index.data(Role.IDENTITY)
        failed = status is Status.ERROR
        self.retry_button.setEnabled(failed and not self.model.is_full())
        self.error_label.setText(
            f"{index.data(Role.ERROR).rstrip('.')}. This person has no box and is left out of the image."
            if failed else ""
        )
        num_faces = index.data(Role.NUM_FACES)
        notes = [w for w in index.data(Role.WARNINGS) if "face_index" not in w]  # the API's wording, numbered from 0
        if identity is not None and num_faces > 1:
            notes.insert(0, faces_note(num_faces, identity.face_index))
        self.warning_label.setText("\n".join(notes))
        self.source_label.setText(
            f"{identity.source_prompt} (pose {', '.join(degrees(v) for v in identity.pose)})" if identity and identity.pose else ""
        )
        self.face_combo.clear()
        thumbs = index.data(Role.FACE_THUMBS)
        for i in range(num_faces):
            icon = QIcon(QPixmap.fromImage(array_to_qimage(thumbs[i]))) if i < len(thumbs) else QIcon()
            self.face_combo.addItem(icon, f"face {i + 1}", i)
        if identity is not None:
            self.face_combo.setCurrentIndex(identity.face_index)
        self.face_combo.setEnabled(num_faces > 1)
        editable = self.expressions_enabled and not failed
        for combo, role in ((self.expression_combo, Role.EXPRESSION), (self.pose_combo, Role.POSE)):
            combo.setCurrentText(index.data(role))
            combo.setEnabled(editable)
        self.face_prompt_edit.setEnabled(editable)
        self.target_button.setEnabled(editable)
        self.strength_spin.setEnabled(not failed)
        # Fields the user is typing in are theirs: writing the model's value back while they type
        # would turn "0.6" into "0.00" after its first key. Another person's values always show.
        other_person = index.data(Role.KEY) != self._editor_key
        self._editor_key = index.data(Role.KEY)
        if other_person or not self.strength_spin.hasFocus():
            self.strength_spin.blockSignals(True)
            self.strength_spin.setValue(index.data(Role.ID_SCALE))
            self.strength_spin.blockSignals(False)
        if other_person or not self.face_prompt_edit.hasFocus():
            self.face_prompt_edit.setText(index.data(Role.FACE_PROMPT) or "")
        target = index.data(Role.TARGET)
        self.target_label.setText(target.name if target else "none")
        self.target_label.setToolTip(str(target) if target else "The target layout is the photo's own")
        self.target_clear.setEnabled(target is not None)

    # -- drag and drop -----------------------------------------------------------------------

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.filesDropped.emit([u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()])
        event.acceptProposedAction()
