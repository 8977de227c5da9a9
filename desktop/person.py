"""One person of a generation as a value: their data, status and the roles the people model
answers. Shared by the model (:mod:`.people`), its box rules (:mod:`.layout`) and how a person
shows (:mod:`.person_display`), none of which imports another for it."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import Qt

from dynamicid_rt import Box

from .face_prompt import UNCHANGED

if TYPE_CHECKING:
    from dynamicid_rt import Identity


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
    ID_SCALE = enum.auto()


class Status(str, enum.Enum):
    ENCODING = "encoding"
    READY = "ready"
    ERROR = "error"


@dataclass
class Person:
    key: int
    photo: Path
    color: str
    box: Box | None  # None: not in the image (the photo has no usable face)
    parked_box: Box | None = None  # the box of a photo that failed, given back when it is retried
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
    id_scale: float = 1.0  # identity strength (Request.id_scale for this person)

    @property
    def name(self) -> str:
        return self.photo.stem
