"""The people of a generation: a list model, the single place their data changes (its panel is
:mod:`.people_panel`)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QColor

from dynamicid_rt import MAX_IDENTITIES, Box

from .face_prompt import build_face_prompt
from .layout import BoxLayout, LayoutHistory
from .person import Person, Role, Status
from .person_display import display_text, person_icon

if TYPE_CHECKING:
    from dynamicid_rt import Identity


# Distinct, colour-blind-friendly hues (Okabe-Ito) for people's boxes and activation overlays.
PERSON_COLORS = ("#E69F00", "#56B4E9", "#009E73", "#CC79A7")
PHOTO_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp)"
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# Changing one of these re-encodes the person (the pipeline caches identities, so it is cheap).
_ENCODE_ROLES = {Role.FACE_INDEX, Role.FACE_PROMPT, Role.TARGET}
_EDITABLE = _ENCODE_ROLES | {Role.EXPRESSION, Role.POSE, Role.BOX, Role.ID_SCALE}


@dataclass(frozen=True)
class EncodeJob:
    """What the worker needs to encode one person (a snapshot: the GUI may change the person meanwhile)."""

    key: int
    version: int
    photo: Path
    face_prompt: str | None
    target: Path | None
    face_index: int | None


class PeopleModel(BoxLayout, QAbstractListModel):
    """Up to four people. Views read roles; every change goes through setData or the methods here,
    which emit the model's signals, so canvas, panel and generation never disagree.

    A box set through setData is the user's (a drag, a restore): from then on the layout is
    ``arranged`` and adding, removing or failing people never moves another box. Until then the
    boxes are the release's default strips for the people present."""

    encodeRequested = Signal(object)  # EncodeJob
    mixChanged = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._people: list[Person] = []
        self._keys = itertools.count(1)
        self._mix = False  # several people share one box (identity mixing)
        self._shared_box: Box = (0.0, 0.0, 1.0, 1.0)
        self.arranged = False
        self.min_box = (0.125, 0.125)  # smallest box (height, width fractions) for the output size
        self.history = LayoutHistory(self)

    # -- Qt model API ------------------------------------------------------------------------

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._people)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._people):
            return None
        p = self._people[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return display_text(index.row(), p)
        if role == Qt.ItemDataRole.DecorationRole:
            return person_icon(p)
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
            Role.ID_SCALE: p.id_scale,
        }
        return values.get(role)

    def setData(self, index: QModelIndex | QPersistentModelIndex, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if not index.isValid() or role not in _EDITABLE:
            return False
        p = self._people[index.row()]
        if role == Role.BOX:
            box = None if value is None else tuple(float(v) for v in value)
            if p.status is Status.ERROR:
                p.parked_box = box or p.parked_box  # not in the image until the photo works; then here
            else:
                p.box = box  # type: ignore[assignment]
            self.arranged = True
        elif role == Role.ID_SCALE:
            p.id_scale = float(value)
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
        # A photo without a face comes back into the image (re-encoded) only while there is a place.
        back_in = p.status is not Status.ERROR or not self.is_full()
        if (role in _ENCODE_ROLES or role in (Role.EXPRESSION, Role.POSE)) and back_in:
            self._request_encode(index.row())
        return True

    # -- people ------------------------------------------------------------------------------

    def people(self) -> list[Person]:
        return list(self._people)

    def in_image(self) -> list[Person]:
        """The people who take one of the image's places: all but those whose photo has no usable
        face (they are listed, boxless, until removed or retried)."""
        return [p for p in self._people if p.status is not Status.ERROR]

    def is_full(self) -> bool:
        return len(self.in_image()) >= MAX_IDENTITIES

    def _free_color(self, person: Person | None = None) -> str:
        """A box colour no other person in the image has (one of the four: there are four places)."""
        used = {p.color for p in self.in_image() if p is not person}
        return next((c for c in PERSON_COLORS if c not in used), PERSON_COLORS[0])

    def add_photo(self, photo: str | Path) -> int:
        """Append a person and request their encoding; returns the new row."""
        if self.is_full():
            raise ValueError(f"at most {MAX_IDENTITIES} people per image: remove one before adding {Path(photo).name}")
        row = len(self._people)
        self.beginInsertRows(QModelIndex(), row, row)
        self._people.append(Person(key=next(self._keys), photo=Path(photo), color=self._free_color(), box=None))
        self.endInsertRows()
        self._request_encode(row)  # which also places the new box
        return row

    def remove(self, row: int) -> None:
        if not 0 <= row < len(self._people):
            return
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._people[row]
        self.endRemoveRows()
        if len(self._people) < 2:
            self.set_mix(False)
        if not self.arranged:
            self._default_layout()

    def row_of(self, key: int) -> int | None:
        return next((i for i, p in enumerate(self._people) if p.key == key), None)

    # -- encoding results (called by the window with the worker's signals) --------------------

    def _request_encode(self, row: int) -> None:
        p = self._people[row]
        p.encode_version += 1
        p.status = Status.ENCODING
        p.error = ""
        self._changed(row)
        if p.box is None:  # a new or retried photo comes (back) into the layout
            if self.arranged:
                self._place_arranged(row)
            else:
                self._default_layout()
        self.encodeRequested.emit(
            EncodeJob(p.key, p.encode_version, p.photo, p.face_prompt, p.target, p.face_index)
        )

    def retry(self, row: int) -> None:
        """Encode the photo again; a photo without a face comes back only while there is a place."""
        if not 0 <= row < len(self._people):
            return
        p = self._people[row]
        if p.status is Status.ERROR:
            if self.is_full():
                return
            p.color = self._free_color(p)  # its colour may have gone to someone added meanwhile
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
        if self.arranged:
            self._place(row, None)  # its box goes (kept for a retry); the others stay
        else:
            self._default_layout()

    def _changed(self, row: int) -> None:
        index = self.index(row)
        self.dataChanged.emit(index, index, [])
