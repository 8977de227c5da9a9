"""The output frame with one draggable, resizable box per person (Request.boxes: y0, x0, y1, x1),
over the start photo and its mask when there is one (painted with :mod:`.mask_tool`)."""
from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel, QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from dynamicid_rt import Box

from .layout import LayoutState
from .mask_tool import MaskTool
from .people import PeopleModel, Role
from .start_photo import StartPhoto


HANDLE_PX = 8  # grab distance of a box edge, in widget pixels
MARGIN_PX = 10
LABEL_PX = 18  # the output size is written under the frame, clear of the boxes' resize handles


def clamp_box(box: Box, min_h: float, min_w: float) -> Box:
    """Keep a box inside the unit frame and at least ``min_h`` × ``min_w`` big."""
    y0, x0, y1, x1 = box
    y0, x0 = min(max(y0, 0.0), 1.0 - min_h), min(max(x0, 0.0), 1.0 - min_w)
    y1, x1 = min(max(y1, y0 + min_h), 1.0), min(max(x1, x0 + min_w), 1.0)
    return (y0, x0, y1, x1)


class BoxCanvas(QWidget):
    """Paints the frame at the output aspect ratio and the people's boxes, each with its person's
    number and name; drags edit the model. With the people list's ``selection``, a click on a box
    selects its person and the selected person's box is drawn highlighted. With a ``start_photo``,
    the frame shows it and its mask, and drags paint the mask while a painting tool is chosen."""

    def __init__(self, model: PeopleModel, selection: QItemSelectionModel | None = None,
                 start_photo: StartPhoto | None = None, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.start_photo = start_photo
        self.mask_tool = MaskTool(start_photo) if start_photo is not None else None
        if start_photo is not None:
            start_photo.photoChanged.connect(self.update)
            start_photo.maskChanged.connect(self.update)
        self.selection = selection
        if selection is not None:
            selection.currentChanged.connect(lambda *_: self.update())
        self.output_size = (512, 512)  # width, height in pixels
        self.setMinimumSize(160, 110)  # grows with the window; small enough for a 768 px laptop screen
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self._drag: tuple[int, str, QPointF, Box] | None = None  # row (-1: shared), edges, start, box
        self._before_drag: LayoutState | None = None  # the layout a drag started from (one undo step)
        for sig in (model.dataChanged, model.rowsInserted, model.rowsRemoved, model.modelReset, model.mixChanged):
            sig.connect(self.update)

    def sizeHint(self) -> QSize:
        return QSize(360, 360)

    def set_output_size(self, width: int, height: int) -> None:
        self.output_size = (width, height)
        self.update()

    def min_fraction(self) -> tuple[float, float]:
        """Smallest box the generator accepts: 64 px each way (one cell of the coarsest SAA layer)."""
        w, h = self.output_size
        return min(1.0, 64.0 / h + 1e-4), min(1.0, 64.0 / w + 1e-4)

    def frame_rect(self) -> QRectF:
        """Where the output frame lies in the widget, fitted with the output's aspect ratio."""
        w, h = self.output_size
        avail_w, avail_h = self.width() - 2 * MARGIN_PX, self.height() - 2 * MARGIN_PX - LABEL_PX
        scale = min(avail_w / w, avail_h / h)
        fw, fh = w * scale, h * scale
        return QRectF((self.width() - fw) / 2, MARGIN_PX + (avail_h - fh) / 2, fw, fh)

    def placed_rows(self) -> list[int]:
        """The people with a box (a photo without a usable face has none)."""
        return [r for r in range(self.model.rowCount()) if self.model.index(r).data(Role.BOX) is not None]

    def selected_row(self) -> int:
        if self.selection is None or not self.selection.currentIndex().isValid():
            return -1
        return self.selection.currentIndex().row()

    def boxes(self) -> list[tuple[int, Box, list[QColor]]]:
        """(row, box, colours) per drawn box; row -1 is the shared box of identity mixing."""
        rows = self.placed_rows()
        if self.model.mix:
            return [(-1, self.model.shared_box, [self.model.index(r).data(Role.COLOR) for r in rows])]
        return [(r, self.model.index(r).data(Role.BOX), [self.model.index(r).data(Role.COLOR)]) for r in rows]

    def label(self, row: int) -> str:
        """“1 anna” on a person's box; “1+2” on the shared box."""
        if row < 0:
            return "+".join(str(r + 1) for r in self.placed_rows())
        return f"{row + 1} {self.model.index(row).data(Role.PHOTO).stem}"

    def box_rect(self, row: int) -> QRectF:
        """A box in widget coordinates (row -1: the shared box)."""
        box = self.model.shared_box if row < 0 else self.model.index(row).data(Role.BOX)
        f = self.frame_rect()
        y0, x0, y1, x1 = box
        return QRectF(f.left() + x0 * f.width(), f.top() + y0 * f.height(), (x1 - x0) * f.width(), (y1 - y0) * f.height())

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        frame = self.frame_rect()
        painter.fillRect(self.rect(), self.palette().window())
        painter.fillRect(frame, QColor("#2b2b2b"))
        photo = self.start_photo.fitted_image() if self.start_photo is not None else None
        if photo is not None and self.mask_tool is not None:
            painter.drawImage(frame, photo)
            self.mask_tool.paint_mask(painter, frame)
        painter.setPen(QPen(QColor("#9e9e9e"), 1))
        painter.drawRect(frame)
        size_label = QRectF(frame.left(), frame.bottom() + 2, frame.width(), LABEL_PX - 2)
        painter.setPen(self.palette().windowText().color())
        painter.drawText(size_label, Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignRight,
                         f"output {self.output_size[0]}×{self.output_size[1]} px")
        selected = self.selected_row()
        for row, _box, colors in self.boxes():
            rect = self.box_rect(row)
            highlight = row >= 0 and row == selected
            fill = QColor(colors[0]) if colors else QColor("#9e9e9e")
            fill.setAlpha(110 if highlight else 50)
            painter.fillRect(rect, QBrush(fill))
            for i, color in enumerate(colors):
                # Mixed identities: nested outlines, one per person sharing the box.
                painter.setPen(QPen(color, 5 if highlight else 3))
                painter.drawRect(rect.adjusted(3 * i + 1, 3 * i + 1, -3 * i - 1, -3 * i - 1))
            painter.setPen(QPen(QColor("white")))
            painter.drawText(rect.adjusted(6, 4, -4, -4), Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft, self.label(row))
            painter.drawRect(QRectF(rect.right() - HANDLE_PX, rect.bottom() - HANDLE_PX, HANDLE_PX, HANDLE_PX))
        if self.mask_tool is not None:
            self.mask_tool.paint_tool(painter, frame)

    def _hit(self, pos: QPointF) -> tuple[int, str] | None:
        """The topmost box under ``pos`` and which edges a drag moves ('' = move the whole box)."""
        for row, _box, _colors in reversed(self.boxes()):
            rect = self.box_rect(row).adjusted(-HANDLE_PX / 2, -HANDLE_PX / 2, HANDLE_PX / 2, HANDLE_PX / 2)
            if not rect.contains(pos):
                continue
            inner = self.box_rect(row)
            edges = ""
            if abs(pos.y() - inner.top()) <= HANDLE_PX:
                edges += "t"
            elif abs(pos.y() - inner.bottom()) <= HANDLE_PX:
                edges += "b"
            if abs(pos.x() - inner.left()) <= HANDLE_PX:
                edges += "l"
            elif abs(pos.x() - inner.right()) <= HANDLE_PX:
                edges += "r"
            return row, edges
        return None

    def mousePressEvent(self, event) -> None:
        if self.mask_tool is not None and self.mask_tool.active:
            if event.button() == Qt.MouseButton.LeftButton:
                self.mask_tool.press(event.position(), self.frame_rect())
                self.update()
            return
        hit = self._hit(event.position())
        if event.button() != Qt.MouseButton.LeftButton or hit is None:
            return
        row, edges = hit
        if row >= 0 and self.selection is not None:
            self.selection.setCurrentIndex(self.model.index(row), QItemSelectionModel.SelectionFlag.ClearAndSelect)
        box = self.model.shared_box if row < 0 else self.model.index(row).data(Role.BOX)
        self._drag = (row, edges, event.position(), box)
        self._before_drag = self.model.history.snapshot()

    def mouseMoveEvent(self, event) -> None:
        if self.mask_tool is not None and self.mask_tool.active:
            self.mask_tool.move(event.position(), self.frame_rect())
            self.setCursor(Qt.CursorShape.CrossCursor)
            self.update()
            return
        if self._drag is None:
            hit = self._hit(event.position())
            self.setCursor(_cursor_for(hit[1] if hit else None))
            return
        row, edges, start, box = self._drag
        f = self.frame_rect()
        dy = (event.position().y() - start.y()) / f.height()
        dx = (event.position().x() - start.x()) / f.width()
        self._apply(row, _dragged(box, edges, dy, dx, *self.min_fraction()))

    def mouseReleaseEvent(self, event) -> None:
        if self.mask_tool is not None and self.mask_tool.active:
            self.mask_tool.release(event.position(), self.frame_rect())
            self.update()
            return
        if self._drag is not None and self._before_drag is not None:
            self.model.history.record(self._before_drag, "resize box" if self._drag[1] else "move box")
        self._drag, self._before_drag = None, None

    def leaveEvent(self, _event) -> None:
        if self.mask_tool is not None:
            self.mask_tool.hover = None  # no brush outline left behind
            self.update()

    def _apply(self, row: int, box: Box) -> None:
        min_h, min_w = self.min_fraction()
        box = clamp_box(box, min_h, min_w)
        if row < 0:
            self.model.set_shared_box(box)
        else:
            self.model.setData(self.model.index(row), box, Role.BOX)

    def fit_boxes(self) -> None:
        """Re-clamp the boxes that became too small for a new output size (the minimum is 64 px);
        the others are left as they are. The default strips are at least 64 px at every size."""
        if not self.model.arranged:
            return
        for row, box, _colors in self.boxes():
            if clamp_box(box, *self.min_fraction()) != tuple(box):
                self._apply(row, box)


def _dragged(box: Box, edges: str, dy: float, dx: float, min_h: float, min_w: float) -> Box:
    """The box after a drag: moved whole ('' edges) or with the grabbed edges moved, inside the
    frame and never smaller than the minimum (the grabbed edge stops, the others stay)."""
    y0, x0, y1, x1 = box
    if not edges:
        dy = min(max(dy, -y0), 1.0 - y1)
        dx = min(max(dx, -x0), 1.0 - x1)
        return (y0 + dy, x0 + dx, y1 + dy, x1 + dx)
    if "t" in edges:
        y0 = min(max(y0 + dy, 0.0), y1 - min_h)
    if "b" in edges:
        y1 = max(min(y1 + dy, 1.0), y0 + min_h)
    if "l" in edges:
        x0 = min(max(x0 + dx, 0.0), x1 - min_w)
    if "r" in edges:
        x1 = max(min(x1 + dx, 1.0), x0 + min_w)
    return (y0, x0, y1, x1)


def _cursor_for(edges: str | None) -> Qt.CursorShape:
    if edges is None:
        return Qt.CursorShape.ArrowCursor
    if edges == "":
        return Qt.CursorShape.SizeAllCursor
    if edges in ("tl", "br"):
        return Qt.CursorShape.SizeFDiagCursor
    if edges in ("tr", "bl"):
        return Qt.CursorShape.SizeBDiagCursor
    return Qt.CursorShape.SizeVerCursor if edges in ("t", "b") else Qt.CursorShape.SizeHorCursor
