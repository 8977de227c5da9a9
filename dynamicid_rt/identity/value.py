"""One person's identity: the :class:`Identity` value, its file (``.npz``) and the checks that
decide whether a stored identity can be used with the loaded model.

A file is read as untrusted input: a regular file of bounded size, the members an identity has,
each array's size read from its header before any of it is allocated (an ``.npy`` header can
promise terabytes), no pickles. The encoder that makes identities from photos is
:mod:`dynamicid_rt.identity.encoder`; its on-disk cache is :mod:`dynamicid_rt.identity.cache`.
"""
from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ImageError, RequestError
from ..files.atomic import atomic_write
from ..files.checks import check_regular_file

log = logging.getLogger(__name__)

IDENTITY_FORMAT = 2  # 2: adds the ArcFace embedding
READABLE_FORMATS = (1, IDENTITY_FORMAT)  # format 1 lacks only the embedding
# The file's arrays as the encoder writes them ("C": the model's context width, None: any size);
# every other field of Identity is metadata (one JSON object).
ARRAY_LAYOUT: dict[str, tuple[tuple[int | str | None, ...], type]] = {
    "tokens": ((4, "C"), np.float32),
    "base_tokens": ((4, "C"), np.float32),
    "landmarks": ((106, 2), np.float32),
    "thumbnail": ((None, None, 3), np.uint8),
    "embedding": ((512,), np.float32),
}
ARRAYS = tuple(ARRAY_LAYOUT)
MAX_FILE_BYTES = 64 << 20  # a saved identity is a few hundred kB (the thumbnail is most of it)
MAX_ARRAY_ELEMENTS = 4 << 20
MAX_META_BYTES = 1 << 20


