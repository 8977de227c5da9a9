"""Deprecated: reading a saved identity now lives in :mod:`dynamicid_rt.identity`, beside the
:class:`~dynamicid_rt.identity.Identity` it holds and the checks it must pass."""
from __future__ import annotations

import warnings

from .identity import ARRAYS, MAX_ARRAY_ELEMENTS, MAX_FILE_BYTES, MAX_META_BYTES, read_identity_file

warnings.warn("dynamicid_rt.identity_file is deprecated; import read_identity_file from dynamicid_rt.identity",
              DeprecationWarning, stacklevel=2)

__all__ = ["ARRAYS", "MAX_ARRAY_ELEMENTS", "MAX_FILE_BYTES", "MAX_META_BYTES", "read_identity_file"]
