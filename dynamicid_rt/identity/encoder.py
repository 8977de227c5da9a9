"""Identity encoding: face photo → 4 ID tokens (SPEC §1.2–1.4), through one backend and an
on-disk cache (:mod:`dynamicid_rt.identity.cache`).

Runs every model through a :class:`~dynamicid_rt.backends.base.Backend`, so it never imports torch.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import ImageError, ModelFolderError, NoFaceError, NumericalError, RequestError
from .cache import cache_key, load_cached
from .clip_preprocessing import clip_pixel_values
from .faces import raster_from_landmarks, source_face_prompt
from .photos import face_crop, face_thumbnail, load_photo
from .value import Identity

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..prompts.encoder import PromptEncoder
    from .faces import DetectedFace, FaceAnalyzer

log = logging.getLogger(__name__)


def _check_options(face_index: int | None = None, **texts: str | None) -> None:
    """Encoding options checked before any photo is read or model runs."""
    from ..request import check_text

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
        return cache_key(self.model_fingerprint, self.backend.describe(), pixels, *settings)

    def _cache_get(self, key: str) -> Identity | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.npz"
        if not path.is_file():
            return None
        log.debug("identity cache lookup %s", path)
        return load_cached(path, self.backend.dims.context_dim, self.model_fingerprint)

    def _cache_put(self, key: str, identity: Identity) -> None:
        """Record which model made ``identity`` and cache it."""
        identity.model_fingerprint = self.model_fingerprint
        if self.cache_dir is not None:
            identity.save(self.cache_dir / f"{key}.npz")
