"""Painting the inpainting mask on the layout canvas: a round brush, a rectangle, and an eraser
(the brush that keeps). Positions come in widget pixels and go to mask pixels through the frame
the canvas draws the photo in; each stroke or rectangle is one undo step."""
from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPainterPath, QPen

from .start_photo import StartPhoto

TOOLS = ("boxes", "brush", "rectangle", "eraser")  # "boxes": drags move and resize the people's boxes
TINT = QColor("#ff4081")  # the repainted area over the photo
TINT_OPACITY = 0.5


class MaskTool:
    def __init__(self, photo: StartPhoto) -> None:
        self.photo = photo
        self.mode = "boxes"
        self.brush_px = 48  # the brush's diameter in picture pixels
        self._before: QImage | None = None  # the mask a stroke started from (its undo step)
        self._last: QPointF | None = None  # the stroke's last point, mask pixels
        self._rect: tuple[QPointF, QPointF] | None = None  # a rectangle being dragged, widget pixels
        self.hover: QPointF | None = None  # where the brush outline is drawn, widget pixels

    @property
    def active(self) -> bool:
        """Whether mouse drags paint (a painting tool is chosen and there is a photo to paint on)."""
        return self.mode != "boxes" and self.photo.has_photo

    def to_mask(self, pos: QPointF, frame: QRectF) -> QPointF:
        width, height = self.photo.output_size
        return QPointF((pos.x() - frame.left()) * width / frame.width(), (pos.y() - frame.top()) * height / frame.height())

    # -- mouse ---------------------------------------------------------------------------------

    def press(self, pos: QPointF, frame: QRectF) -> None:
        self._before = self.photo.mask.copy()
        if self.mode == "rectangle":
            self._rect = (pos, pos)
            return
        self._last = self.to_mask(pos, frame)
        path = QPainterPath(self._last)
        self.photo.paint(path, self.brush_px, erase=self.mode == "eraser")

    def move(self, pos: QPointF, frame: QRectF) -> None:
        self.hover = pos
        if self._before is None:
            return
        if self._rect is not None:
            self._rect = (self._rect[0], pos)
            return
        point = self.to_mask(pos, frame)
        segment = QPainterPath(self._last)
        segment.lineTo(point)
        self.photo.paint(segment, self.brush_px, erase=self.mode == "eraser")
        self._last = point

    def release(self, pos: QPointF, frame: QRectF) -> None:
        if self._before is None:
            return
        if self._rect is not None:
            corner = self.to_mask(self._rect[0], frame)
            self.photo.fill_rect(QRectF(corner, self.to_mask(pos, frame)).normalized(), erase=False)
        text = {"brush": "paint mask", "eraser": "erase mask", "rectangle": "mask rectangle"}[self.mode]
        before, self._before, self._last, self._rect = self._before, None, None, None
        self.photo.record(before, text)

    # -- drawing -------------------------------------------------------------------------------

    def paint_mask(self, painter: QPainter, frame: QRectF) -> None:
        """The painted area, tinted over the photo."""
        tint = QImage(self.photo.mask.size(), QImage.Format.Format_ARGB32)
        tint.fill(TINT)
        tint.setAlphaChannel(self.photo.mask)
        painter.save()
        painter.setOpacity(TINT_OPACITY)
        painter.drawImage(frame, tint)
        painter.restore()

    def paint_tool(self, painter: QPainter, frame: QRectF) -> None:
        """The brush's outline under the mouse, or the rectangle being dragged."""
        if not self.active:
            return
        painter.save()
        painter.setPen(QPen(QColor("white"), 1, Qt.PenStyle.DashLine))
        if self._rect is not None:
            painter.drawRect(QRectF(*self._rect).normalized())
        elif self.hover is not None and self.mode in ("brush", "eraser"):
            radius = self.brush_px / 2 * frame.width() / self.photo.output_size[0]
            painter.drawEllipse(self.hover, radius, radius)
        painter.restore()
