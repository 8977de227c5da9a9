"""Identity encoding: face photo → 4 ID tokens (SPEC §1.2–1.4), with an on-disk cache.

Runs every model through a :class:`~dynamicid_rt.backends.base.Backend`, so it never imports torch.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .atomic import atomic_write
from .errors import ImageError, ModelFolderError, NoFaceError, NumericalError
from .faces import face_crop, face_thumbnail, load_photo, source_face_prompt

if TYPE_CHECKING:
    from .backends.base import Backend
    from .faces import DetectedFace, FaceAnalyzer
    from .text import PromptEncoder

log = logging.getLogger(__name__)

IDENTITY_FORMAT = 1
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Identity:
    """One person: their ID tokens plus what a UI shows about the reference photo."""

    tokens: np.ndarray  # (4, C) float32: the tokens used for generation (after the expression edit)
    base_tokens: np.ndarray  # (4, C) float32: the projector's tokens before any edit
    face_box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in photo pixels
    landmarks: np.ndarray  # (106, 2) photo pixels
    pose: tuple[float, float, float]  # as insightface returns it
    source_prompt: str
    face_prompt: str | None
    thumbnail: np.ndarray  # (S, S, 3) uint8 face crop
    num_faces: int
    face_index: int
    warnings: list[str] = field(default_factory=list)
    name: str = ""

    @property
    def edited(self) -> bool:
        return self.face_prompt is not None

    def save(self, path: str | Path) -> Path:
        """Save as a small ``.npz`` file (atomic)."""
        meta = {k: v for k, v in asdict(self).items() if k not in ("tokens", "base_tokens", "landmarks", "thumbnail")}
        meta["format"] = IDENTITY_FORMAT
        path = Path(path)
        with atomic_write(path) as f:
            np.savez_compressed(
                f,
                tokens=self.tokens,
                base_tokens=self.base_tokens,
                landmarks=self.landmarks,
                thumbnail=self.thumbnail,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Identity":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                arrays = {k: data[k] for k in ("tokens", "base_tokens", "landmarks", "thumbnail")}
        except Exception as exc:
            raise ImageError(f"{path} is not a saved identity ({type(exc).__name__}: {exc})") from exc
        if meta.pop("format", None) != IDENTITY_FORMAT:
            raise ImageError(f"{path} was saved by an incompatible version of dynamicid-rt; encode the photo again")
        meta["face_box"] = tuple(meta["face_box"])
        meta["pose"] = tuple(meta["pose"])
        return cls(**arrays, **meta)


def clip_pixel_values(photo: np.ndarray, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """CLIP's default preprocessing: shortest side to ``size`` (bicubic), centre crop, normalise.
    Returns (3, size, size) float32."""
    from PIL import Image

    h, w = photo.shape[:2]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    img = Image.fromarray(photo).resize((new_w, new_h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    arr = arr[top : top + size, left : left + size] / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def _check_finite(stage: str, array: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise NumericalError(f"the {stage} stage produced NaN/inf values; try fp32 precision or check the model files")
    return array


class IdentityEncoder:
    """Face analysis + image encoder + projector (+ IMR edit) through one backend."""

    def __init__(
        self,
        backend: "Backend",
        analyzer: "FaceAnalyzer",
        prompts: "PromptEncoder",
        cache_dir: Path | None,
        model_fingerprint: str,
    ) -> None:
        self.backend = backend
        self.analyzer = analyzer
        self.prompts = prompts
        self.cache_dir = cache_dir
        self.model_fingerprint = model_fingerprint
        self._uncond: np.ndarray | None = None

    def unconditional_tokens(self) -> np.ndarray:
        """Projector(zeros(512), CLIP features of all-zero pixel values): (4, C), computed once."""
        if self._uncond is None:
            size = self.backend.dims.clip_image_size
            hidden = self.backend.run("image_encoder", {"pixel_values": np.zeros((1, 3, size, size), np.float32)})
            out = self.backend.run(
                "face_projector",
                {"id_embeds": np.zeros((1, 512), np.float32), "clip_hidden": hidden["hidden_states"]},
            )
            self._uncond = _check_finite("face projector", out["id_tokens"][0])
        return self._uncond

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
        if name is None:
            name = Path(photo).stem if isinstance(photo, (str, Path)) else "person"
        pixels = load_photo(photo)
        if face_prompt is not None and not self.backend.has_imr:
            raise ModelFolderError(
                "expression/pose editing needs IMR.bin and key_point_encoder.bin in the model folder's dynamicid/; "
                "drop the face prompt or add those files"
            )
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

        clip_input = face_crop(pixels, face.bbox) if face_crop_input else pixels
        pixel_values = clip_pixel_values(clip_input, self.backend.dims.clip_image_size)[None]
        hidden = self.backend.run("image_encoder", {"pixel_values": pixel_values})["hidden_states"]
        base_tokens = self.backend.run(
            "face_projector", {"id_embeds": face.embedding[None].astype(np.float32), "clip_hidden": hidden}
        )["id_tokens"]
        base_tokens = _check_finite("face projector", base_tokens)[0]

        pose = tuple(float(p) for p in face.pose)
        source = source_prompt or source_face_prompt(pose, emotion)
        tokens = base_tokens
        if face_prompt is not None:
            src_raster = self.analyzer.landmark_raster(pixels)
            tgt_raster = src_raster if target is None else target
            pooled = self.prompts.pooled([source, face_prompt])
            tokens = self.backend.run(
                "imr",
                {
                    "id_tokens": base_tokens[None],
                    "landmarks": np.stack([src_raster, tgt_raster])[:, None].astype(np.float32),
                    "text_pooled": pooled,
                },
            )["id_tokens"]
            tokens = _check_finite("IMR", tokens)[0]

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
        )
        self._cache_put(key, identity)
        return identity

    def _target_raster(self, target_landmarks) -> np.ndarray | None:
        if target_landmarks is None:
            return None
        if isinstance(target_landmarks, np.ndarray) and target_landmarks.shape == (106, 2):
            return self.analyzer.raster_from_landmarks(target_landmarks)
        return self.analyzer.landmark_raster(load_photo(target_landmarks))

    # -- cache -------------------------------------------------------------------------------

    def _cache_key(self, pixels: np.ndarray, *settings) -> str:
        h = hashlib.sha256()
        h.update(self.model_fingerprint.encode())
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
        try:
            log.debug("identity cache hit %s", path)
            return Identity.load(path)
        except ImageError as exc:  # a damaged entry is re-encoded, never trusted
            log.warning("ignoring damaged identity cache entry %s: %s", path, exc)
            return None

    def _cache_put(self, key: str, identity: Identity) -> None:
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
