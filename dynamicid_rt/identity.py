"""Identity encoding: face photo → 4 ID tokens (SPEC §1.2–1.4), with an on-disk cache.

Runs every model through a :class:`~dynamicid_rt.backends.base.Backend`, so it never imports torch.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .atomic import atomic_write
from .errors import ImageError, ModelFolderError, NoFaceError, NumericalError, RequestError
from .faces import face_crop, face_thumbnail, load_photo, raster_from_landmarks, source_face_prompt

if TYPE_CHECKING:
    from .backends.base import Backend
    from .faces import DetectedFace, FaceAnalyzer
    from .text import PromptEncoder

log = logging.getLogger(__name__)

IDENTITY_FORMAT = 2  # 2: adds the ArcFace embedding
_ARRAYS = ("tokens", "base_tokens", "landmarks", "thumbnail")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    # Which weights made the tokens (dynamicid_rt.fingerprint); saved files record it. "" = unknown.
    model_fingerprint: str = ""

    def __post_init__(self) -> None:
        """An Identity that exists can be generated with: finite (4, C) tokens, text fields."""
        from .request import check_text

        self.tokens = _checked_tokens(self.tokens)
        if self.base_tokens is not None:
            self.base_tokens = _checked_tokens(self.base_tokens, "base_tokens")
        for name in ("name", "source_prompt"):
            check_text(name, getattr(self, name))
        if self.face_prompt is not None:
            check_text("face_prompt", self.face_prompt)

    @property
    def edited(self) -> bool:
        return self.face_prompt is not None

    @classmethod
    def from_tokens(cls, tokens, name: str = "person", face_prompt: str | None = None) -> "Identity":
        """An identity from stored ID tokens (4, C), e.g. ones an app saved or another tool made."""
        return cls(tokens=_checked_tokens(tokens), name=name, face_prompt=face_prompt)

    def save(self, path: str | Path) -> Path:
        """Save as a small ``.npz`` file (atomic)."""
        meta = {k: v for k, v in asdict(self).items() if k not in _ARRAYS + ("embedding",)}
        meta["format"] = IDENTITY_FORMAT
        arrays = {k: getattr(self, k) for k in _ARRAYS + ("embedding",) if getattr(self, k) is not None}
        path = Path(path)
        with atomic_write(path) as f:
            np.savez_compressed(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Identity":
        """A saved identity; ImageError for any file that is not one (read by
        :func:`~dynamicid_rt.identity_file.read_identity_file`, with its caps)."""
        from .identity_file import read_identity_file

        meta, arrays = read_identity_file(path)
        if meta.pop("format", None) not in (1, IDENTITY_FORMAT):  # format 1 lacks only the embedding
            raise ImageError(f"{path} was saved by an incompatible version of dynamicid-rt; encode the photo again")
        unknown = set(meta) - {f.name for f in fields(cls)} | set(meta) & set(_ARRAYS + ("embedding",))
        if unknown:
            raise ImageError(f"{path} is not an identity file this version can read (unknown fields {sorted(unknown)}); encode the photo again")
        try:
            for key in ("face_box", "pose"):
                meta[key] = tuple(float(v) for v in meta[key]) if meta.get(key) is not None else None
            return cls(**arrays, **meta)
        except (TypeError, ValueError) as exc:  # RequestError is a ValueError: NaN tokens, a bad field
            raise ImageError(f"{path} is not a usable saved identity ({exc}); encode the photo again") from exc


def _checked_tokens(tokens, name: str = "tokens") -> np.ndarray:
    try:
        array = np.asarray(tokens)
    except ValueError as exc:  # ragged nested lists
        raise RequestError(f"{name} is not a (4, C) array ({exc})") from None
    if array.ndim != 2 or array.shape[0] != 4 or not np.issubdtype(array.dtype, np.floating):
        raise RequestError(f"{name} have shape {array.shape} and dtype {array.dtype}; expected (4, C) floats (C = 768 for SD1.5)")
    if not np.all(np.isfinite(array)):
        raise RequestError(f"{name} hold NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_options(face_index: int | None = None, **texts: str | None) -> None:
    """Encoding options checked before any photo is read or model runs."""
    from .request import check_text

    for name, value in texts.items():
        if value is not None:
            check_text(name, value)
    if face_index is not None and (isinstance(face_index, bool) or not isinstance(face_index, (int, np.integer)) or face_index < 0):
        raise RequestError(
            f"face_index={face_index!r}: must be a whole number >= 0 (faces are counted from 0), or None for the largest face"
        )


def _checked_embedding(embedding) -> np.ndarray:
    """(512,) float32 of unit length: ArcFace embeddings are compared by direction only (SPEC §1.2)."""
    array = np.asarray(embedding, dtype=np.float64)
    if array.shape not in ((512,), (1, 512)):
        raise RequestError(f"ArcFace embedding has shape {array.shape}; expected (512,) (insightface's normed_embedding)")
    array = array.reshape(512)
    norm = float(np.linalg.norm(array))
    if not np.isfinite(norm) or norm == 0.0:
        raise RequestError("ArcFace embedding is zero or not finite; pass insightface's normed_embedding of the face")
    return (array / norm).astype(np.float32)


def clip_pixel_values(photo: np.ndarray, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """CLIP's default preprocessing of an RGB uint8 photo, step for step as transformers'
    ``CLIPImageProcessor`` runs it with PIL (what the release ran): shortest side to ``size`` with
    PIL bicubic (long side truncated to an int), centre crop (offsets rounded down), ×(1/255) in
    float64 then float32, ``(x - mean) / std`` in float32. Returns (3, size, size) float32."""
    from PIL import Image

    h, w = photo.shape[:2]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    resized = np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top : top + size, left : left + size]
    scaled = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    normalised = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def _check_finite(stage: str, array: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise NumericalError(f"the {stage} stage produced NaN/inf values; try fp32 precision or check the model files")
    return array


class IdentityEncoder:
    """Face analysis + image encoder + projector (+ IMR edit) through one backend.

    The face analyzer (insightface) is built on first use, so apps that bring their own ArcFace
    embeddings or stored tokens need neither the insightface package nor its model pack.
    """

    def __init__(
        self,
        backend: "Backend",
        analyzer: "Callable[[], FaceAnalyzer]",
        prompts: "PromptEncoder",
        cache_dir: Path | None,
        model_fingerprint: str,
    ) -> None:
        self.backend = backend
        self._make_analyzer = analyzer
        self._analyzer: "FaceAnalyzer | None" = None
        self.prompts = prompts
        self.cache_dir = cache_dir
        self.model_fingerprint = model_fingerprint
        self._uncond: np.ndarray | None = None

    def unconditional_tokens(self) -> np.ndarray:
        """Projector(zeros(512), CLIP features of all-zero pixel values): (4, C), computed once per
        model and backend and kept in the identity cache, so a warm start skips the image encoder."""
        if self._uncond is None:
            key = self._cache_key(np.zeros(0, np.uint8), "unconditional tokens")
            cached = self._cache_get(key)
            if cached is not None:
                self._uncond = cached.tokens
                return self._uncond
            size = self.backend.dims.clip_image_size
            hidden = self.backend.run("image_encoder", {"pixel_values": np.zeros((1, 3, size, size), np.float32)})
            out = self.backend.run(
                "face_projector",
                {"id_embeds": np.zeros((1, 512), np.float32), "clip_hidden": hidden["hidden_states"]},
            )
            self._uncond = _check_finite("face projector", out["id_tokens"][0])
            # Stored as an identity whose base and final tokens coincide, so the cache validator applies.
            self._cache_put(key, Identity(tokens=self._uncond, base_tokens=self._uncond, name="unconditional"))
        return self._uncond

    @property
    def analyzer(self) -> "FaceAnalyzer":
        if self._analyzer is None:
            self._analyzer = self._make_analyzer()
        return self._analyzer

    def detect(self, photo) -> list["DetectedFace"]:
        return self.analyzer.detect(load_photo(photo))

    def encode(
        self,
        photo,
        face_prompt: str | None = None,
        source_prompt: str | None = None,
        target_landmarks=None,
        *,
        emotion: str = "neutral",
        face_index: int | None = None,
        face_crop_input: bool = False,
        name: str | None = None,
    ) -> Identity:
        _check_options(face_prompt=face_prompt, source_prompt=source_prompt, emotion=emotion, name=name, face_index=face_index)
        if name is None:  # a file name's undecodable bytes (surrogates) become U+FFFD: names go into the PNG parameters
            stem = Path(photo).stem if isinstance(photo, (str, Path)) else "person"
            name = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in stem)
        pixels = load_photo(photo)
        self._check_can_edit(face_prompt)
        target = self._target_raster(target_landmarks) if face_prompt is not None else None
        key = self._cache_key(pixels, face_prompt, source_prompt, target, emotion, face_index, face_crop_input)
        cached = self._cache_get(key)
        if cached is not None:
            cached.name = name
            return cached

        faces = self.analyzer.detect(pixels)
        if not faces:
            raise NoFaceError(f"no face found in {name!r}: use a photo where one face is clearly visible (at least ~64 px)")
        warnings = []
        if face_index is None:
            face_index = self.analyzer.choose_face(faces)
            if len(faces) > 1:
                msg = f"{len(faces)} faces found in {name!r}; using the largest (face {face_index}); pass face_index to choose"
                log.warning(msg)
                warnings.append(msg)
        elif not 0 <= face_index < len(faces):
            raise ImageError(f"face_index={face_index} but {name!r} holds {len(faces)} face(s)")
        face = faces[face_index]

        base_tokens = self._project(face_crop(pixels, face.bbox) if face_crop_input else pixels, face.embedding)
        pose = tuple(float(p) for p in face.pose)
        source = source_prompt or source_face_prompt(pose, emotion)
        tokens = base_tokens
        if face_prompt is not None:
            tokens = self._edit(base_tokens, self.analyzer.landmark_raster(pixels), target, source, face_prompt)

        identity = Identity(
            tokens=tokens.astype(np.float32),
            base_tokens=base_tokens.astype(np.float32),
            face_box=tuple(float(v) for v in face.bbox),
            landmarks=np.asarray(face.landmarks_106, np.float32),
            pose=pose,
            source_prompt=source,
            face_prompt=face_prompt,
            thumbnail=face_thumbnail(pixels, face.bbox),
            num_faces=len(faces),
            face_index=face_index,
            warnings=warnings,
            name=name,
            embedding=face.embedding.astype(np.float32),
        )
        self._cache_put(key, identity)
        return identity

    def encode_embedding(
        self,
        embedding,
        photo,
        *,
        face_prompt: str | None = None,
        source_prompt: str | None = None,
        landmarks=None,
        target_landmarks=None,
        name: str = "person",
    ) -> Identity:
        """Tokens from an ArcFace embedding the app computed itself, plus the photo CLIP sees
        (the whole photo, as the release does). No face analysis runs: an expression edit
        (``face_prompt``) needs the face's 106 ``landmarks`` in the pixels of the photo resized
        to 512x512 and a ``source_prompt``, and takes ``target_landmarks`` the same way."""
        _check_options(face_prompt=face_prompt, source_prompt=source_prompt, name=name)
        unit = _checked_embedding(embedding)
        pixels = load_photo(photo)
        self._check_can_edit(face_prompt)
        if face_prompt is not None and (landmarks is None or not source_prompt):
            raise RequestError("an expression edit from an embedding needs landmarks (106 x,y in the 512x512 photo) "
                               "and a source_prompt describing the photo's face; or drop face_prompt")
        key = self._cache_key(pixels, unit, face_prompt, source_prompt,
                              None if landmarks is None else np.asarray(landmarks, np.float64),
                              None if target_landmarks is None else np.asarray(target_landmarks, np.float64))
        cached = self._cache_get(key)
        if cached is not None:
            cached.name = name
            return cached
        base_tokens = self._project(pixels, unit)
        tokens = base_tokens
        if face_prompt is not None:
            source_raster = raster_from_landmarks(landmarks)
            target = None if target_landmarks is None else raster_from_landmarks(target_landmarks)
            tokens = self._edit(base_tokens, source_raster, target, source_prompt, face_prompt)
        identity = Identity(tokens=tokens.astype(np.float32), base_tokens=base_tokens.astype(np.float32),
                            source_prompt=source_prompt or "", face_prompt=face_prompt, name=name, embedding=unit)
        self._cache_put(key, identity)
        return identity

    def _check_can_edit(self, face_prompt: str | None) -> None:
        if face_prompt is not None and not self.backend.has_imr:
            raise ModelFolderError(
                "expression/pose editing needs IMR.bin and key_point_encoder.bin in the model folder's dynamicid/; "
                "drop the face prompt or add those files"
            )

    def _project(self, clip_photo: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """SPEC §1.3: (4, C) tokens from the photo CLIP sees and the unit ArcFace embedding."""
        pixel_values = clip_pixel_values(clip_photo, self.backend.dims.clip_image_size)[None]
        hidden = self.backend.run("image_encoder", {"pixel_values": pixel_values})["hidden_states"]
        base_tokens = self.backend.run(
            "face_projector", {"id_embeds": embedding[None].astype(np.float32), "clip_hidden": hidden}
        )["id_tokens"]
        return _check_finite("face projector", base_tokens)[0]

    def _edit(self, base_tokens: np.ndarray, src_raster: np.ndarray, target: np.ndarray | None,
              source: str, face_prompt: str) -> np.ndarray:
        """SPEC §1.4: the IMR's expression/pose edit; without a target raster the layout stays."""
        tgt_raster = src_raster if target is None else target
        pooled = self.prompts.pooled([source, face_prompt])
        tokens = self.backend.run(
            "imr",
            {
                "id_tokens": base_tokens[None],
                "landmarks": np.stack([src_raster, tgt_raster])[:, None].astype(np.float32),
                "text_pooled": pooled,
            },
        )["edited_tokens"]
        return _check_finite("IMR", tokens)[0]

    def _target_raster(self, target_landmarks) -> np.ndarray | None:
        if target_landmarks is None:
            return None
        if isinstance(target_landmarks, np.ndarray) and target_landmarks.shape == (106, 2):
            return raster_from_landmarks(target_landmarks)
        return self.analyzer.landmark_raster(load_photo(target_landmarks))

    # -- cache -------------------------------------------------------------------------------

    def _cache_key(self, pixels: np.ndarray, *settings) -> str:
        h = hashlib.sha256()
        h.update(f"{IDENTITY_FORMAT}:{self.model_fingerprint}".encode())
        h.update(json.dumps(self.backend.describe(), sort_keys=True).encode())
        h.update(f"{pixels.shape}".encode())
        h.update(pixels.tobytes())
        for s in settings:
            h.update(s.tobytes() if isinstance(s, np.ndarray) else repr(s).encode())
            h.update(b"\0")
        return h.hexdigest()[:32]

    def _cache_get(self, key: str) -> Identity | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.npz"
        if not path.is_file():
            return None
        from .identity_cache import load_cached

        log.debug("identity cache lookup %s", path)
        return load_cached(path, self.backend.dims.context_dim, self.model_fingerprint)

    def _cache_put(self, key: str, identity: Identity) -> None:
        """Record which model made ``identity`` and cache it."""
        identity.model_fingerprint = self.model_fingerprint
        if self.cache_dir is not None:
            identity.save(self.cache_dir / f"{key}.npz")


def stack_identity_tokens(identities: Sequence[Identity], context_dim: int) -> np.ndarray:
    """(4N, C) tokens of the identities in order; checks they fit this model."""
    for ident in identities:
        if ident.tokens.shape != (4, context_dim):
            raise ImageError(
                f"identity {ident.name!r} has tokens of shape {ident.tokens.shape}, but this model needs (4, {context_dim}); "
                "it was encoded with another model: encode the photo again"
            )
    return np.concatenate([i.tokens for i in identities], axis=0).astype(np.float32)
