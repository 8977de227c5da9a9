"""The people of a generation: a list model (the single place their data changes) and its panel."""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from dynamicid_rt.request import MAX_IDENTITIES, Box, default_boxes

if TYPE_CHECKING:
    from dynamicid_rt.identity import Identity


# Distinct, colour-blind-friendly hues (Okabe-Ito) for people's boxes and activation overlays.
PERSON_COLORS = ("#E69F00", "#56B4E9", "#009E73", "#CC79A7")
EXPRESSIONS = ("neutral", "happy", "sad", "surprised", "angry")
POSES = ("front view", "side view", "facing up", "facing down")
UNCHANGED = "unchanged"
PHOTO_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp)"
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def build_face_prompt(expression: str, pose: str, source_prompt: str) -> str | None:
    """The target face prompt in the release's wording ("in a happy expression, facing up, in front
    view"); ``unchanged`` parts keep what the source prompt says. None when nothing changes."""
    if expression == UNCHANGED and pose == UNCHANGED:
        return None
    head, _, src_pose = source_prompt.partition(" expression, ")
    src_expression = head.removeprefix("in a ").strip() or "neutral"
    expr = src_expression if expression == UNCHANGED else expression
    if pose == UNCHANGED:
        pose_text = src_pose or "in front view"
    elif pose in ("facing up", "facing down"):
        pose_text = f"{pose}, in front view"
    else:
        pose_text = f"in {pose}"
    return f"in a {expr} expression, {pose_text}"


class Status(str, enum.Enum):
    ENCODING = "encoding"
    READY = "ready"
    ERROR = "error"


class Role(enum.IntEnum):
    KEY = Qt.ItemDataRole.UserRole + 1
    PHOTO = enum.auto()
    IDENTITY = enum.auto()
    STATUS = enum.auto()
    ERROR = enum.auto()
    WARNINGS = enum.auto()
    NUM_FACES = enum.auto()
    FACE_INDEX = enum.auto()
    FACE_THUMBS = enum.auto()
    EXPRESSION = enum.auto()
    POSE = enum.auto()
    FACE_PROMPT = enum.auto()
    TARGET = enum.auto()
    BOX = enum.auto()
    COLOR = enum.auto()
    ENCODE_VERSION = enum.auto()


# Changing one of these re-encodes the person (the pipeline caches identities, so it is cheap).
_ENCODE_ROLES = {Role.FACE_INDEX, Role.FACE_PROMPT, Role.TARGET}
_EDITABLE = _ENCODE_ROLES | {Role.EXPRESSION, Role.POSE, Role.BOX}


@dataclass
class Person:
    key: int
    photo: Path
    color: str
    box: Box
    status: Status = Status.ENCODING
    identity: "Identity | None" = None
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    num_faces: int = 0
    face_index: int | None = None  # None: the pipeline picks the largest face
    face_thumbs: list[np.ndarray] = field(default_factory=list)
    expression: str = UNCHANGED
    pose: str = UNCHANGED
    face_prompt: str | None = None
    target: Path | None = None
    encode_version: int = 0

    @property
    def name(self) -> str:
        return self.photo.stem


@dataclass(frozen=True)
class EncodeJob:
    """What the worker needs to encode one person (a snapshot: the GUI may change the person meanwhile)."""

    key: int
    version: int
    photo: Path
    face_prompt: str | None
    target: Path | None
    face_index: int | None


