"""One result of the session as a value: the image with what its PNG and its badges need. The
gallery's model holds these and its delegate draws them; neither imports the other for it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import Qt

from dynamicid_rt import format_parameters

if TYPE_CHECKING:
    from PIL import Image

    from dynamicid_rt import IdentityMatch, Result

ENTRY_ROLE = Qt.ItemDataRole.UserRole + 1


@dataclass
class GalleryEntry:
    """One image of this session, with what its PNG and its badges need."""

    image: "Image.Image"
    parameters: str  # the PNG "parameters" text
    seed: int
    names: list[str]  # the people, in request order
    colors: list[tuple[int, int, int]]  # their box colours, in request order
    matches: list["IdentityMatch"] | None = None  # each person's likeness (None: not measured)
    activation_map: np.ndarray | None = None  # (N, h, w) in [0, 1]
    saved: Path | None = None
    ranked: bool = False  # from a best-of run (best first)


def entries_of(result: "Result", colors: list[tuple[int, int, int]]) -> list[GalleryEntry]:
    names = [person.name for person in result.request.identities]
    scores = result.identity_scores or [None] * len(result.images)
    maps = result.activation_maps or [None] * len(result.images)
    ranked = result.request.best_of > 1
    return [
        GalleryEntry(image, format_parameters(result, i), result.seeds[i], names, list(colors), scores[i], maps[i],
                     ranked=ranked)
        for i, image in enumerate(result.images)
    ]
