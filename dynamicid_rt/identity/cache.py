"""The identity cache: encoded identities on disk, one ``.npz`` per photo, settings, model and
backend. An entry is used only after it validates against the loaded model
(:func:`~dynamicid_rt.identity.value.entry_problem`); one that fails is a miss with a logged reason,
never an error."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .value import IDENTITY_FORMAT, Identity, entry_problem

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

