"""Identity check and best-of-N on real images: collages of the tiny bundle's portraits, scored by
the tiny buffalo_l pack and compared with insightface's own FaceAnalysis run in the test."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from dynamicid_rt import Identity, Request
from dynamicid_rt.identity.best_of import generate_best_of
from dynamicid_rt.cli import main
from dynamicid_rt.errors import Cancelled, RequestError
from dynamicid_rt import format_parameters, parse_parameters, read_parameters

LEFT, RIGHT = (0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)
GREY = (128, 128, 128)


def _collage(left: Image.Image | None, right: Image.Image | None) -> Image.Image:
    """768x512: one portrait per half (or an empty grey half)."""
    canvas = Image.new("RGB", (768, 512), GREY)
    for picture, x in ((left, 0), (right, 416)):
        if picture is not None:
            canvas.paste(picture, (x, (512 - picture.height) // 2))
    return canvas


@pytest.fixture(scope="module")
def portraits(samples):
    return Image.open(samples / "person_a.png").convert("RGB"), Image.open(samples / "person_b.png").convert("RGB")


@pytest.fixture(scope="module")
def people(tiny_pipeline, samples):
    return [tiny_pipeline.encode_identity(samples / "person_a.png"), tiny_pipeline.encode_identity(samples / "person_b.png")]


@pytest.fixture(scope="module")
def insightface_app(tiny_bundle, tmp_path_factory):
    """insightface's FaceAnalysis over the same pack (it wants <root>/models/<name>/)."""
    from insightface.app import FaceAnalysis

    root = tmp_path_factory.mktemp("insightface-root")
    (root / "models").mkdir()
    (root / "models" / "buffalo_l").symlink_to(tiny_bundle / "insightface" / "buffalo_l")
    app = FaceAnalysis(name="buffalo_l", root=str(root), allowed_modules=["detection", "recognition"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(512, 512))
    return app


def _direct_similarities(app, image: Image.Image, photos, halves) -> list[float | None]:
    """Independent reference: FaceAnalysis on the RGB arrays (the release hands insightface RGB),
    the largest face centred in each half, cosine of normed embeddings."""
    refs = [max(app.get(np.asarray(p)), key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])).normed_embedding
            for p in photos]
    faces = app.get(np.asarray(image))
    out = []
    for ref, (x0, x1) in zip(refs, halves):
        inside = [f for f in faces if x0 <= (f.bbox[0] + f.bbox[2]) / 2 / image.width <= x1]
        if not inside:
            out.append(None)
            continue
        face = max(inside, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        out.append(float(np.dot(face.normed_embedding, ref)))
    return out


def test_each_person_matches_their_own_half(tiny_pipeline, people, portraits, insightface_app):
    image = _collage(*portraits)
    matches = tiny_pipeline.check_identities(image, people, [LEFT, RIGHT])
    assert [m.name for m in matches] == ["person_a", "person_b"]
    assert all(m.ok for m in matches)
    assert min(m.similarity for m in matches) > 0.9
    expected = _direct_similarities(insightface_app, image, portraits, [(0, 0.5), (0.5, 1)])
    np.testing.assert_allclose([m.similarity for m in matches], expected, atol=1e-5)
    # The face used lies in its person's half.
    assert matches[0].face_box[2] <= 384 and matches[1].face_box[0] >= 384


def test_swapped_boxes_are_flagged(tiny_pipeline, people, portraits):
    matches = tiny_pipeline.check_identities(_collage(*portraits), people, [RIGHT, LEFT])
    assert [m.looks_like for m in matches] == ["person_b", "person_a"]
    assert all(m.found and m.swapped and not m.ok for m in matches)
    assert max(m.similarity for m in matches) < 0.5
    assert "swap" in matches[0].label() and "looks more like person_b" in matches[0].describe()


def test_empty_box_reports_no_face(tiny_pipeline, people, portraits, insightface_app):
    image = _collage(portraits[0], None)
    matches = tiny_pipeline.check_identities(image, people, [LEFT, RIGHT])
    assert matches[0].ok and matches[1].similarity is None and not matches[1].found
    assert matches[1].label() == "person_b no face"
    assert _direct_similarities(insightface_app, image, portraits, [(0, 0.5), (0.5, 1)])[1] is None
    # Both people mixed in one box are scored against the same face and never called a swap.
    mixed = tiny_pipeline.check_identities(image, people, [(0.0, 0.0, 1.0, 1.0)])
    assert mixed[0].similarity > 0.9 and mixed[1].similarity < 0.5 and not any(m.swapped for m in mixed)


def test_identity_without_reference_embedding_is_refused_before_generating(tiny_pipeline, people):
    bare = Identity.from_tokens(people[0].tokens, name="tokens only")
    with pytest.raises(RequestError, match="no reference face embedding"):
        tiny_pipeline.generate(Request(prompt="x", identities=[bare], width=256, height=256, steps=1, check_identities=True))
    with pytest.raises(RequestError, match="best_of"):
        Request(prompt="x", best_of=2).validate()  # nobody to rank
    with pytest.raises(RequestError, match="batch=1"):
        Request(prompt="x", identities=people, best_of=2, batch=2).validate()


def test_reference_embedding_is_kept_and_saved(people, samples, tmp_path, insightface_app):
    direct = insightface_app.get(np.asarray(Image.open(samples / "person_a.png").convert("RGB")))[0].normed_embedding
    np.testing.assert_allclose(people[0].embedding, direct, atol=1e-6)
    saved = Identity.load(people[0].save(tmp_path / "a.npz"))
    np.testing.assert_array_equal(saved.embedding, people[0].embedding)


def test_request_check_fills_scores_and_parameters(tiny_pipeline, people):
    request = Request(prompt="two people", identities=people, width=256, height=256, steps=1, sampler="ddim", seed=3,
                      check_identities=True)
    result = tiny_pipeline.generate(request)
    assert len(result.identity_scores) == 1
    assert result.identity_scores[0] == tiny_pipeline.check_identities(result.images[0], people, [LEFT, RIGHT])
    expected = ", ".join(m.label() for m in result.identity_scores[0])
    assert parse_parameters(format_parameters(result, 0))["extra"]["ID match"] == expected


def _known_image_scorer(pipe, images):
    """A scorer that scores known collages (one per run, in order) instead of the tiny model's noise."""
    fed = iter(images)
    calls = []

    def score(image, identities, boxes):
        calls.append(image)
        return pipe.check_identities(next(fed), identities, boxes)

    return score, calls


def test_best_of_ranks_seeds_by_the_least_recognisable_person(tiny_pipeline, people, portraits):
    a, b = portraits
    known = [_collage(b, a), _collage(a, None), _collage(a, b)]  # swapped, one missing, both right
    score, calls = _known_image_scorer(tiny_pipeline, known)
    steps_seen = []
    request = Request(prompt="two people", identities=people, width=256, height=256, steps=1, sampler="ddim", seed=100, best_of=3)
    result = generate_best_of(tiny_pipeline.generate, score, request, progress=lambda p: steps_seen.append((p.step, p.total)))
    # Both right; then both swapped (each person is in the picture); then one missing (a person is not).
    assert result.seeds == [102, 100, 101]
    assert len(set(result.seeds)) == 3 and result.request.seed == 100 and result.request.best_of == 3
    assert [sum(not m.found for m in scores) for scores in result.identity_scores] == [0, 0, 1]
    assert [sum(m.swapped for m in scores) for scores in result.identity_scores] == [0, 2, 0]
    # Each image is its own seed's: the images the scorer received, reordered.
    for image, seed in zip(result.images, result.seeds):
        assert image is calls[seed - 100]
    single = tiny_pipeline.generate(request.with_updates(seed=102, best_of=1))
    np.testing.assert_array_equal(np.asarray(result.images[0]), np.asarray(single.images[0]))
    # One progress stream over all runs.
    assert steps_seen == [(1, 3), (2, 3), (3, 3)]
    assert "Seed: 100" in format_parameters(result, 1) and "ID match" in format_parameters(result, 1)


def test_best_of_ties_keep_seed_order_and_equal_scores(tiny_pipeline, people, portraits):
    same = _collage(*portraits)
    score, _ = _known_image_scorer(tiny_pipeline, [same, same])
    request = Request(prompt="x", identities=people, width=256, height=256, steps=1, sampler="ddim", seed=7, best_of=2)
    result = generate_best_of(tiny_pipeline.generate, score, request)
    assert result.seeds == [7, 8]


def test_best_of_cancel_between_runs(tiny_pipeline, people, portraits):
    cancel = threading.Event()
    score, calls = _known_image_scorer(tiny_pipeline, [_collage(*portraits)] * 3)

    def score_then_cancel(image, identities, boxes):
        cancel.set()  # the user presses Cancel while the first image is being scored
        return score(image, identities, boxes)

    request = Request(prompt="x", identities=people, width=256, height=256, steps=1, sampler="ddim", seed=1, best_of=3)
    with pytest.raises(Cancelled, match="after 1 of 3"):
        generate_best_of(tiny_pipeline.generate, score_then_cancel, request, cancel=cancel)
    assert len(calls) == 1


def test_best_of_on_the_command_line(tiny_bundle, samples, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "best.png"
    code = main(["generate", "--models", str(tiny_bundle), "--face", str(samples / "person_a.png"),
                 "--face", str(samples / "person_b.png"), "--prompt", "two people", "--size", "256x256",
                 "--steps", "1", "--sampler", "ddim", "--seed", "5", "--best-of", "2", "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.strip().split(":")[0] for line in lines if line.startswith("  ")] == ["person_a", "person_b"] * 2
    written = [line for line in lines if line.endswith(".png")]
    seeds = [parse_parameters(read_parameters(path))["seed"] for path in written]
    assert len(written) == 2 and sorted(seeds) == [5, 6]  # both seeds, best first
    assert all("ID match" in parse_parameters(read_parameters(path))["extra"] for path in written)