class PeopleModel(QAbstractListModel):
    """Up to four people. Views read roles; every change goes through setData or the methods here,
    which emit the model's signals, so canvas, panel and generation never disagree."""

    encodeRequested = Signal(object)  # EncodeJob
    mixChanged = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._people: list[Person] = []
        self._keys = itertools.count(1)
        self._mix = False  # several people share one box (identity mixing)
        self._shared_box: Box = (0.0, 0.0, 1.0, 1.0)

    # -- Qt model API ------------------------------------------------------------------------

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._people)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._people):
            return None
        p = self._people[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display_text(index.row(), p)
        if role == Qt.ItemDataRole.DecorationRole:
            return self._icon(p)
        if role == Qt.ItemDataRole.ToolTipRole:
            return str(p.photo)
        if role == Qt.ItemDataRole.ForegroundRole and p.status is Status.ERROR:
            return QColor("#c62828")
        values = {
            Role.KEY: p.key,
            Role.PHOTO: p.photo,
            Role.IDENTITY: p.identity,
            Role.STATUS: p.status.value,  # Qt hands str subclasses back as plain str
            Role.ERROR: p.error,
            Role.WARNINGS: list(p.warnings),
            Role.NUM_FACES: p.num_faces,
            Role.FACE_INDEX: p.face_index,
            Role.FACE_THUMBS: p.face_thumbs,
            Role.EXPRESSION: p.expression,
            Role.POSE: p.pose,
            Role.FACE_PROMPT: p.face_prompt,
            Role.TARGET: p.target,
            Role.BOX: p.box,
            Role.COLOR: QColor(p.color),
            Role.ENCODE_VERSION: p.encode_version,
        }
        return values.get(role)

    def setData(self, index: QModelIndex | QPersistentModelIndex, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if not index.isValid() or role not in _EDITABLE:
            return False
        p = self._people[index.row()]
        if role == Role.BOX:
            p.box = tuple(float(v) for v in value)  # type: ignore[assignment]
        elif role == Role.FACE_INDEX:
            p.face_index = None if value is None else int(value)
        elif role == Role.TARGET:
            p.target = None if value is None else Path(value)
        elif role == Role.FACE_PROMPT:
            p.face_prompt = (value or "").strip() or None
        elif role in (Role.EXPRESSION, Role.POSE):
            setattr(p, "expression" if role == Role.EXPRESSION else "pose", str(value))
            source = p.identity.source_prompt if p.identity is not None else ""
            p.face_prompt = build_face_prompt(p.expression, p.pose, source)
        self.dataChanged.emit(index, index, [role])
        if role in _ENCODE_ROLES or role in (Role.EXPRESSION, Role.POSE):
            self._request_encode(index.row())
        return True

    # -- people ------------------------------------------------------------------------------

    def people(self) -> list[Person]:
        return list(self._people)

    def is_full(self) -> bool:
        return len(self._people) >= MAX_IDENTITIES

    def add_photo(self, photo: str | Path) -> int:
        """Append a person and request their encoding; returns the new row."""
        if self.is_full():
            raise ValueError(f"at most {MAX_IDENTITIES} people per image: remove one before adding {Path(photo).name}")
        used = {p.color for p in self._people}
        color = next(c for c in PERSON_COLORS if c not in used)
        row = len(self._people)
        self.beginInsertRows(QModelIndex(), row, row)
        self._people.append(Person(key=next(self._keys), photo=Path(photo), color=color, box=(0.0, 0.0, 1.0, 1.0)))
        self.endInsertRows()
        self.reset_boxes()
        self._request_encode(row)
        return row

    def remove(self, row: int) -> None:
        if not 0 <= row < len(self._people):
            return
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._people[row]
        self.endRemoveRows()
        if len(self._people) < 2:
            self.set_mix(False)
        self.reset_boxes()

    def row_of(self, key: int) -> int | None:
        return next((i for i, p in enumerate(self._people) if p.key == key), None)

    def reset_boxes(self) -> None:
        """The release's default layout: equal vertical strips."""
        for row, box in enumerate(default_boxes(len(self._people))):
            self.setData(self.index(row), box, Role.BOX)

    # -- encoding results (called by the window with the worker's signals) --------------------

    def _request_encode(self, row: int) -> None:
        p = self._people[row]
        p.encode_version += 1
        p.status = Status.ENCODING
        p.error = ""
        self._changed(row)
        self.encodeRequested.emit(
            EncodeJob(p.key, p.encode_version, p.photo, p.face_prompt, p.target, p.face_index)
        )

    def retry(self, row: int) -> None:
        if 0 <= row < len(self._people):
            self._request_encode(row)

    def set_encoded(self, key: int, version: int, identity: "Identity", face_thumbs: Sequence[np.ndarray]) -> None:
        row = self.row_of(key)
        if row is None or self._people[row].encode_version != version:
            return  # the person was removed or changed meanwhile: a newer job is on its way
        p = self._people[row]
        p.identity, p.status, p.error = identity, Status.READY, ""
        p.warnings = list(identity.warnings)
        p.num_faces = identity.num_faces
        p.face_thumbs = list(face_thumbs) or p.face_thumbs
        self._changed(row)

    def set_encode_failed(self, key: int, version: int, message: str) -> None:
        row = self.row_of(key)
        if row is None or self._people[row].encode_version != version:
            return
        p = self._people[row]
        p.identity, p.status, p.error = None, Status.ERROR, message
        self._changed(row)

    def _changed(self, row: int) -> None:
        index = self.index(row)
        self.dataChanged.emit(index, index, [])

    # -- identity mixing ------------------------------------------------------------------------

    @property
    def mix(self) -> bool:
        return self._mix

    @property
    def shared_box(self) -> Box:
        return self._shared_box

    def set_mix(self, on: bool) -> None:
        on = bool(on) and len(self._people) >= 2
        if on != self._mix:
            self._mix = on
            self.mixChanged.emit()

    def set_shared_box(self, box: Box) -> None:
        self._shared_box = tuple(float(v) for v in box)  # type: ignore[assignment]
        self.mixChanged.emit()

    def request_boxes(self, people: Sequence[Person]) -> list[Box]:
        """Request.boxes for these people: one box each, or the shared box when mixing."""
        return [self._shared_box] if self._mix else [p.box for p in people]

    # -- display ---------------------------------------------------------------------------

    @staticmethod
    def _display_text(row: int, p: Person) -> str:
        lines = [f"{row + 1}. {p.name}"]
        if p.status is Status.ENCODING:
            lines.append("encoding…")
        elif p.status is Status.ERROR:
            lines.append(p.error)
        elif p.identity is not None:
            lines.append(p.identity.source_prompt)
            if p.face_prompt:
                lines.append(f"→ {p.face_prompt}")
            if p.num_faces > 1:
                lines.append(f"{p.num_faces} faces: using face {p.identity.face_index + 1}")
        return "\n".join(lines)

    @staticmethod
    def _icon(p: Person) -> QIcon:
        if p.identity is not None:
            return QIcon(QPixmap.fromImage(array_to_qimage(p.identity.thumbnail)))
        pix = QPixmap(64, 64)
        pix.fill(QColor("#ffcdd2") if p.status is Status.ERROR else QColor("#e0e0e0"))
        return QIcon(pix)


def array_to_qimage(array: np.ndarray) -> QImage:
    """An (H, W, 3) uint8 array as a QImage that owns its pixels."""
    rgb = np.ascontiguousarray(array[..., :3], dtype=np.uint8)
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class PeoplePanel(QWidget):
    """List of people plus the editor of the selected one. Edits go through the model only."""

    def __init__(self, model: PeopleModel, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.setAcceptDrops(True)
        self.expressions_enabled = True

        self.list = QListView()
        self.list.setModel(model)
        self.list.setIconSize(QSize(64, 64))
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setWordWrap(True)
        self.add_button = QPushButton("Add photo…")
        self.add_button.setToolTip("Add a reference photo (or drop photos here); up to four people")
        self.remove_button = QPushButton("Remove")
        self.retry_button = QPushButton("Retry")

        self.notice_label = QLabel()  # photos that could not be added
        self.notice_label.setWordWrap(True)
        self.notice_label.setStyleSheet("color: #c62828;")
        self.error_label = QLabel()  # the selected person's error
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c62828;")
        self.warning_label = QLabel()
        self.warning_label.setWordWrap(True)
        self.warning_label.setStyleSheet("color: #8d6e00;")
        self.source_label = QLabel()
        self.source_label.setWordWrap(True)
        self.face_combo = QComboBox()
        self.face_combo.setIconSize(QSize(40, 40))
        self.face_combo.setToolTip("The photo holds several faces: choose the person")
        self.expression_combo = QComboBox()
        self.expression_combo.addItems([UNCHANGED, *EXPRESSIONS])
        self.pose_combo = QComboBox()
        self.pose_combo.addItems([UNCHANGED, *POSES])
        self.face_prompt_edit = QLineEdit()
        self.face_prompt_edit.setPlaceholderText("no expression/pose edit")
        self.target_label = QLabel("none")
        self.target_button = QPushButton("From photo…")
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
        form.addRow("Expression:", self.expression_combo)
        form.addRow("Pose:", self.pose_combo)
        form.addRow("Face prompt:", self.face_prompt_edit)
        form.addRow("Target landmarks:", target_row)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>People</b> (drop photos here)"))
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.notice_label)
        layout.addWidget(self.error_label)
        layout.addWidget(self.warning_label)
        layout.addWidget(self.editor)

        self.add_button.clicked.connect(self.choose_photos)
        self.remove_button.clicked.connect(lambda: self.model.remove(self.current_row()))
        self.retry_button.clicked.connect(lambda: self.model.retry(self.current_row()))
        self.list.selectionModel().currentChanged.connect(lambda *_: self.refresh())
        model.dataChanged.connect(lambda *_: self.refresh())
        model.rowsInserted.connect(self._select_new)
        model.rowsRemoved.connect(lambda *_: self.refresh())
        self.face_combo.activated.connect(self._face_chosen)
        self.expression_combo.activated.connect(lambda _: self._set(Role.EXPRESSION, self.expression_combo.currentText()))
        self.pose_combo.activated.connect(lambda _: self._set(Role.POSE, self.pose_combo.currentText()))
        self.face_prompt_edit.editingFinished.connect(self._face_prompt_edited)
        self.target_button.clicked.connect(self._choose_target)
        self.target_clear.clicked.connect(lambda: self._set(Role.TARGET, None))
        self.refresh()

    def current_row(self) -> int:
        index = self.list.currentIndex()
        return index.row() if index.isValid() else -1

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
        paths, _ = QFileDialog.getOpenFileNames(self, "Add reference photos", "", PHOTO_FILTER)
        if paths:
            self.add_photos(paths)

    def _select_new(self, _parent: QModelIndex, first: int, _last: int) -> None:
        self.list.setCurrentIndex(self.model.index(first))

    def _set(self, role: Role, value: Any) -> None:
        row = self.current_row()
        if row >= 0:
            self.model.setData(self.model.index(row), value, role)

    def _face_chosen(self, combo_row: int) -> None:
        self._set(Role.FACE_INDEX, self.face_combo.itemData(combo_row))

    def _face_prompt_edited(self) -> None:
        row = self.current_row()
        if row >= 0 and (self.face_prompt_edit.text().strip() or None) != self.model.data(self.model.index(row), Role.FACE_PROMPT):
            self._set(Role.FACE_PROMPT, self.face_prompt_edit.text())

    def _choose_target(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Target face layout from a photo", "", PHOTO_FILTER)
        if path:
            self._set(Role.TARGET, path)

    def refresh(self) -> None:
        """Show the selected person's state in the editor."""
        row = self.current_row()
        has = row >= 0
        self.remove_button.setEnabled(has)
        self.add_button.setEnabled(not self.model.is_full())
        self.editor.setEnabled(has)
        if not has:
            self.retry_button.setEnabled(False)
            self.error_label.clear()
            self.warning_label.clear()
            self.source_label.clear()
            return
        index = self.model.index(row)
        status = Status(index.data(Role.STATUS))
        identity = index.data(Role.IDENTITY)
        self.retry_button.setEnabled(status is Status.ERROR)
        self.error_label.setText(f"{index.data(Role.PHOTO).name}: {index.data(Role.ERROR)}" if status is Status.ERROR else "")
        self.warning_label.setText("\n".join(index.data(Role.WARNINGS)))
        self.source_label.setText(
            f"{identity.source_prompt} (pose {', '.join(f'{v:.0f}' for v in identity.pose)})" if identity else ""
        )
        num_faces = index.data(Role.NUM_FACES)
        self.face_combo.clear()
        thumbs = index.data(Role.FACE_THUMBS)
        for i in range(num_faces):
            icon = QIcon(QPixmap.fromImage(array_to_qimage(thumbs[i]))) if i < len(thumbs) else QIcon()
            self.face_combo.addItem(icon, f"face {i + 1}", i)
        if identity is not None:
            self.face_combo.setCurrentIndex(identity.face_index)
        self.face_combo.setEnabled(num_faces > 1)
        for combo, role in ((self.expression_combo, Role.EXPRESSION), (self.pose_combo, Role.POSE)):
            combo.setCurrentText(index.data(role))
            combo.setEnabled(self.expressions_enabled)
        self.face_prompt_edit.setEnabled(self.expressions_enabled)
        self.target_button.setEnabled(self.expressions_enabled)
        if not self.face_prompt_edit.hasFocus():
            self.face_prompt_edit.setText(index.data(Role.FACE_PROMPT) or "")
        target = index.data(Role.TARGET)
        self.target_label.setText(target.name if target else "none (same as the photo)")
        self.target_clear.setEnabled(target is not None)

    # -- drag and drop -----------------------------------------------------------------------

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        self.add_photos(paths)
        event.acceptProposedAction()
