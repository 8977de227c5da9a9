"""The picture a generation starts from ("Start from a photo": img2img) and the mask painted over
it (inpainting), as a model the layout canvas paints and the window reads requests from.

The photo is kept as loaded; what the request gets is the photo fitted to the output size with
A1111's "Crop and resize" (:func:`dynamicid_rt.crop_resize`), so the size fields stay the user's.
The mask lives at the output size (white = repaint) and is rescaled with it. Each finished mask
edit is one undo step on the layout's undo stack.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPainterPath, QPen, QUndoCommand, QUndoStack

from dynamicid_rt import crop_resize, load_photo, start_size

from .person_display import array_to_qimage

REPAINT, KEEP = QColor("white"), QColor("black")


class StartPhoto(QObject):
    """``photoChanged`` when a photo is chosen, fitted to another size or removed; ``maskChanged``
    once a mask edit is complete (not during a stroke)."""

    photoChanged = Signal()
    maskChanged = Signal()

    def __init__(self, history: QUndoStack, parent=None) -> None:
        super().__init__(parent)
        self.history = history
        self.name = ""  # the file's name, or what the picture is ("result, seed 7")
        self._pixels: np.ndarray | None = None  # the photo as loaded, (H, W, 3) uint8
        self.output_size = (512, 512)  # width, height
        self._fitted: tuple[tuple[int, int], np.ndarray, QImage] | None = None
        self.mask = self._blank_mask()

    # -- the photo -----------------------------------------------------------------------------

    def load(self, source: str | Path | np.ndarray, name: str = "") -> tuple[int, int]:
        """Read a photo file, or take an RGB array (ImageError names what is wrong with it); returns
        the size it is fitted to by default: its own when the model takes it, else its aspect at the
        nearest size."""
        pixels = load_photo(source)
        self.name = name or (Path(source).name if isinstance(source, (str, Path)) else "picture")
        self._pixels, self._fitted = pixels, None
        self.mask = self._blank_mask()
        self.photoChanged.emit()
        self.maskChanged.emit()
        return start_size(pixels.shape[1], pixels.shape[0])

    def clear(self) -> None:
        self.name, self._pixels, self._fitted = "", None, None
        self.mask = self._blank_mask()
        self.photoChanged.emit()
        self.maskChanged.emit()

    @property
    def has_photo(self) -> bool:
        return self._pixels is not None

    @property
    def photo_size(self) -> tuple[int, int]:
        """The photo's own width and height (0, 0 without one)."""
        return (0, 0) if self._pixels is None else (self._pixels.shape[1], self._pixels.shape[0])

    def set_output_size(self, width: int, height: int) -> None:
        if (width, height) == self.output_size:
            return
        self.output_size = (width, height)
        self.mask = self.mask.scaled(width, height, Qt.AspectRatioMode.IgnoreAspectRatio,
                                     Qt.TransformationMode.FastTransformation)  # nearest: it stays black and white
        if self.has_photo:
            self.photoChanged.emit()

    def fitted(self) -> np.ndarray | None:
        """The photo as the request gets it, (height, width, 3) uint8 at the output size."""
        entry = self._fitted_entry()
        return None if entry is None else entry[1]

    def fitted_image(self) -> QImage | None:
        entry = self._fitted_entry()
        return None if entry is None else entry[2]

    def _fitted_entry(self) -> tuple[tuple[int, int], np.ndarray, QImage] | None:
        if self._pixels is None:
            return None
        if self._fitted is None or self._fitted[0] != self.output_size:
            pixels = np.asarray(crop_resize(self._pixels, *self.output_size))
            self._fitted = (self.output_size, pixels, array_to_qimage(pixels))
        return self._fitted

    # -- the mask ------------------------------------------------------------------------------

    def _blank_mask(self) -> QImage:
        mask = QImage(*self.output_size, QImage.Format.Format_Grayscale8)
        mask.fill(KEEP)
        return mask

    def mask_array(self) -> np.ndarray | None:
        """The mask as the request gets it, (height, width) uint8; None when nothing is painted
        (the whole picture is redrawn: img2img)."""
        if not self.has_photo:
            return None
        width, height = self.output_size
        rows = np.frombuffer(self.mask.constBits(), np.uint8).reshape(height, self.mask.bytesPerLine())
        pixels = rows[:, :width].copy()
        return pixels if pixels.any() else None

    def paint(self, path: QPainterPath, brush_px: float, erase: bool) -> None:
        """Stroke ``path`` (mask pixels) with a round brush of that diameter, live (no undo step)."""
        with _painter(self.mask) as painter:
            pen = QPen(KEEP if erase else REPAINT, brush_px, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                       Qt.PenJoinStyle.RoundJoin)
            painter.setPen(pen)
            if path.elementCount() == 1:  # a click: one dot
                painter.drawPoint(QPointF(path.elementAt(0).x, path.elementAt(0).y))
            else:
                painter.drawPath(path)

    def fill_rect(self, rect: QRectF, erase: bool) -> None:
        with _painter(self.mask) as painter:
            painter.fillRect(rect, KEEP if erase else REPAINT)

    def clear_mask(self) -> None:
        before = self.mask.copy()
        self.mask.fill(KEEP)
        self.record(before, "clear mask")

    def record(self, before: QImage, text: str) -> None:
        """One undo step from ``before`` to the mask as it is now, once an edit is complete."""
        if before != self.mask:
            self.history.push(_MaskEdit(self, before, self.mask.copy(), text))
        self.maskChanged.emit()

    def set_mask(self, mask: QImage) -> None:
        """Put back a recorded mask, at the output size (it may have changed since)."""
        width, height = self.output_size
        self.mask = mask.scaled(width, height, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.FastTransformation)
        self.maskChanged.emit()


class _MaskEdit(QUndoCommand):
    def __init__(self, photo: StartPhoto, before: QImage, after: QImage, text: str) -> None:
        super().__init__(text)
        self._photo, self._before, self._after = photo, before, after
        self._pushed = False

    def undo(self) -> None:
        self._photo.set_mask(self._before)

    def redo(self) -> None:
        if self._pushed:  # the first redo (on push) is the edit already on screen
            self._photo.set_mask(self._after)
        self._pushed = True


class _painter:
    """A QPainter over an image, ended on leaving the block (an unended painter corrupts the image)."""

    def __init__(self, image: QImage) -> None:
        self._painter = QPainter(image)

    def __enter__(self) -> QPainter:
        return self._painter

    def __exit__(self, *_exc) -> None:
        self._painter.end()
