"""End to end on the tiny bundle: identities, generation, and every bad input of the core issue."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from dynamicid_rt import Identity, Request, format_parameters
from dynamicid_rt.backends.base import Backend
from dynamicid_rt.errors import Cancelled, ImageError, NoFaceError, NumericalError, RequestError


@pytest.fixture(scope="module")
def people(tiny_pipeline, samples):
    return [
        tiny_pipeline.encode_identity(samples / "person_a.png"),
        tiny_pipeline.encode_identity(samples / "person_b.png", face_prompt="in a happy expression, facing up"),
    ]


def _record_runs(monkeypatch, pipe):
    calls = []
    original = pipe.backend.run

    def run(engine, inputs):
        calls.append((engine, {k: np.array(v) for k, v in inputs.items()}))
        return original(engine, inputs)

    monkeypatch.setattr(pipe.backend, "run", run)
    _unet_through_run(monkeypatch, pipe)
    return calls


def _unet_through_run(monkeypatch, pipe):
    """Route the bound UNet (TorchBackend.bind keeps it on the device) through ``run``, where tests look."""
    monkeypatch.setattr(pipe.backend, "bind", lambda engine, constants: Backend.bind(pipe.backend, engine, constants))


def test_two_people_image(tiny_pipeline, people):
    req = Request(prompt="two people in a park", identities=people, width=256, height=320, steps=3, seed=7, sampler="euler")
    result = tiny_pipeline.generate(req)
    image = np.asarray(result.images[0])
    assert image.shape == (320, 256, 3)
    assert image.std() > 0  # random weights draw noise, but never a flat image
    assert result.seeds == [7] and result.gating is True and result.sampler == "euler"
    assert {"text", "denoise", "decode", "total"} <= set(result.timings)
    text = format_parameters(result, 0)
    assert "Seed: 7" in text and "ID gating: on" in text and "Size: 256x320" in text


def test_generate_matches_diffusers_reference(tiny_pipeline, tiny_bundle, people):
    """The pipeline's CFG + DDIM + VAE path against a loop written here with diffusers' own pieces."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from dynamicid_rt.models import load_unet

    steps, guidance, width, height = 3, 5.0, 256, 256
    noise = np.random.default_rng(3).standard_normal((1, 4, height // 8, width // 8)).astype(np.float32)
    req = Request(prompt="a photo", negative_prompt="blurry", identities=people, width=width, height=height,
                  steps=steps, guidance=guidance, sampler="ddim", seed=1, initial_latents=noise, boost=4.0, boost_steps=1)
    ours = np.asarray(tiny_pipeline.generate(req).images[0]).astype(np.int16)

    base = tiny_bundle / "base"
    tok = CLIPTokenizer.from_pretrained(base / "tokenizer")
    text = CLIPTextModel.from_pretrained(base / "text_encoder").eval()
    unet = load_unet(base, tiny_bundle / "dynamicid" / "SAA.bin").eval()
    vae = AutoencoderKL.from_pretrained(base / "vae").eval()
    sched = DDIMScheduler.from_pretrained(base / "scheduler")
    sched.set_timesteps(steps)
    ids = tok(["blurry", "a photo"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ctx = text(ids).last_hidden_state
        uncond = tiny_pipeline.identities.unconditional_tokens()
        id_tokens = torch.from_numpy(np.stack([np.tile(uncond, (2, 1)), np.concatenate([p.tokens for p in people])]))
        boxes = torch.tensor([[0, 0, 1, 0.5], [0, 0.5, 1, 1]])
        x = torch.from_numpy(noise) * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            boost = torch.tensor([4.0 if i < 1 else 0.0])
            eps = unet(torch.cat([x, x]), torch.full((2,), float(t)), ctx, id_tokens, boxes,
                       torch.tensor([1.0, 1.0]), boost, torch.tensor([1.0]), torch.tensor([0.5]))
            eps = eps[:1] + guidance * (eps[1:] - eps[:1])
            x = sched.step(eps, t, x).prev_sample
        image = vae.decode(x / vae.config.scaling_factor).sample.clamp(-1, 1)
    ref = ((image[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.int16)
    assert np.abs(ours - ref).max() <= 1


def test_same_seed_same_image_and_batch_seeds(tiny_pipeline, people):
    req = Request(prompt="x", identities=people[:1], width=256, height=256, steps=2, seed=11, batch=2, sampler="ddim")
    a, b = tiny_pipeline.generate(req), tiny_pipeline.generate(req)
    assert a.seeds == [11, 12]
    assert np.array_equal(np.asarray(a.images[1]), np.asarray(b.images[1]))
    assert not np.array_equal(np.asarray(a.images[0]), np.asarray(a.images[1]))
    single = tiny_pipeline.generate(req.with_updates(seed=12, batch=1))
    # Image i is reproducible alone (up to float rounding of a different batch size).
    diff = np.abs(np.asarray(single.images[0]).astype(int) - np.asarray(a.images[1]).astype(int))
    assert diff.max() <= 2


def test_boost_only_in_first_steps_and_gating_auto(monkeypatch, tiny_pipeline, people):
    calls = _record_runs(monkeypatch, tiny_pipeline)
    req = Request(prompt="x", identities=people, width=256, height=256, steps=5, sampler="ddim", boost=3.0, boost_steps=2, seed=0)
    tiny_pipeline.generate(req)
    unet_calls = [c for e, c in calls if e == "unet"]
    assert [float(c["id_boost"][0]) for c in unet_calls] == [3.0, 3.0, 0.0, 0.0, 0.0]
    assert all(float(c["id_gating"][0]) == 1.0 for c in unet_calls)
    assert unet_calls[0]["id_tokens"].shape == (2, 8, tiny_pipeline.dims.context_dim)  # CFG rows x 4N tokens
    calls.clear()
    tiny_pipeline.generate(req.with_updates(identities=people[:1], boxes=None, steps=1))
    assert float([c for e, c in calls if e == "unet"][0]["id_gating"][0]) == 0.0  # one person: gating off


def test_cancel_between_steps(tiny_pipeline, people):
    cancel, seen = threading.Event(), []

    def progress(info):
        seen.append(info.step)
        assert info.latent.shape == (1, 4, 32, 32)
        if info.step == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        tiny_pipeline.generate(Request(prompt="x", identities=people, width=256, height=256, steps=10, sampler="ddim"),
                               progress=progress, cancel=cancel)
    assert seen == [1, 2]


def test_nan_in_unet_is_reported(monkeypatch, tiny_pipeline, people):
    original = tiny_pipeline.backend.run

    def run(engine, inputs):
        out = original(engine, inputs)
        if engine == "unet":
            out["noise_pred"][...] = np.nan
        return out

    monkeypatch.setattr(tiny_pipeline.backend, "run", run)
    _unet_through_run(monkeypatch, tiny_pipeline)
    with pytest.raises(NumericalError, match="NaN"):
        tiny_pipeline.generate(Request(prompt="x", identities=people, width=256, height=256, steps=2))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 300}, "multiple of 64"),
        ({"height": 2048}, "between 256 and 1024"),
        ({"boxes": [(0, 0, 1, 1)] * 3}, "3 boxes for 2 identities"),
        ({"boxes": [(0, 0, 1, 0.5), (0, 0.5, 1.2, 1)]}, r"\[0, 1\]"),
        ({"boxes": [(0, 0, 1, 0.5), (0.5, 0.5, 0.5, 1)]}, "empty box"),
        ({"steps": 0}, "steps"),
        ({"mix": 1.5}, "mix"),
        ({"sampler": "heun"}, "choose one of"),
        ({"initial_latents": np.zeros((1, 4, 8, 8), np.float32)}, "initial_latents"),
    ],
)
def test_bad_requests(tiny_pipeline, people, changes, message):
    with pytest.raises(RequestError, match=message):  # refused when the Request is made, or by generate
        tiny_pipeline.generate(Request(prompt="x", identities=people, width=256, height=256, steps=2).with_updates(**changes))


def test_too_many_identities(tiny_pipeline, people):
    with pytest.raises(RequestError, match="at most 4"):
        Request(prompt="x", identities=people * 3).validate()


def test_face_errors_and_choice(tiny_pipeline, samples, tmp_path, caplog):
    with pytest.raises(NoFaceError, match="no face"):
        tiny_pipeline.encode_identity(samples / "no_face.png")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="notes.png"):
        tiny_pipeline.encode_identity(bad)
    with caplog.at_level(logging.WARNING):
        two = tiny_pipeline.encode_identity(samples / "two_faces.png")
    assert two.num_faces == 2 and two.warnings and "largest" in caplog.text
    faces = tiny_pipeline.detect_faces(samples / "two_faces.png")
    areas = [(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]) for f in faces]
    assert two.face_index == int(np.argmax(areas))
    other = tiny_pipeline.encode_identity(samples / "two_faces.png", face_index=1 - two.face_index)
    assert not np.allclose(other.tokens, two.tokens)


