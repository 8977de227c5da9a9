"""Trusting stored identities: a cache entry or a saved file is used only after it is validated
against the loaded model (shapes, dtypes, finite values, every metadata field present and known,
the model fingerprint). A cache entry that fails is a miss with a logged reason, never an error."""
from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ImageError, RequestError
from .identity import IDENTITY_FORMAT, Identity
from .identity_file import read_identity_file

log = logging.getLogger(__name__)

_ARRAYS = ("tokens", "base_tokens", "landmarks", "thumbnail", "embedding")


def _meta_fields() -> set[str]:
    return {f.name for f in fields(Identity)} - set(_ARRAYS) | {"format"}


def _array_problem(name: str, array: np.ndarray, shape: tuple, dtype) -> str | None:
    if array.dtype != dtype:
        return f"{name} has dtype {array.dtype}, expected {np.dtype(dtype)}"
    if len(array.shape) != len(shape) or any(want is not None and have != want for have, want in zip(array.shape, shape)):
        return f"{name} has shape {array.shape}, expected {tuple('*' if s is None else s for s in shape)}"
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        return f"{name} holds NaN or infinite values"
    return None


def entry_problem(path: Path, context_dim: int, fingerprint: str) -> str | None:
    """Why the identity file at ``path`` cannot be trusted for this model, or None."""
    try:
        meta, arrays = read_identity_file(path)
    except ImageError as exc:
        return f"unreadable ({exc})"
    if meta.get("format") != IDENTITY_FORMAT:
        return f"format {meta.get('format')!r}, this version writes {IDENTITY_FORMAT}"
    unknown, missing = set(meta) - _meta_fields(), _meta_fields() - set(meta)
    if unknown or missing:
        return f"metadata fields unknown: {sorted(unknown)}, missing: {sorted(missing)}"
    if set(arrays) - set(_ARRAYS) or not {"tokens", "base_tokens"} <= set(arrays):
        return f"arrays {sorted(arrays)} are not an encoded identity's"
    expected = {"tokens": ((4, context_dim), np.float32), "base_tokens": ((4, context_dim), np.float32),
                "landmarks": ((106, 2), np.float32), "thumbnail": ((None, None, 3), np.uint8), "embedding": ((512,), np.float32)}
    for name, array in arrays.items():
        problem = _array_problem(name, array, *expected[name])
        if problem:
            return problem
    if meta["model_fingerprint"] != fingerprint:
        return f"made by another model (fingerprint {meta['model_fingerprint']!r}, this model {fingerprint!r})"
    return None


def load_cached(path: Path, context_dim: int, fingerprint: str) -> Identity | None:
    """The cached identity at ``path`` if it validates; otherwise None, with the reason logged."""
    if not path.is_file():
        return None
    problem = entry_problem(path, context_dim, fingerprint)
    if problem is None:
        try:
            return Identity.load(path)
        except Exception as exc:  # validated above; anything left is still only a miss
            problem = f"{type(exc).__name__}: {exc}"
    log.warning("identity cache entry %s is not usable (%s); re-encoding the photo", path.name, problem)
    return None


def load_saved(path: str | Path, context_dim: int, fingerprint: str, allow_other_model: bool = False) -> Identity:
    """A saved identity for this model; one made by another model is refused unless
    ``allow_other_model`` (then used with a warning)."""
    try:
        identity = Identity.load(path)
    except (TypeError, KeyError, ValueError) as exc:  # fields this version does not know, or lacks
        raise RequestError(f"{path} is not an identity file this version can read ({exc}); encode the photo again") from exc
    check_tokens_fit([identity], context_dim)
    if identity.model_fingerprint and identity.model_fingerprint != fingerprint:
        if not allow_other_model:
            raise RequestError(
                f"identity file {path} was encoded with another model (fingerprint {identity.model_fingerprint}, "
                f"this model {fingerprint}): encode the photo again with this model, or load it with allow_other_model=True"
            )
        log.warning("identity file %s was encoded with another model; using it anyway as asked", path)
        identity.model_fingerprint = fingerprint
    return identity


def check_tokens_fit(identities: Sequence[Identity], context_dim: int) -> None:
    for ident in identities:
        tokens = np.asarray(ident.tokens)
        if tokens.shape != (4, context_dim) or not np.all(np.isfinite(tokens)):
            raise RequestError(f"identity {ident.name!r} has tokens of shape {tokens.shape} (or non-finite values); "
                               f"this model needs finite (4, {context_dim}): encode its photo with this model")


def check_same_model(identities: Sequence[Identity], fingerprint: str) -> None:
    """Refuse identities that record another model's fingerprint (before any work starts)."""
    for ident in identities:
        theirs = getattr(ident, "model_fingerprint", "")
        if theirs and theirs != fingerprint:
            raise RequestError(
                f"identity {ident.name!r} was encoded with another model (fingerprint {theirs}, this model "
                f"{fingerprint}): encode its photo with this model, or use Pipeline.load_identity(..., allow_other_model=True)"
            )