@dataclass
class Identity:
    """One person: their ID tokens plus what a UI shows about the reference photo.

    Satisfies :class:`dynamicid_rt.request.Person`. The photo fields are None (or empty) for
    identities made without face analysis (:meth:`from_tokens`, encoding from an embedding).
    """

    tokens: np.ndarray  # (4, C) float32: the tokens used for generation (after the expression edit)
    base_tokens: np.ndarray | None = None  # (4, C) float32: the projector's tokens before any edit
    face_box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) in photo pixels
    landmarks: np.ndarray | None = None  # (106, 2) photo pixels
    pose: tuple[float, float, float] | None = None  # as insightface returns it
    source_prompt: str = ""
    face_prompt: str | None = None
    thumbnail: np.ndarray | None = None  # (S, S, 3) uint8 face crop
    num_faces: int = 0
    face_index: int = 0
    warnings: list[str] = field(default_factory=list)
    name: str = ""
    # (512,) the reference face's ArcFace embedding, kept to measure likeness in results
    # (None for identities made from tokens alone).
    embedding: np.ndarray | None = None
    # Which weights made the tokens (dynamicid_rt.modelfiles.fingerprint); saved files record it. "" = unknown.
    model_fingerprint: str = ""

    def __post_init__(self) -> None:
        """An Identity that exists can be generated with: finite (4, C) tokens, every field of its
        type (:mod:`dynamicid_rt.identity.fields`)."""
        from .fields import check_identity_fields

        check_identity_fields(self)

    @property
    def edited(self) -> bool:
        return self.face_prompt is not None

    @classmethod
    def from_tokens(cls, tokens, name: str = "person", face_prompt: str | None = None) -> "Identity":
        """An identity from stored ID tokens (4, C), e.g. ones an app saved or another tool made."""
        return cls(tokens=tokens, name=name, face_prompt=face_prompt)

    def save(self, path: str | Path) -> Path:
        """Save as a small ``.npz`` file (atomic)."""
        meta = {k: v for k, v in asdict(self).items() if k not in ARRAYS}
        meta["format"] = IDENTITY_FORMAT
        arrays = {k: getattr(self, k) for k in ARRAYS if getattr(self, k) is not None}
        with atomic_write(path) as f:  # OutputError for a folder, /proc, a full disk, a path that is none
            np.savez_compressed(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Identity":
        """A saved identity; ImageError for any file that is not one (read by
        :func:`read_identity_file`, with its caps)."""
        meta, arrays = read_identity_file(path)
        if meta.pop("format", None) not in READABLE_FORMATS:
            raise ImageError(f"{path} was saved by an incompatible version of dynamicid-rt; encode the photo again")
        unknown = set(meta) - {f.name for f in fields(cls)} | set(meta) & set(ARRAYS)
        if unknown:
            raise ImageError(f"{path} is not an identity file this version can read (unknown fields {sorted(unknown)}); encode the photo again")
        try:
            for key in ("face_box", "pose"):
                meta[key] = tuple(float(v) for v in meta[key]) if meta.get(key) is not None else None
            return cls(**arrays, **meta)
        except (TypeError, ValueError) as exc:  # RequestError is a ValueError: NaN tokens, a bad field
            raise ImageError(f"{path} is not a usable saved identity ({exc}); encode the photo again") from exc


# -- the file -------------------------------------------------------------------------------------

def read_identity_file(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata (a JSON object) and arrays of a saved identity; every failure is an ImageError."""
    file = check_regular_file(path, "identity file", ImageError)
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{file} is {size} bytes, too large for a saved identity (at most {MAX_FILE_BYTES}); encode the photo again")
    try:
        with zipfile.ZipFile(file) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            unknown = set(members) - {"meta", *ARRAYS}
            if unknown or "meta" not in members:
                raise ImageError(f"{file} is not a saved identity (members {sorted(members)})")
            arrays = {name: _read_array(archive, info, file) for name, info in members.items()}
    except ImageError:
        raise
    except Exception as exc:  # zip, zlib and npy errors come in many types
        raise ImageError(f"{file} is not a saved identity ({type(exc).__name__}: {exc})") from exc
    meta_bytes = arrays.pop("meta")
    if meta_bytes.dtype != np.uint8 or meta_bytes.ndim != 1 or meta_bytes.size > MAX_META_BYTES:
        raise ImageError(f"{file} is not a saved identity (its metadata is not a JSON text)")
    try:
        meta = json.loads(meta_bytes.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise ImageError(f"{file} is not a saved identity (unreadable metadata: {type(exc).__name__})") from exc
    if not isinstance(meta, dict):
        raise ImageError(f"{file} is not a saved identity (its metadata is not a JSON object)")
    return meta, arrays


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, file: Path) -> np.ndarray:
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
        if dtype.hasobject:
            raise ImageError(f"{file}: member {info.filename} holds Python objects (a pickle); refusing to read it")
        if int(np.prod(shape, dtype=np.float64)) > MAX_ARRAY_ELEMENTS:
            raise ImageError(f"{file}: member {info.filename} has shape {shape}, too large for a saved identity")
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


# -- against the loaded model ---------------------------------------------------------------------

def _meta_fields() -> set[str]:
    return {f.name for f in fields(Identity)} - set(ARRAYS) | {"format"}


def _array_problem(name: str, array: np.ndarray, context_dim: int) -> str | None:
    layout, dtype = ARRAY_LAYOUT[name]
    shape = tuple(context_dim if s == "C" else s for s in layout)
    if array.dtype != dtype:
        return f"{name} has dtype {array.dtype}, expected {np.dtype(dtype)}"
    if len(array.shape) != len(shape) or any(want is not None and have != want for have, want in zip(array.shape, shape)):
        return f"{name} has shape {array.shape}, expected {tuple('*' if s is None else s for s in shape)}"
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        return f"{name} holds NaN or infinite values"
    return None


def entry_problem(path: Path, context_dim: int, fingerprint: str) -> str | None:
    """Why the identity file at ``path`` is not exactly what this version's encoder writes for this
    model (format, every metadata field present and known, array shapes and dtypes, finite values,
    the model fingerprint), or None. What a cache entry must pass before it is used."""
    try:
        meta, arrays = read_identity_file(path)
    except ImageError as exc:
        return f"unreadable ({exc})"
    if meta.get("format") != IDENTITY_FORMAT:
        return f"format {meta.get('format')!r}, this version writes {IDENTITY_FORMAT}"
    unknown, missing = set(meta) - _meta_fields(), _meta_fields() - set(meta)
    if unknown or missing:
        return f"metadata fields unknown: {sorted(unknown)}, missing: {sorted(missing)}"
    if set(arrays) - set(ARRAYS) or not {"tokens", "base_tokens"} <= set(arrays):
        return f"arrays {sorted(arrays)} are not an encoded identity's"
    for name, array in arrays.items():
        problem = _array_problem(name, array, context_dim)
        if problem:
            return problem
    if meta["model_fingerprint"] != fingerprint:
        return f"made by another model (fingerprint {meta['model_fingerprint']!r}, this model {fingerprint!r})"
    return None


def check_tokens_fit(identities: Sequence[Identity], context_dim: int) -> None:
    """Every identity's tokens are finite numbers of shape (4, context_dim): made for this model."""
    for ident in identities:
        tokens = np.asarray(ident.tokens)
        if tokens.shape != (4, context_dim) or not np.issubdtype(tokens.dtype, np.number) or not np.all(np.isfinite(tokens)):
            raise RequestError(f"identity {ident.name!r} has tokens of shape {tokens.shape} (or non-finite values); "
                               f"this model needs finite (4, {context_dim}): encode its photo with this model")


def stack_identity_tokens(identities: Sequence[Identity], context_dim: int) -> np.ndarray:
    """(4N, C) tokens of the identities in order; checks they fit this model."""
    check_tokens_fit(identities, context_dim)
    return np.concatenate([i.tokens for i in identities], axis=0).astype(np.float32)


def check_same_model(identities: Sequence[Identity], fingerprint: str) -> None:
    """Refuse identities that record another model's fingerprint (before any work starts)."""
    for ident in identities:
        theirs = getattr(ident, "model_fingerprint", "")
        if theirs and theirs != fingerprint:
            raise RequestError(
                f"identity {ident.name!r} was encoded with another model (fingerprint {theirs}, this model "
                f"{fingerprint}): encode its photo with this model, or use Pipeline.load_identity(..., allow_other_model=True)"
            )


def load_saved(path: str | Path, context_dim: int, fingerprint: str, allow_other_model: bool = False) -> Identity:
    """A saved identity for this model; one made by another model is refused unless
    ``allow_other_model`` (then used with a warning)."""
    identity = Identity.load(path)
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

