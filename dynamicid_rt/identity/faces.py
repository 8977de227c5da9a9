"""Face analysis over insightface (SPEC §1.2) and the landmark raster / auto source prompt of §1.4.

No torch here. insightface is imported when a :class:`FaceAnalyzer` is built, and always pointed at
the pack folder itself (the buffalo_l file names below): nothing is ever downloaded. Photos are
RGB uint8 arrays (H, W, 3), as :func:`dynamicid_rt.identity.photos.load_photo` makes them.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import ModelFolderError, NoFaceError, NumericalError, RequestError
from .photos import check_rgb

logger = logging.getLogger(__name__)

# insightface's buffalo_l pack: task name -> file, as FaceAnalysis would route them.
PACK_FILES = {
    "detection": "det_10g.onnx",
    "recognition": "w600k_r50.onnx",
    "landmark_2d_106": "2d106det.onnx",
    "landmark_3d_68": "1k3d68.onnx",
}
DET_THRESHOLD = 0.5  # insightface's default
LANDMARK_PHOTO_SIZE = 512  # §1.4: the photo is resized to 512x512 before the 106 landmarks
LANDMARK_RASTER_SIZE = 96
_RESAMPLE = Image.Resampling.BICUBIC  # PIL's resize default, as the release resizes PIL images


@dataclass
class DetectedFace:
    """One face of a photo, in the photo's pixels."""

    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    kps: np.ndarray  # (5, 2) eyes, nose, mouth corners
    embedding: np.ndarray  # (512,) float32, L2-normalised ArcFace embedding
    landmarks_106: np.ndarray  # (106, 2)
    pose: np.ndarray  # (3,) as insightface returns it: pitch, yaw, roll in degrees

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def default_providers() -> list[str]:
    """CUDA first when onnxruntime offers it, then CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def _provider_name(provider: str | tuple) -> str:
    return str(provider[0]) if isinstance(provider, (list, tuple)) else str(provider)


class FaceAnalyzer:
    """The four buffalo_l models of ``pack_dir`` run through insightface (SPEC §1.2).

    ``rgb_quirk=True`` follows the release, which hands insightface's ``app.get`` the RGB array
    where it expects BGR: detection, recognition and the 3D landmarks (pose) all see RGB; only the
    106 landmarks get BGR (the release converts for them). ``False`` gives BGR to all. The 106
    landmarks are found in the boxes of that same detection, so one photo's faces agree across
    all outputs.
    """

    def __init__(self, pack_dir: Path, providers: list[str] | None = None, det_size: int = 512, rgb_quirk: bool = True) -> None:
        self.pack_dir = Path(pack_dir).expanduser()
        if det_size < 32 or det_size % 32:
            raise RequestError(f"det_size {det_size} must be a positive multiple of 32 (insightface uses 640; the release 512)")
        if not self.pack_dir.is_dir():
            raise ModelFolderError(f"insightface pack folder {self.pack_dir} does not exist; analysing a photo needs it with "
                                   f"the buffalo_l models {', '.join(PACK_FILES.values())} (identities from tokens or "
                                   "ArcFace embeddings do not)")
        missing = [name for name in PACK_FILES.values() if not (self.pack_dir / name).is_file()]
        if missing:
            raise ModelFolderError(f"insightface pack {self.pack_dir} lacks {', '.join(missing)}; copy the buffalo_l "
                                   "pack's .onnx files there (they are never downloaded)")
        self.providers = list(providers) if providers else default_providers()
        self.det_size = det_size
        self.rgb_quirk = rgb_quirk
        try:
            from insightface.model_zoo import model_zoo
        except ImportError as exc:
            raise ModelFolderError(f"analysing a photo needs the insightface package ({exc}): pip install 'dynamicid-rt[cpu]', "
                                   "or with [gpu] pip install --no-deps insightface") from exc

        self._models = {}
        for task, name in PACK_FILES.items():
            path = self.pack_dir / name
            try:
                model = model_zoo.get_model(str(path), providers=self.providers)
            except Exception as exc:  # onnxruntime/onnx raise assorted types for malformed files
                raise ModelFolderError(f"{path} could not be loaded by insightface/onnxruntime: {exc}") from exc
            found = getattr(model, "taskname", None)
            if found != task:
                raise ModelFolderError(f"{path} should be the {task} model but insightface reads it as {found or 'unknown'}; "
                                       "is the buffalo_l pack complete and unmodified?")
            self._models[task] = model
        ctx_id = 0 if any(_provider_name(p) == "CUDAExecutionProvider" for p in self.providers) else -1
        for task, model in self._models.items():
            if task == "detection":
                model.prepare(ctx_id, input_size=(det_size, det_size), det_thresh=DET_THRESHOLD)
            else:
                model.prepare(ctx_id)
        logger.info("face analysis: %s with %s (rgb_quirk=%s)", self.pack_dir, ", ".join(map(_provider_name, self.providers)), rgb_quirk)

    def _detect_raw(self, image: np.ndarray) -> list:
        """Faces of ``image`` (the array as handed to insightface, which takes it for BGR)."""
        # insightface calls scikit-image's deprecated SimilarityTransform.estimate: a FutureWarning
        # per face that users cannot act on. Silenced for insightface's modules only, here, where
        # every analysis starts (re-adding the same filter is a no-op).
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"insightface(\.|$)")
        from insightface.app.common import Face

        boxes, kpss = self._models["detection"].detect(image, max_num=0)
        return [Face(bbox=boxes[i, :4], kps=kpss[i], det_score=boxes[i, 4]) for i in range(boxes.shape[0])]

    def detect(self, photo_rgb: np.ndarray) -> list[DetectedFace]:
        """Every face of the photo (insightface's order: by detection score)."""
        rgb = check_rgb(photo_rgb)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        seen = rgb if self.rgb_quirk else bgr  # release quirk: RGB where insightface wants BGR
        out = []
        for face in self._detect_raw(seen):
            self._models["recognition"].get(seen, face)
            self._models["landmark_3d_68"].get(seen, face)
            self._models["landmark_2d_106"].get(bgr, face)
            embedding = np.asarray(face.embedding, dtype=np.float32)
            norm = float(np.linalg.norm(embedding))
            if not np.isfinite(norm) or norm == 0.0:
                raise NumericalError(f"the recognition model gave a {'zero' if norm == 0 else 'non-finite'} embedding; "
                                     f"check the model files in {self.pack_dir}")
            out.append(DetectedFace(
                bbox=tuple(float(v) for v in face.bbox),
                score=float(face.det_score),
                kps=np.asarray(face.kps, dtype=np.float32),
                embedding=embedding / norm,
                landmarks_106=np.asarray(face.landmark_2d_106, dtype=np.float32),
                pose=np.asarray(face.pose, dtype=np.float32),
            ))
        return out

    @staticmethod
    def choose_face(faces: Sequence[DetectedFace]) -> int:
        """Index of the face with the largest box (ties: highest score). No face: NoFaceError."""
        if not faces:
            raise NoFaceError("no face was found in the photo; use a photo with a clearly visible, unobstructed face")
        return max(range(len(faces)), key=lambda i: (faces[i].area, faces[i].score))

    def landmark_raster(self, photo_rgb: np.ndarray) -> np.ndarray:
        """SPEC §1.4 raster (96, 96) float32 in [-1, 1] of the largest face's 106 landmarks, found
        on the photo resized to 512x512 and handed to insightface as BGR."""
        rgb = check_rgb(photo_rgb)
        size = (LANDMARK_PHOTO_SIZE, LANDMARK_PHOTO_SIZE)
        resized = np.asarray(Image.fromarray(rgb).resize(size, _RESAMPLE))
        bgr = np.ascontiguousarray(resized[..., ::-1])
        faces = self._detect_raw(bgr)
        if not faces:
            raise NoFaceError("no face was found for the landmark raster; use a photo with a clearly visible face")

        def rank(face) -> tuple[float, float]:
            x0, y0, x1, y1 = (float(v) for v in face.bbox)
            return max(0.0, x1 - x0) * max(0.0, y1 - y0), float(face.det_score)

        largest = max(faces, key=rank)
        return raster_from_landmarks(self._models["landmark_2d_106"].get(bgr, largest))

    @staticmethod
    def raster_from_landmarks(landmarks_106_in_512px: np.ndarray) -> np.ndarray:
        """The §1.4 raster of given landmarks (pixels of a 512x512 photo), e.g. a drawn set."""
        return raster_from_landmarks(landmarks_106_in_512px)


def raster_from_landmarks(landmarks_106_in_512px: np.ndarray) -> np.ndarray:
    """(96, 96) float32 in [-1, 1]: points scaled by 96/512; pixel (int(y), int(x)) is 255 for
    0 < x < 96 and 0 < y < 96, the rest 0; then /127.5 - 1 (SPEC §1.4)."""
    points = np.asarray(landmarks_106_in_512px, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise RequestError(f"landmarks must be an (N, 2) array of x, y pixels in a 512x512 photo, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise RequestError("landmarks contain NaN or infinite values")
    size = LANDMARK_RASTER_SIZE
    scaled = points * size / LANDMARK_PHOTO_SIZE
    x, y = scaled[:, 0], scaled[:, 1]
    inside = (x > 0) & (x < size) & (y > 0) & (y < size)
    raster = np.zeros((size, size), dtype=np.float32)
    raster[y[inside].astype(np.int64), x[inside].astype(np.int64)] = 255.0
    return raster / np.float32(127.5) - np.float32(1.0)


def source_face_prompt(pose: Sequence[float] | np.ndarray, emotion: str = "neutral") -> str:
    """The release's automatic source face prompt (SPEC §1.4) from insightface's pose."""
    values = np.asarray(pose, dtype=np.float64).ravel()
    if values.size < 2 or not np.isfinite(values[:2]).all():
        raise RequestError(f"pose must hold finite pitch and yaw (insightface's [p0, p1, p2]), got {pose!r}")
    if not isinstance(emotion, str) or not emotion.strip():
        raise RequestError("emotion must be a non-empty word such as 'neutral' or 'happy'")
    pitch, yaw = float(values[0]), float(values[1])
    facing = "facing up" if pitch > 10 else "facing down" if pitch < -10 else ""
    view = "in front view" if abs(yaw) < 10 else "in side view"
    return f"in a {emotion} expression, {facing + ', ' if facing else ''}{view}"
