"""How a person shows: the text of their row in
the list and their framed face."""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRect
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPixmap

from .person import Person, Status

def display_text(row: int, p: Person) -> str:
    """The row's lines: number and name, then what the photo shows or why it cannot be used."""
    lines = [f"{row + 1}. {p.name}"]
    if p.status is Status.ENCODING:
        lines.append("encoding…")
    elif p.status is Status.ERROR:
        lines.append(f"⚠ not in the image: {p.error}")
    elif p.identity is not None:
        lines.append(p.identity.source_prompt)
        if p.face_prompt:
            lines.append(f"→ {p.face_prompt}")
        if p.num_faces > 1:
            lines.append(f"{p.num_faces} faces: using face {p.identity.face_index + 1}")
        if p.id_scale != 1.0:
            lines.append(f"strength {p.id_scale:.2f}")
    return "\n".join(lines)


def person_icon(p: Person) -> QIcon:
    """The face in a frame of the person's box colour (no frame: no box)."""
    pix = QPixmap(64, 64)
    if p.status is Status.ERROR:
        pix.fill(QColor("#ffcdd2"))
        return QIcon(pix)
    pix.fill(QColor(p.color))
    if p.identity is not None and p.identity.thumbnail is not None:
        painter = QPainter(pix)
        painter.drawImage(QRect(5, 5, 54, 54), array_to_qimage(p.identity.thumbnail))
        painter.end()
    return QIcon(pix)


def array_to_qimage(array: np.ndarray) -> QImage:
    """An (H, W, 3) uint8 array as a QImage that owns its pixels."""
    rgb = np.ascontiguousarray(array[..., :3], dtype=np.uint8)
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
