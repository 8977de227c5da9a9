"""Small display widgets: a fitted image, a row of coloured chips (likeness badges, map legend),
a closable banner, and the activation-map overlay."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from PySide6.QtCore import QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QToolButton, QWidget

from .person_display import array_to_qimage

if TYPE_CHECKING:
    from dynamicid_rt import IdentityMatch

GOOD, BAD = "#2e7d32", "#c62828"
# A frame that shows where the keyboard is (item views and read-only text draw none of their own);
# the same width with and without focus, so that nothing moves. Format with the widget's class name.
FOCUS_FRAME = "{0} {{ border: 2px solid palette(midlight); }} {0}:focus {{ border: 2px solid palette(highlight); }}"
ChipSpec = tuple[str, str, str]  # text, background colour, tooltip


class ImageView(QWidget):
    """Shows an image fitted to the widget with its aspect ratio kept, or a line of text."""

    def __init__(self, text: str, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumSize(160, 96)  # grows with the window; small enough for a 768 px laptop screen
        self._text = text
        self._image: QImage | None = None

    def set_image(self, rgb: np.ndarray) -> None:
        self._image = array_to_qimage(rgb)
        self.update()

    def set_text(self, text: str) -> None:
        self._image, self._text = None, text
        self.update()

    def text(self) -> str:
        return "" if self._image is not None else self._text

    def has_image(self) -> bool:
        return self._image is not None

    def image_rect(self) -> QRect:
        """Where the image is drawn (centred, aspect kept)."""
        if self._image is None:
            return QRect()
        size = self._image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        return QRect((self.width() - size.width()) // 2, (self.height() - size.height()) // 2, size.width(), size.height())

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#1e1e1e"))
        if self._image is None:
            painter.setPen(QColor("#bdbdbd"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._text)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(self.image_rect(), self._image)


RANKING = ("Best first: images where every person's face was found, then those with fewer swapped faces "
           "(a face that looks more like another person), then by the score of the least recognisable person.")
SCORE_HELP = ("ID match: how alike the face in a person's box is to their photo (ArcFace cosine similarity, "
              "from −1 to 1; higher is more alike, about 0 or below means no likeness). “no face”: no face was "
              "found in the box. “swap”: the face looks more like another person of the picture. "
              "On the tiny demo bundle the images are noise, and so are the scores.")


def chip_text(match: "IdentityMatch") -> str:
    """A result's badge, in words: ``anna 0.61``, ``ben: no face``, ``ben 0.20, looks like anna``."""
    if match.similarity is None:
        return f"{match.name}: no face"
    if match.swapped:
        return f"{match.name} {match.similarity:.2f}, looks like {match.looks_like}"
    return f"{match.name} {match.similarity:.2f}"


def match_chips(matches: Sequence["IdentityMatch"]) -> list[ChipSpec]:
    """One badge per person: the ArcFace match score, red when the face is missing or swapped."""
    return [(chip_text(m), GOOD if m.ok else BAD, f"{m.describe()}\n\n{SCORE_HELP}") for m in matches]


class ElidedLabel(QLabel):
    """A label that, short of room, shortens its text with "…" instead of widening the window;
    ``text()`` is the whole text."""

    PADDING = 14  # room for a chip's padding

    def __init__(self, text: str = "", parent=None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setText(text)

    def setText(self, text: str) -> None:
        self._full = text
        self._fit()
        self.updateGeometry()

    def text(self) -> str:
        return self._full

    def sizeHint(self) -> QSize:
        return QSize(self.fontMetrics().horizontalAdvance(self._full) + self.PADDING + 4, super().sizeHint().height())

    def minimumSizeHint(self) -> QSize:
        return QSize(40, super().minimumSizeHint().height())

    def resizeEvent(self, event) -> None:
        self._fit()
        super().resizeEvent(event)

    def _fit(self) -> None:
        room = self.width() - self.PADDING
        shown = self._full if self.fontMetrics().horizontalAdvance(self._full) <= room else (
            self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, room))
        QLabel.setText(self, shown)


class ChipRow(QWidget):
    """A row of small coloured labels (``chips``), left-aligned. Its height is kept when empty, so
    that the image under it never moves when the first chips come."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(0, 2, 0, 2)
        self._layout.addStretch(1)
        self.labels: list[ElidedLabel] = []
        self.setFixedHeight(self.fontMetrics().height() + 8)

    def set_chips(self, chips: Sequence[ChipSpec]) -> None:
        for label in self.labels:
            label.deleteLater()
        self.labels = []
        for i, (text, background, tooltip) in enumerate(chips):
            label = ElidedLabel(text)
            label.setToolTip(tooltip)
            label.setProperty("background", background)
            label.setStyleSheet(f"background: {background}; color: white; border-radius: 3px; padding: 1px 6px;")
            self._layout.insertWidget(i, label)
            self.labels.append(label)


class Banner(QFrame):
    """A message strip the user can close (model-folder problems)."""

    closed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setStyleSheet("Banner { background: #fdecea; } QLabel { color: #8e1c1c; }")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.close_button = QToolButton()
        self.close_button.setText("✕")
        self.close_button.setToolTip("Close this message")
        self.close_button.clicked.connect(self.dismiss)
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 4, 6, 4)
        row.addWidget(self.label, 1)
        row.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self.setVisible(False)

    def show_message(self, text: str) -> None:
        self.label.setText(text)
        self.setVisible(True)

    def dismiss(self) -> None:
        self.label.clear()
        self.setVisible(False)
        self.closed.emit()

    def text(self) -> str:
        return self.label.text() if self.isVisible() else ""


class QuestionBar(QFrame):
    """A question in the window with two answers. Unlike a dialog it never takes the keyboard:
    its buttons take no focus, so typing goes on in the field the user is in, and only a click
    answers."""

    accepted = Signal()
    shown = Signal(bool)  # asked (True) or answered/dismissed (False)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setStyleSheet("QuestionBar { background: #fff3cd; } QLabel { color: #5c4400; }")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.yes_button = QPushButton()
        self.no_button = QPushButton("Don't generate")
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 4, 6, 4)
        row.addWidget(self.label, 1)
        for button in (self.yes_button, self.no_button):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            button.setAutoDefault(False)
            row.addWidget(button)
        self.yes_button.clicked.connect(self._accept)
        self.no_button.clicked.connect(self.dismiss)
        self._asked = False
        self.setVisible(False)

    def ask(self, question: str, yes: str) -> None:
        self.label.setText(question)
        self.yes_button.setText(yes)
        self._asked = True
        self.setVisible(True)
        self.shown.emit(True)

    def dismiss(self) -> None:
        self._asked = False
        self.setVisible(False)
        self.shown.emit(False)

    def _accept(self) -> None:
        self.dismiss()
        self.accepted.emit()

    def is_asked(self) -> bool:
        return self._asked

    def text(self) -> str:
        return self.label.text() if self._asked else ""


def overlay_activation_maps(image: np.ndarray, maps: np.ndarray, colors: Sequence[tuple[int, int, int]], alpha: float = 0.6) -> np.ndarray:
    """Blend each person's activation map (N, h, w) in [0, 1], in that person's colour, over the image."""
    from PIL import Image

    h, w = image.shape[:2]
    out = image.astype(np.float32)
    for amap, color in zip(maps, colors):
        resized = np.asarray(Image.fromarray(np.clip(amap, 0, 1).astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
        weight = alpha * np.clip(resized, 0.0, 1.0)[..., None]
        out = out * (1.0 - weight) + np.asarray(color, np.float32) * weight
    return out.round().clip(0, 255).astype(np.uint8)