def test_identity_tokens_match_direct_stages(tiny_pipeline, samples):
    """Identity tokens = projector(ArcFace embedding, CLIP penultimate states) computed stage by stage here."""
    from dynamicid_rt.identity.clip_preprocessing import clip_pixel_values
    from dynamicid_rt.identity.photos import load_photo

    photo = load_photo(samples / "person_a.png")
    ident = tiny_pipeline.encode_identity(samples / "person_a.png")
    face = tiny_pipeline.detect_faces(samples / "person_a.png")[ident.face_index]
    backend = tiny_pipeline.backend
    hidden = backend.run("image_encoder", {"pixel_values": clip_pixel_values(photo)[None]})["hidden_states"]
    tokens = backend.run("face_projector", {"id_embeds": face.embedding[None], "clip_hidden": hidden})["id_tokens"][0]
    np.testing.assert_allclose(ident.tokens, tokens, rtol=1e-5, atol=1e-6)
    assert ident.source_prompt.startswith("in a neutral expression, ")


def test_expression_edit_and_target_landmarks(tiny_pipeline, samples):
    plain = tiny_pipeline.encode_identity(samples / "person_a.png")
    happy = tiny_pipeline.encode_identity(samples / "person_a.png", face_prompt="in a happy expression")
    target = tiny_pipeline.encode_identity(samples / "person_a.png", face_prompt="in a happy expression",
                                           target_landmarks=samples / "person_a_smiling.png")
    assert happy.edited and not plain.edited
    np.testing.assert_array_equal(happy.base_tokens, plain.tokens)
    assert not np.allclose(happy.tokens, plain.tokens)
    assert not np.allclose(target.tokens, happy.tokens)


