"""Message areas that keep their place: a note line of fixed height, and the window's message
strip (a problem, or a question with two answers, in one slot of fixed height). A message that
appears or goes never moves a field the user is about to click."""
from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QLabel, QScrollArea, QSizePolicy, QStackedLayout, QWidget

from .views import QuestionBar

Recheck = Callable[[], "str | None"]  # the message as it stands now; None: it no longer applies


class MessageLine(QLabel):
    """A wrapped, selectable line of ``lines`` lines' height, empty or not; the whole text is also
    its tooltip, for a message longer than its room."""

    def __init__(self, color: str, lines: int = 2, parent=None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setStyleSheet(f"color: {color};")
        self.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setMinimumWidth(1)  # long text wraps instead of widening its column
        self.setFixedHeight(lines * self.fontMetrics().lineSpacing() + 4)

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setToolTip(text)


class MessageStrip(QWidget):
    """The window's one message slot, below the Generate row: the current problem (red, scrollable
    when long) or a question (:class:`QuestionBar`, which has the slot while it is asked).

    A problem may come with ``recheck``: after every edit the window calls :meth:`recheck`, and a
    problem that no longer applies goes (one that changed shows its new wording)."""

    def __init__(self, question_bar: QuestionBar, parent=None) -> None:
        super().__init__(parent)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setStyleSheet("color: #c62828;")
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.label.setMinimumWidth(1)
        scroll = QScrollArea()
        scroll.setWidget(self.label)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.question_bar = question_bar
        self._stack = QStackedLayout(self)
        self._stack.addWidget(scroll)
        self._stack.addWidget(question_bar)
        self.setFixedHeight(max(2 * self.fontMetrics().lineSpacing() + 8, question_bar.sizeHint().height()))
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self._recheck: Recheck | None = None
        question_bar.shown.connect(lambda on: self._stack.setCurrentIndex(1 if on else 0))
        self._stack.setCurrentIndex(0)

    def show_problem(self, text: str, recheck: Recheck | None = None) -> None:
        self.label.setText(text)
        self._recheck = recheck if text else None

    def clear(self) -> None:
        self.show_problem("")

    def text(self) -> str:
        return self.label.text()

    def recheck(self) -> None:
        if self._recheck is not None:
            self.show_problem(self._recheck() or "", self._recheck)
