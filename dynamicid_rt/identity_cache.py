"""The identity cache: encoded identities on disk, one ``.npz`` per photo, settings, model and
backend. An entry is used only after it validates against the loaded model
(:func:`~dynamicid_rt.identity.entry_problem`); one that fails is a miss with a logged reason,
never an error."""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import identity as _identity
from .identity import IDENTITY_FORMAT, Identity, entry_problem

log = logging.getLogger(__name__)

__all__ = ["cache_key", "entry_problem", "load_cached"]


def cache_key(model_fingerprint: str, backend: Mapping[str, Any], pixels: np.ndarray, *settings) -> str:
    """The entry name of ``pixels`` encoded with ``settings`` by this model on this backend
    (``backend``: its description)."""
    h = hashlib.sha256()
    h.update(f"{IDENTITY_FORMAT}:{model_fingerprint}".encode())
    h.update(json.dumps(backend, sort_keys=True).encode())
    h.update(f"{pixels.shape}".encode())
    h.update(pixels.tobytes())
    for s in settings:
        h.update(s.tobytes() if isinstance(s, np.ndarray) else repr(s).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


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


# Checks of saved identities that lived here; they belong to the identity file's module.
_MOVED = ("load_saved", "check_tokens_fit", "check_same_model")


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(f"dynamicid_rt.identity_cache.{name} is deprecated; import it from dynamicid_rt.identity",
                      DeprecationWarning, stacklevel=2)
        return getattr(_identity, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