def test_identity_cache_and_file_roundtrip(monkeypatch, tiny_pipeline, samples, tmp_path):
    first = tiny_pipeline.encode_identity(samples / "person_b.png", emotion="sad")
    calls = _record_runs(monkeypatch, tiny_pipeline)
    again = tiny_pipeline.encode_identity(samples / "person_b.png", emotion="sad")
    assert calls == []  # served from the on-disk cache: no model ran
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert "sad" in again.source_prompt
    saved = Identity.load(first.save(tmp_path / "b.npz"))
    np.testing.assert_array_equal(saved.tokens, first.tokens)
    assert saved.face_box == first.face_box and saved.source_prompt == first.source_prompt
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(ImageError, match="broken.npz"):
        Identity.load(tmp_path / "broken.npz")


def test_long_prompt_is_truncated_with_warning(tiny_pipeline, people, caplog):
    with caplog.at_level(logging.WARNING):
        tiny_pipeline.generate(Request(prompt="word " * 120, identities=people[:1], width=256, height=256, steps=1))
    assert "truncated" in caplog.text


def test_png_parameters_roundtrip(tiny_pipeline, people, tmp_path):
    from dynamicid_rt import parse_parameters, read_parameters, save_png

    req = Request(prompt="two friends, smiling", negative_prompt="bad, ugly", identities=people,
                  boxes=[(0, 0, 1, 0.4), (0.1, 0.4, 1, 1)], width=256, height=256, steps=2, seed=5, sampler="dpmpp_2m_karras",
                  guidance=6.5, mix=0.3)
    result = tiny_pipeline.generate(req)
    path = save_png(result.images[0], tmp_path / "out.png", format_parameters(result, 0))
    parsed = parse_parameters(read_parameters(path))
    assert parsed["prompt"] == req.prompt and parsed["negative_prompt"] == req.negative_prompt
    assert (parsed["steps"], parsed["seed"], parsed["sampler"], parsed["guidance"]) == (2, 5, "dpmpp_2m_karras", 6.5)
    assert (parsed["width"], parsed["height"], parsed["mix"]) == (256, 256, 0.3)
    assert parsed["boxes"] == [(0, 0, 1, 0.4), (0.1, 0.4, 1, 1)]
    assert parsed["face_prompts"] == ["", "in a happy expression, facing up"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_activation_maps_follow_the_boxes(tiny_pipeline, people):
    req = Request(prompt="x", identities=people, width=256, height=256, steps=2, sampler="ddim", seed=3,
                  boxes=[(0, 0, 1, 0.5), (0, 0.5, 1, 1)], activation_maps=True)
    maps = tiny_pipeline.generate(req).activation_maps
    assert maps is not None and maps[0].shape == (2, 32, 32)
    first, second = maps[0]
    assert 0.0 <= maps[0].min() and maps[0].max() <= 1.0 and first.max() > 0.5 and second.max() > 0.5
    # Region masks: a person's tokens draw nothing inside the other person's box (away from the
    # seam, which bilinear resizing of the coarse layers blurs).
    assert first[:, 24:].max() < 1e-6 and second[:, :8].max() < 1e-6
    assert tiny_pipeline.generate(req.with_updates(activation_maps=False)).activation_maps is None
