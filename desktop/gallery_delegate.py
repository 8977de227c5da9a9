"""How one result shows in the gallery: its thumbnail beside its seed and one badge per person
(name and likeness score), painted by the view's delegate rather than into the thumbnail, so that
the selection highlight never washes the badges out and the seed caption is never clipped."""
from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from .gallery_entry import GalleryEntry

if TYPE_CHECKING:
    from dynamicid_rt import IdentityMatch
from .views import BAD, GOOD

THUMB_PX = 50
CELL = QSize(190, 86)  # the narrowest cell (three per row in a 1280 px window); room for four badges
BADGE_PX = 15
CAPTION_PX = 16
PAD = 3


def thumb_rect(cell: QRect) -> QRect:
    return QRect(cell.left() + PAD, cell.top() + PAD + CAPTION_PX + 1, THUMB_PX, THUMB_PX)


def badge_rects(cell: QRect, count: int) -> list[QRect]:
    """Where each person's badge goes in a cell: one line each, right of the thumbnail, under the
    seed (which has the cell's whole width, so that ten digits always fit)."""
    left = cell.left() + PAD + THUMB_PX + 5
    top = cell.top() + PAD + CAPTION_PX + 1
    return [QRect(left, top + i * (BADGE_PX + 1), cell.right() - PAD - left, BADGE_PX) for i in range(count)]


def badge_font(font: QFont) -> QFont:
    badge = QFont(font)
    badge.setPixelSize(10)
    badge.setBold(False)
    return badge


def badge_texts(cell: QRect, match: "IdentityMatch", font: QFont) -> tuple[str, str]:
    """What a person's badge in ``cell`` says: the name (elided only when the badge has no room for
    it beside the score) and the score ("0.61", "no face", "0.20 swap")."""
    metrics = QFontMetrics(badge_font(font))
    score = match.label()[len(match.name) + 1:]
    room = _text_rect(badge_rects(cell, 1)[0]).width() - metrics.horizontalAdvance(score + " ")
    return metrics.elidedText(match.name, Qt.TextElideMode.ElideRight, room), score


def _body(rect: QRect) -> QRect:
    return rect.adjusted(4, 0, 0, 0)  # right of the stripe in the person's box colour


def _text_rect(rect: QRect) -> QRect:
    return _body(rect).adjusted(3, 0, -3, 0)


class GalleryDelegate(QStyledItemDelegate):
    def __init__(self, entry_role: int, parent=None) -> None:
        super().__init__(parent)
        self._entry_role = entry_role
        self.cell = QSize(CELL)  # widened by the gallery to share each row's free width

    def sizeHint(self, _option: QStyleOptionViewItem, _index: QModelIndex | QPersistentModelIndex) -> QSize:
        return self.cell

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> None:
        entry: GalleryEntry = index.data(self._entry_role)
        pixmap: QPixmap = index.data(Qt.ItemDataRole.DecorationRole)
        cell = option.rect.adjusted(1, 1, -1, -1)
        painter.save()
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            highlight = option.palette.highlight().color()
            fill = QColor(highlight)
            fill.setAlpha(60)
            painter.fillRect(cell, fill)
            painter.setPen(QPen(highlight, 2))
            painter.drawRect(cell.adjusted(1, 1, -1, -1))
        thumb = thumb_rect(cell)
        scaled = pixmap.size().scaled(thumb.size(), Qt.AspectRatioMode.KeepAspectRatio)
        painter.drawPixmap(QRect(thumb.left() + (THUMB_PX - scaled.width()) // 2, thumb.top() + (THUMB_PX - scaled.height()) // 2,
                                 scaled.width(), scaled.height()), pixmap)

        font = QFont(option.font)
        font.setPixelSize(12)
        font.setBold(True)
        painter.setFont(font)
        painter.setPen(option.palette.text().color())
        caption = QRect(cell.left() + PAD, cell.top() + PAD, cell.width() - 2 * PAD, CAPTION_PX)
        painter.drawText(caption, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, f"seed {entry.seed}")

        painter.setFont(badge_font(option.font))
        matches = entry.matches or []
        for rect, match, color in zip(badge_rects(cell, len(matches)), matches, entry.colors):
            # A stripe in the person's box colour, then the badge: green when their face is there
            # and looks like them, red when it is missing or looks like someone else.
            painter.fillRect(QRect(rect.left(), rect.top(), 3, rect.height()), QColor(*color))
            painter.fillRect(_body(rect), QColor(GOOD if match.ok else BAD))
            painter.setPen(QColor("white"))
            # The score right-aligned, the name in all the room left of it (elided only past that).
            name, score = badge_texts(cell, match, option.font)
            painter.drawText(_text_rect(rect), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, score)
            painter.drawText(_text_rect(rect), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, name)
        painter.restore()
