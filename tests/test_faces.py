"""Face analysis over insightface with the tiny face models and synthetic portraits."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynamicid_rt.errors import ImageError, ModelFolderError, NoFaceError, RequestError
from dynamicid_rt.identity.faces import PACK_FILES, DetectedFace, FaceAnalyzer, raster_from_landmarks, source_face_prompt
from dynamicid_rt.identity.photos import face_crop, face_thumbnail, load_photo
from dynamicid_rt.tiny.face_models import write_face_models
from dynamicid_rt.tiny.portraits import load_truth, write_portraits

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("buffalo_l")
    write_face_models(folder)
    return folder


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("samples")
    write_portraits(folder)
    return folder


@pytest.fixture(scope="module")
def analyzer(pack) -> FaceAnalyzer:
    return FaceAnalyzer(pack, providers=CPU)


@pytest.fixture(scope="module")
def bgr_analyzer(pack) -> FaceAnalyzer:
    return FaceAnalyzer(pack, providers=CPU, rgb_quirk=False)


@pytest.fixture(scope="module")
def raw_models(pack) -> dict:
    """The same files loaded by insightface directly, for independent references."""
    from insightface.model_zoo import model_zoo

    models = {task: model_zoo.get_model(str(pack / name), providers=CPU) for task, name in PACK_FILES.items()}
    models["detection"].prepare(-1, input_size=(512, 512), det_thresh=0.5)
    return models


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_tiny_models_are_small_and_routed_by_insightface(pack):
    from insightface.app import FaceAnalysis

    for name in PACK_FILES.values():
        assert (pack / name).stat().st_size < 400_000
    app = FaceAnalysis(name=str(pack), providers=CPU)
    assert set(app.models) == set(PACK_FILES)
    assert app.models["landmark_3d_68"].require_pose


def test_portraits_are_deterministic(samples, tmp_path):
    again = write_portraits(tmp_path)
    for name, path in again.items():
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(samples / name)))
    assert load_truth(tmp_path) == load_truth(samples)


@pytest.mark.parametrize("rgb_quirk", [True, False])
@pytest.mark.parametrize("name", ["person_a.png", "person_b.png", "two_faces.png", "person_a_smiling.png", "no_face.png"])
def test_detects_exactly_the_drawn_faces(analyzer, bgr_analyzer, samples, name, rgb_quirk):
    truth = load_truth(samples)[name]
    photo = load_photo(samples / name)
    faces = (analyzer if rgb_quirk else bgr_analyzer).detect(photo)
    assert len(faces) == len(truth)
    for true in truth:
        best = max(faces, key=lambda f: iou(f.bbox, true["box"]))
        assert iou(best.bbox, true["box"]) > 0.5
    for face in faces:
        assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
        assert abs(np.linalg.norm(face.embedding) - 1.0) < 1e-5
        assert face.kps.shape == (5, 2) and face.landmarks_106.shape == (106, 2)
        assert face.pose.shape == (3,) and np.isfinite(face.pose).all()
        x0, y0, x1, y1 = face.bbox
        margin = 0.3 * (x1 - x0)
        inside = ((face.landmarks_106[:, 0] > x0 - margin) & (face.landmarks_106[:, 0] < x1 + margin)
                  & (face.landmarks_106[:, 1] > y0 - margin) & (face.landmarks_106[:, 1] < y1 + margin))
        assert inside.all()


def test_two_faces_choose_the_larger(analyzer, samples):
    truth = load_truth(samples)["two_faces.png"]
    faces = analyzer.detect(load_photo(samples / "two_faces.png"))
    larger = max(truth, key=lambda t: (t["box"][2] - t["box"][0]) * (t["box"][3] - t["box"][1]))
    assert iou(faces[analyzer.choose_face(faces)].bbox, larger["box"]) > 0.5


def _face(bbox, score) -> DetectedFace:
    z = np.zeros
    return DetectedFace(bbox=bbox, score=score, kps=z((5, 2)), embedding=z(512), landmarks_106=z((106, 2)), pose=z(3))


def test_choose_face_rule():
    faces = [_face((0, 0, 10, 10), 0.9), _face((0, 0, 20, 5), 0.95), _face((5, 5, 15, 15), 0.8)]
    assert FaceAnalyzer.choose_face(faces) == 1  # equal areas (100): highest score
    assert FaceAnalyzer.choose_face(faces + [_face((0, 0, 11, 10), 0.1)]) == 3
    with pytest.raises(NoFaceError):
        FaceAnalyzer.choose_face([])


def test_same_person_similar_different_people_not(analyzer, samples):
    def embed(name, person="a"):
        faces = analyzer.detect(load_photo(samples / name))
        truth = [t for t in load_truth(samples)[name] if t["person"] == person][0]
        return max(faces, key=lambda f: iou(f.bbox, truth["box"])).embedding

    a = embed("person_a.png")
    b = embed("person_b.png", "b")
    assert cosine(a, embed("person_a_smiling.png")) > 0.9
    assert cosine(a, embed("two_faces.png")) > 0.9
    assert cosine(b, embed("two_faces.png", "b")) > 0.9
    assert cosine(a, b) < 0.5


@pytest.mark.parametrize("rgb_quirk", [True, False])
def test_each_model_is_handed_the_array_of_the_setting(analyzer, bgr_analyzer, samples, monkeypatch, rgb_quirk):
    """SPEC §1.2: under the quirk insightface gets the RGB array (detection, recognition, pose);
    the 106 landmarks always get BGR."""
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.landmark import Landmark
    from insightface.model_zoo.scrfd import SCRFD

    handed: list[tuple[str, np.ndarray]] = []

    def recording(cls, task_of):
        original = getattr(cls, "detect" if cls is SCRFD else "get")

        def wrapper(self, img, *args, **kwargs):
            handed.append((task_of(self), img.copy()))
            return original(self, img, *args, **kwargs)

        monkeypatch.setattr(cls, "detect" if cls is SCRFD else "get", wrapper)

    recording(SCRFD, lambda m: "detection")
    recording(ArcFaceONNX, lambda m: "recognition")
    recording(Landmark, lambda m: m.taskname)
    photo = load_photo(samples / "two_faces.png")
    faces = (analyzer if rgb_quirk else bgr_analyzer).detect(photo)
    assert len(faces) == 2
    bgr = photo[..., ::-1]
    expected = {"detection": photo if rgb_quirk else bgr, "recognition": photo if rgb_quirk else bgr,
                "landmark_3d_68": photo if rgb_quirk else bgr, "landmark_2d_106": bgr}
    counts = {task: sum(t == task for t, _ in handed) for task in expected}
    assert counts == {"detection": 1, "recognition": 2, "landmark_3d_68": 2, "landmark_2d_106": 2}
    for task, img in handed:
        np.testing.assert_array_equal(img, expected[task], err_msg=task)


def test_tiny_landmark_models_are_face_shaped_in_either_channel_order(raw_models, samples):
    """The tiny 2d106/3d68 models place the mouth and eyes where the portraits drew them, and give
    the same points (and a frontal pose) for the RGB and the BGR array."""
    from insightface.app.common import Face

    for name in ("person_a.png", "two_faces.png", "person_a_smiling.png"):
        photo = load_photo(samples / name)
        for true in load_truth(samples)[name]:
            x0, y0, x1, y1 = true["box"]
            ax, ay = (x1 - x0) / 2, (y1 - y0) / 2
            mouth = np.array([(x0 + x1) / 2, (y0 + y1) / 2 + 0.5 * ay])  # the drawer's MOUTH_CENTRE
            eyes = np.array([(x0 + x1) / 2, (y0 + y1) / 2 - 0.12 * ay])  # midway between the EYE_CENTRES
            outputs = []
            for array in (photo, np.ascontiguousarray(photo[..., ::-1])):
                face = Face(bbox=np.array(true["box"]), kps=None, det_score=1.0)
                p106 = raw_models["landmark_2d_106"].get(array, face)
                p68 = raw_models["landmark_3d_68"].get(array, face)
                assert np.isfinite(p106).all() and np.isfinite(p68).all()
                # 68-point convention: 36..47 eyes, 48..67 mouth; the tiny 106 ends with 20 mouth points.
                assert np.linalg.norm(p68[48:68, :2].mean(0) - mouth) < 0.2 * ax
                assert np.linalg.norm(p68[36:48, :2].mean(0) - eyes) < 0.2 * ax
                assert np.linalg.norm(p106[-20:].mean(0) - mouth) < 0.2 * ax
                assert np.abs(face.pose).max() < 1.0
                outputs.append((p106, p68))
            np.testing.assert_allclose(outputs[0][0], outputs[1][0], atol=1e-3)
            np.testing.assert_allclose(outputs[0][1], outputs[1][1], atol=1e-3)


def test_rgb_quirk_changes_what_recognition_sees(analyzer, bgr_analyzer, raw_models, samples):
    from insightface.utils import face_align

    photo = load_photo(samples / "person_a.png")
    quirk = analyzer.detect(photo)[0]
    plain = bgr_analyzer.detect(photo)[0]
    assert iou(quirk.bbox, plain.bbox) > 0.99  # the same face in both settings
    assert cosine(quirk.embedding, plain.embedding) < 0.99
    np.testing.assert_allclose(quirk.landmarks_106, plain.landmarks_106)  # BGR in both modes
    # Reference: insightface's ArcFace on the array as given, aligned with the detected keypoints.
    for face, array in ((quirk, photo), (plain, np.ascontiguousarray(photo[..., ::-1]))):
        crop = face_align.norm_crop(array, landmark=face.kps, image_size=112)
        ref = raw_models["recognition"].get_feat(crop).ravel()
        np.testing.assert_allclose(face.embedding, ref / np.linalg.norm(ref), atol=1e-5)


def _reference_raster(points_512: np.ndarray) -> np.ndarray:
    img = np.zeros((96, 96), dtype=np.float64)
    for x, y in points_512 * 96 / 512:
        if 0 < x < 96 and 0 < y < 96:
            img[int(y), int(x)] = 255
    return img / 127.5 - 1


@pytest.mark.parametrize("name", ["person_a.png", "two_faces.png", "person_a_smiling.png"])
def test_landmark_raster_matches_reference(analyzer, raw_models, samples, name):
    from insightface.app.common import Face

    photo = load_photo(samples / name)
    resized = np.asarray(Image.fromarray(photo).resize((512, 512), Image.Resampling.BICUBIC))
    bgr = np.ascontiguousarray(resized[..., ::-1])
    boxes, kpss = raw_models["detection"].detect(bgr)
    i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    points = raw_models["landmark_2d_106"].get(bgr, Face(bbox=boxes[i, :4], kps=kpss[i], det_score=boxes[i, 4]))
    raster = analyzer.landmark_raster(photo)
    assert raster.shape == (96, 96) and raster.dtype == np.float32
    np.testing.assert_array_equal(raster, _reference_raster(points).astype(np.float32))
    assert 20 < (raster > 0).sum() <= 106


def test_smiling_raster_differs_and_no_face_raises(analyzer, samples):
    neutral = analyzer.landmark_raster(load_photo(samples / "person_a.png"))
    smiling = analyzer.landmark_raster(load_photo(samples / "person_a_smiling.png"))
    assert (neutral != smiling).any()
    with pytest.raises(NoFaceError):
        analyzer.landmark_raster(load_photo(samples / "no_face.png"))


def test_raster_from_drawn_landmarks_edges():
    rng = np.random.default_rng(3)
    points = np.concatenate([
        rng.uniform(-40, 560, (100, 2)),
        [[0, 100], [100, 0], [512, 100], [511.9, 511.9], [5.4, 5.4], [6.0, 300.0]],
    ])
    np.testing.assert_array_equal(raster_from_landmarks(points), _reference_raster(points).astype(np.float32))
    with pytest.raises(RequestError):
        raster_from_landmarks(np.zeros((106, 3)))
    with pytest.raises(RequestError):
        raster_from_landmarks(np.full((106, 2), np.nan))


@pytest.mark.parametrize("pose, emotion, expected", [
    ((0, 0, 0), "neutral", "in a neutral expression, in front view"),
    ((10, 9.99, 5), "neutral", "in a neutral expression, in front view"),
    ((10.5, 0, 0), "happy", "in a happy expression, facing up, in front view"),
    ((-10.5, -10, 0), "sad", "in a sad expression, facing down, in side view"),
    ((-10, 10, 0), "neutral", "in a neutral expression, in side view"),
    ((45, -30, 0), "surprised", "in a surprised expression, facing up, in side view"),
    (np.array([-3.0, -12.0, 80.0], dtype=np.float32), "neutral", "in a neutral expression, in side view"),
])
def test_source_face_prompt(pose, emotion, expected):
    assert source_face_prompt(pose, emotion) == expected


def test_source_prompt_of_detected_pose_is_front(analyzer, samples):
    face = analyzer.detect(load_photo(samples / "person_b.png"))[0]
    assert source_face_prompt(face.pose) == "in a neutral expression, in front view"


def test_load_photo_bad_inputs(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (10, 10), (200, 150, 120)).save(tiny)
    for path in (text, truncated, tiny, tmp_path / "missing.jpg"):
        with pytest.raises(ImageError, match=str(path.name)) as info:
            load_photo(path)
        assert str(path) in str(info.value)
    with pytest.raises(ImageError):
        load_photo(np.zeros((100, 100, 3), dtype=np.float32))


def test_load_photo_conversions(tmp_path):
    grey = np.random.default_rng(1).integers(0, 255, (70, 90), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    out = load_photo(tmp_path / "grey.png")
    assert out.shape == (70, 90, 3) and all(np.array_equal(out[..., c], grey) for c in range(3))

    rgba = np.zeros((80, 80, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:40, :, 3] = 255  # top half opaque red, bottom half transparent
    out = load_photo(rgba)
    assert (out[:40] == [200, 0, 0]).all() and (out[40:] == 255).all()

    # EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise.
    stored = np.random.default_rng(2).integers(0, 255, (80, 120, 3), dtype=np.uint8)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "turned.png", exif=exif)
    np.testing.assert_array_equal(load_photo(tmp_path / "turned.png"), np.rot90(stored, k=-1))


def test_load_photo_downscales_huge(caplog):
    wide = np.full((80, 4200, 3), 120, dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="dynamicid_rt.identity.photos"):
        out = load_photo(wide)
    assert out.shape == (78, 4096, 3)
    assert "downscaling" in caplog.text


def test_face_crop_and_thumbnail():
    photo = np.random.default_rng(4).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    np.testing.assert_array_equal(face_crop(photo, (100, 60, 140, 100), scale=2.0), photo[40:120, 80:160])
    edge = face_crop(photo, (0, 0, 40, 40), scale=2.0)  # centre (20, 20), side 80: 20 px beyond the top-left
    assert edge.shape == (80, 80, 3)
    np.testing.assert_array_equal(edge[20:, 20:], photo[:60, :60])
    np.testing.assert_array_equal(edge[:20, 20:], np.broadcast_to(photo[0:1, :60], (20, 60, 3)))
    np.testing.assert_array_equal(edge[20:, :20], np.broadcast_to(photo[:60, 0:1], (60, 20, 3)))
    thumb = face_thumbnail(photo, (100, 60, 140, 100), size=64)
    assert thumb.shape == (64, 64, 3) and thumb.dtype == np.uint8
    with pytest.raises(RequestError):
        face_crop(photo, (10, 10, 5, 20))


def test_missing_or_wrong_pack_files(pack, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        FaceAnalyzer(tmp_path / "nowhere", providers=CPU)
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in PACK_FILES.values():
        if name != "w600k_r50.onnx":
            shutil.copy(pack / name, partial / name)
    with pytest.raises(ModelFolderError, match="w600k_r50.onnx"):
        FaceAnalyzer(partial, providers=CPU)
    shutil.copy(pack / "2d106det.onnx", partial / "w600k_r50.onnx")  # a landmark model in the wrong place
    with pytest.raises(ModelFolderError, match="recognition"):
        FaceAnalyzer(partial, providers=CPU)
