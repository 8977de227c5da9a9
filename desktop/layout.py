"""Where a new person's box goes, and the undo history of box edits.

A layout the user arranged (a box moved or resized, or boxes restored from a PNG) is never
rearranged behind their back: a new person gets the largest free region, a removed person's box
simply goes. Only an untouched layout follows the default: the painted regions of an inpainting
mask where they give everyone a box (what the generator does with no boxes), else the release's
equal vertical strips.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from PySide6.QtGui import QUndoCommand, QUndoStack

from dynamicid_rt import Box, default_boxes

from .person import Person, Role, Status


def _overlaps(a: Box, b: Box) -> bool:
    """Interiors intersect (boxes that only touch along an edge do not overlap)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def free_region(boxes: Sequence[Box], min_h: float, min_w: float) -> Box | None:
    """The largest box that overlaps none of ``boxes`` and is at least ``min_h`` × ``min_w``
    (fractions of the frame); None when there is no such room. Its edges lie on the frame's or
    on the other boxes' edges, so a few candidates per box cover every maximal empty rectangle."""
    ys = sorted({0.0, 1.0, *(v for b in boxes for v in (b[0], b[2]))})
    xs = sorted({0.0, 1.0, *(v for b in boxes for v in (b[1], b[3]))})
    best: Box | None = None
    best_area = 0.0
    for (y0, y1), (x0, x1) in itertools.product(itertools.combinations(ys, 2), itertools.combinations(xs, 2)):
        area = (y1 - y0) * (x1 - x0)
        if y1 - y0 < min_h or x1 - x0 < min_w or area <= best_area:
            continue
        candidate = (y0, x0, y1, x1)
        if not any(_overlaps(candidate, b) for b in boxes):
            best, best_area = candidate, area
    return best


@dataclass(frozen=True)
class LayoutState:
    """Every box-related setting of the people model, keyed by person (rows change, keys do not)."""

    arranged: bool
    boxes: Mapping[int, Box | None]
    mix: bool
    shared_box: Box


class _LayoutCommand(QUndoCommand):
    def __init__(self, model: "BoxLayout", before: LayoutState, after: LayoutState, text: str) -> None:
        super().__init__(text)
        self._model, self._before, self._after = model, before, after

    def undo(self) -> None:
        self._model.apply_layout(self._before)

    def redo(self) -> None:
        self._model.apply_layout(self._after)  # the first redo (on push) re-applies what is already shown


class LayoutHistory(QUndoStack):
    """Undo/redo of box edits. Each edit is recorded once it is complete (a whole drag, a reset,
    a restore): ``before = history.snapshot()``, change the boxes, ``history.record(before, text)``."""

    def __init__(self, model: "BoxLayout") -> None:
        super().__init__(model)
        self._model = model

    def snapshot(self) -> LayoutState:
        return self._model.layout_state()

    def record(self, before: LayoutState, text: str) -> None:
        after = self._model.layout_state()
        if after != before:
            self.push(_LayoutCommand(self._model, before, after, text))


class BoxLayout:
    """The box rules of :class:`~.people.PeopleModel` (which provides ``_people``, ``index``,
    ``dataChanged``, ``mixChanged``, ``arranged``, ``min_box`` and the mixing state used here)."""

    _people: list[Person]
    arranged: bool
    min_box: tuple[float, float]
    _mix: bool
    _shared_box: Box
    # The default boxes for n people when not the strips (a mask's regions); None: no such boxes.
    region_boxes: Callable[[int], list[Box] | None] | None = None

    def set_region_boxes(self, boxes_for: Callable[[int], list[Box] | None] | None) -> None:
        """Where an untouched layout's boxes come from (``boxes_for(n)``, or the strips when it gives
        None); an arranged layout stays as the user left it."""
        self.region_boxes = boxes_for
        if not self.arranged:
            self._default_layout()

    def reset_boxes(self) -> None:
        """Back to the default layout (the mask's regions or equal vertical strips), which then
        follows the people present until a box is edited again."""
        self.arranged = False
        self._default_layout()

    def _default_layout(self) -> None:
        """The mask's regions, else equal vertical strips, over the people whose photo can be used;
        a photo without a usable face gets no box."""
        placed = [row for row, p in enumerate(self._people) if p.status is not Status.ERROR]
        regions = self.region_boxes(len(placed)) if self.region_boxes is not None and placed else None
        for row, box in zip(placed, regions or default_boxes(len(placed))):
            self._place(row, box)
        for row, p in enumerate(self._people):
            if p.status is Status.ERROR and p.box is not None:
                self._place(row, None)

    def _place(self, row: int, box: Box | None) -> None:
        """Set a box as the layout rules decide (not a user edit: ``arranged`` stays as it is)."""
        p = self._people[row]
        if box is None and p.box is not None:
            p.parked_box = p.box
        p.box = box
        index = self.index(row)
        self.dataChanged.emit(index, index, [Role.BOX])

    def _place_arranged(self, row: int) -> None:
        """A box for a person (new, or back from a failed photo) that leaves every other box alone:
        the one they had, else the largest free region, else a strip at the right over the others."""
        p = self._people[row]
        others = [q.box for q in self._people if q is not p and q.box is not None]
        if p.parked_box is not None:
            box = p.parked_box
        else:
            box = free_region(others, *self.min_box)
            if box is None:
                box = (0.0, 1.0 - 1.0 / len(self._people), 1.0, 1.0)
        self._place(row, box)

    # -- layout state (undo/redo) ---------------------------------------------------------------

    def layout_state(self) -> LayoutState:
        return LayoutState(self.arranged, {p.key: p.box for p in self._people}, self._mix, self._shared_box)

    def apply_layout(self, state: LayoutState) -> None:
        """Put back a recorded layout for the people still present (others keep their box)."""
        for row, p in enumerate(self._people):
            if p.key not in state.boxes:
                continue
            if p.status is Status.ERROR:
                p.parked_box = state.boxes[p.key] or p.parked_box  # theirs again once the photo works
            else:
                self._place(row, state.boxes[p.key])
        self.arranged = state.arranged
        self._shared_box = state.shared_box
        self.set_mix(state.mix)
        self.mixChanged.emit()

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
