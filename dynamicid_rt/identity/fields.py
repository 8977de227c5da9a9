"""The fields of an :class:`~dynamicid_rt.Identity` checked when one is made: every wrong type or
value is a RequestError naming the field, and arrays are checked after they are cast to the dtype
they are kept in (1e39 is finite as a float64 and infinite as a float32)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RequestError

if TYPE_CHECKING:
    from .value import Identity

MAX_CONTEXT = 4096  # no CLIP width is wider


def _array(value: object, name: str, dtype: type) -> np.ndarray:
    if isinstance(value, (str, bytes)) or value is None:
        raise RequestError(f"{name}={value!r}: must be an array of numbers")
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise RequestError(f"{name} is not an array ({exc})") from None
    if raw.dtype == np.bool_ or not np.issubdtype(raw.dtype, np.number) or np.issubdtype(raw.dtype, np.complexfloating):
        raise RequestError(f"{name} has dtype {raw.dtype}; expected numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.ascontiguousarray(raw, dtype=dtype)
    if np.issubdtype(dtype, np.floating) and not np.all(np.isfinite(array)):
        raise RequestError(f"{name} hold NaN or infinite values (as {np.dtype(dtype).name})")
    return array


def checked_tokens(tokens: object, name: str = "tokens") -> np.ndarray:
    """(4, C) float32 tokens with 1 <= C <= MAX_CONTEXT, finite after the cast."""
    raw = np.asarray(tokens) if isinstance(tokens, np.ndarray) else tokens
    if isinstance(raw, np.ndarray) and not np.issubdtype(raw.dtype, np.floating):
        raise RequestError(f"{name} have dtype {raw.dtype}; expected (4, C) floats (C = 768 for SD1.5)")
    array = _array(tokens, name, np.float32)
    if array.ndim != 2 or array.shape[0] != 4 or not 1 <= array.shape[1] <= MAX_CONTEXT:
        raise RequestError(f"{name} have shape {array.shape}; expected (4, C) floats (C = 768 for SD1.5)")
    return array


def _numbers(value: object, name: str, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") or len(value) != count:
        raise RequestError(f"{name}={value!r}: expected None or {count} numbers")
    out = []
    for v in value:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)):
            raise RequestError(f"{name}={value!r}: expected None or {count} finite numbers")
        out.append(float(v))
    return tuple(out)


def _count(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise RequestError(f"{name}={value!r}: must be a whole number >= 0")
    return int(value)


def check_identity_fields(identity: "Identity") -> None:
    """Check and normalise ``identity``'s fields in place (tokens first)."""
    from ..request import check_text

    identity.tokens = checked_tokens(identity.tokens)
    if identity.base_tokens is not None:
        identity.base_tokens = checked_tokens(identity.base_tokens, "base_tokens")
    identity.face_box = _numbers(identity.face_box, "face_box", 4)
    identity.pose = _numbers(identity.pose, "pose", 3)
    if identity.landmarks is not None:
        identity.landmarks = _array(identity.landmarks, "landmarks", np.float32)
        if identity.landmarks.shape != (106, 2):
            raise RequestError(f"landmarks have shape {identity.landmarks.shape}; expected (106, 2)")
    if identity.embedding is not None:
        identity.embedding = _array(identity.embedding, "embedding", np.float32)
        if identity.embedding.shape != (512,):
            raise RequestError(f"embedding has shape {identity.embedding.shape}; expected (512,) (insightface's normed_embedding)")
    if identity.thumbnail is not None:
        thumb = np.asarray(identity.thumbnail) if isinstance(identity.thumbnail, np.ndarray) else None
        if thumb is None or thumb.dtype != np.uint8 or thumb.ndim != 3 or thumb.shape[2] != 3:
            raise RequestError("thumbnail must be an (H, W, 3) uint8 array, or None")
    identity.num_faces = _count(identity.num_faces, "num_faces")
    identity.face_index = _count(identity.face_index, "face_index")
    if not isinstance(identity.warnings, list) or not all(isinstance(w, str) for w in identity.warnings):
        raise RequestError(f"warnings={identity.warnings!r}: must be a list of text")
    for name in ("name", "source_prompt", "model_fingerprint"):
        check_text(name, getattr(identity, name))
    if identity.face_prompt is not None:
        check_text("face_prompt", identity.face_prompt)
