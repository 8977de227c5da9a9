"""Is each person recognisable in a generated image? Faces → boxes → ArcFace cosine similarity.

Pure numpy over detected faces (anything with ``bbox`` (x0, y0, x1, y1) in pixels and an L2-normed
``embedding``), so it stands in layer 1 beside the result types; the pipeline runs the face
analysis and hands the faces in (:meth:`dynamicid_rt.Pipeline.check_identities`).
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from ..errors import RequestError
from ..results import IdentityMatch

Box = tuple[float, float, float, float]  # (y0, x0, y1, x1) in [0, 1] of the image


class FaceLike(Protocol):
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    embedding: np.ndarray  # (512,) L2-normalised ArcFace embedding


def reference_embeddings(people: Sequence[object]) -> list[np.ndarray]:
    """Each person's reference ArcFace embedding (``embedding`` of an encoded Identity)."""
    found = []
    for person in people:
        embedding = getattr(person, "embedding", None)
        if embedding is None:
            raise RequestError(f"person {getattr(person, 'name', '?')!r} has no reference face embedding (made from tokens, "
                               "or saved by an older version): encode them from their photo to check their likeness")
        found.append(np.asarray(embedding, np.float32).ravel())
    return found


def face_in_box(faces: Sequence[FaceLike], box: Box, width: int, height: int) -> int | None:
    """Index of the largest face whose centre lies inside ``box`` (image of ``width``×``height``)."""
    y0, x0, y1, x1 = box
    best, best_area = None, -1.0
    for i, face in enumerate(faces):
        fx0, fy0, fx1, fy1 = face.bbox
        cx, cy = (fx0 + fx1) / 2 / width, (fy0 + fy1) / 2 / height
        area = max(0.0, fx1 - fx0) * max(0.0, fy1 - fy0)
        if x0 <= cx <= x1 and y0 <= cy <= y1 and area > best_area:
            best, best_area = i, area
    return best


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def match_identities(
    faces: Sequence[FaceLike],
    references: Sequence[np.ndarray],
    names: Sequence[str],
    boxes: Sequence[Box],
    width: int,
    height: int,
) -> list[IdentityMatch]:
    """Each person's match in one image. A face more similar to another person's reference than
    to its own is a swap, unless both people share the box (several identities mixed in one)."""
    matches = []
    for j, (reference, name, box) in enumerate(zip(references, names, boxes)):
        index = face_in_box(faces, box, width, height)
        if index is None:
            matches.append(IdentityMatch(name, tuple(box), None, None))
            continue
        face = faces[index]
        scores = [cosine(face.embedding, r) for r in references]
        rivals = [k for k in range(len(references)) if k != j and tuple(boxes[k]) != tuple(box) and scores[k] > scores[j]]
        looks_like = names[max(rivals, key=lambda k: scores[k])] if rivals else None
        matches.append(IdentityMatch(name, tuple(box), scores[j], tuple(face.bbox), looks_like))
    return matches


def rank_key(matches: Sequence[IdentityMatch]) -> tuple[int, int, float]:
    """Sort key for best-of-N, best first: fewer missing faces (a person absent from the picture
    is the worst defect), then fewer swapped faces (the person is there, in another's place),
    then the highest lowest per-person similarity (an image is as good as its least recognisable
    person)."""
    missing = sum(not m.found for m in matches)
    swapped = sum(m.found and m.swapped for m in matches)
    lowest = min((m.similarity for m in matches if m.similarity is not None), default=-1.0)
    return missing, swapped, -lowest
