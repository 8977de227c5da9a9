"""Engine contract v2 (SPEC §1.5, §4) through the stack: per-person ``id_scale`` (N), the imr output
``edited_tokens`` mapped by name, and engine caches from contract v1 rebuilt with a reason.

UNet numbers are checked against the unfused reference of ``tests/saa_reference.py`` on the tiny
bundle's own weights (base UNet unmerged, SAA processors from SAA.bin)."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import onnx
import pytest
import torch

from dynamicid_rt import Request, format_parameters, parse_parameters, read_parameters, save_png
from dynamicid_rt.modelfiles.checkpoints import read_saa_checkpoint
from dynamicid_rt.cli import build_parser, main
from dynamicid_rt.contract import CONTRACT_VERSION, ENGINES
from dynamicid_rt.errors import RequestError
from dynamicid_rt.modelfiles.paths import ModelPaths
from saa_reference import reference_unet

PER_PERSON = [1.0, 0.3, 0.0]
V2_REASON = "engine contract v1 -> v2 (per-person id_scale, imr output edited_tokens)"


@pytest.fixture(scope="module")
def paths(tiny_bundle):
    return ModelPaths.from_folder(tiny_bundle)


@pytest.fixture(scope="module")
def ort_backend(paths, tiny_engines):
    from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(paths, device="cpu", engine_dir=tiny_engines)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def people(tiny_pipeline, samples):
    return [tiny_pipeline.encode_identity(samples / "person_a.png"), tiny_pipeline.encode_identity(samples / "person_b.png")]


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def _unet_inputs(dims, scale, n_ids=3, seed=4) -> dict[str, np.ndarray]:
    inputs = ENGINES["unet"].sample_inputs(dims, seed=seed, B=1, h=32, w=40, N=n_ids, M=n_ids)
    edges = np.linspace(0, 1, n_ids + 1)
    inputs["id_boxes"] = np.array([[0.0, edges[i], 1.0, edges[i + 1]] for i in range(n_ids)], np.float32)
    inputs["id_scale"] = np.asarray(scale, np.float32)
    inputs["id_boost"] = np.array([4.0], np.float32)
    inputs["id_gating"] = np.array([1.0], np.float32)
    inputs["timestep"] = np.array([700.0], np.float32)
    return inputs


def _reference(tiny_bundle, inputs) -> np.ndarray:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_bundle / "base" / "unet").eval()
    processors = read_saa_checkpoint(tiny_bundle / "dynamicid" / "SAA.bin").processors
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    return reference_unet(
        unet, processors, t["sample"], t["timestep"], t["encoder_hidden_states"], t["id_tokens"], t["id_boxes"],
        t["id_scale"], t["id_boost"], t["id_gating"], t["id_mix"],
    ).numpy()


def test_per_person_scale_matches_reference_in_torch_and_onnxruntime(tiny_bundle, tiny_pipeline, ort_backend):
    inputs = _unet_inputs(ort_backend.dims, PER_PERSON)
    ref = _reference(tiny_bundle, inputs)
    ours_ort = ort_backend.run("unet", inputs)["noise_pred"]
    ours_torch = tiny_pipeline.backend.run("unet", inputs)["noise_pred"]
    assert _rel(ours_ort, ref) <= 1e-4 and _rel(ours_torch, ref) <= 1e-4
    # The graph really takes one value per person: the same call at a single strength differs.
    uniform = ort_backend.run("unet", {**inputs, "id_scale": np.ones(3, np.float32)})["noise_pred"]
    assert _rel(uniform, ref) > 1e-3


def test_imr_output_is_edited_tokens_by_name_on_every_backend(tiny_pipeline, ort_backend, tiny_engines):
    graph = onnx.load(str(tiny_engines / "imr-fp32" / "model.onnx"), load_external_data=False)
    assert [o.name for o in graph.graph.output] == ["edited_tokens"]  # graph names == contract names
    inputs = ENGINES["imr"].sample_inputs(ort_backend.dims, seed=8)
    by_torch = tiny_pipeline.backend.run("imr", inputs)
    by_ort = ort_backend.run("imr", inputs)
    bound = ort_backend.bind("imr", {"landmarks": inputs["landmarks"], "text_pooled": inputs["text_pooled"]})
    by_binding = bound({"id_tokens": inputs["id_tokens"]})
    assert set(by_torch) == set(by_ort) == set(by_binding) == {"edited_tokens"}
    assert _rel(by_ort["edited_tokens"], by_torch["edited_tokens"]) <= 1e-4
    np.testing.assert_allclose(by_binding["edited_tokens"], by_ort["edited_tokens"], rtol=0, atol=1e-6)
    # The edit is real: the output is not the input passed through.
    assert _rel(by_ort["edited_tokens"], inputs["id_tokens"]) > 1e-2


@pytest.mark.parametrize("v1_field", ["absent", 1])
def test_engine_cache_from_contract_v1_is_rebuilt_with_reason(paths, tiny_engines, tmp_path, caplog, v1_field):
    from dynamicid_rt.export import build_engines, cache

    shutil.copytree(tiny_engines / "face_projector-fp32", tmp_path / "face_projector-fp32")
    manifest_path = tmp_path / "face_projector-fp32" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["contract_version"] == CONTRACT_VERSION == 2
    assert build_engines(paths, tmp_path, engines=["face_projector"])[0].reused  # the copy itself is valid
    if v1_field == "absent":
        del manifest["contract_version"]  # v1 manifests had no such field
    else:
        manifest["contract_version"] = v1_field
    manifest_path.write_text(json.dumps(manifest))
    expected = cache.expected_manifest(paths, "face_projector", "fp32")
    assert cache.check_entry(tmp_path / "face_projector-fp32", expected) == (None, V2_REASON)
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.export.cache"):
        (entry,) = build_engines(paths, tmp_path, engines=["face_projector"])
    assert not entry.reused and V2_REASON in caplog.text and "rebuilding face_projector" in caplog.text
    assert json.loads(manifest_path.read_text())["contract_version"] == CONTRACT_VERSION


def _generate(pipe, request, monkeypatch):
    """Images, final latents and the UNet's fixed inputs (id_scale, id_tokens...) of one generation."""
    calls, latents = [], []
    original = pipe.backend.bind

    def bind(engine, constants):
        if engine == "unet":
            calls.append({k: np.array(v) for k, v in constants.items()})
        return original(engine, constants)

    monkeypatch.setattr(pipe.backend, "bind", bind)
    result = pipe.generate(request, progress=lambda info: latents.append(np.array(info.latent)))
    monkeypatch.undo()
    return result, latents[-1], calls


def test_equal_per_person_values_are_bit_identical_to_the_scalar(tiny_pipeline, people, monkeypatch):
    req = Request(prompt="two people", identities=people, width=256, height=256, steps=2, seed=5, sampler="ddim", id_scale=0.7)
    scalar, scalar_latents, scalar_calls = _generate(tiny_pipeline, req, monkeypatch)
    listed, listed_latents, listed_calls = _generate(tiny_pipeline, req.with_updates(id_scale=[0.7, 0.7]), monkeypatch)
    assert np.array_equal(scalar_latents, listed_latents)
    assert np.array_equal(np.asarray(scalar.images[0]), np.asarray(listed.images[0]))
    assert len(scalar_calls) == len(listed_calls) == 1
    for call in scalar_calls + listed_calls:
        assert call["id_scale"].dtype == np.float32 and call["id_scale"].tolist() == [np.float32(0.7)] * 2
    # Different strengths per person do change the image.
    apart, apart_latents, apart_calls = _generate(tiny_pipeline, req.with_updates(id_scale=[1.5, 0.0]), monkeypatch)
    assert apart_calls[0]["id_scale"].tolist() == [1.5, 0.0]
    assert not np.allclose(apart_latents, scalar_latents, atol=1e-4)


def test_no_identities_run_one_unconditional_person_at_zero(tiny_pipeline, monkeypatch):
    req = Request(prompt="a park", width=256, height=256, steps=1, seed=1, sampler="ddim")
    _, _, calls = _generate(tiny_pipeline, req, monkeypatch)
    uncond = tiny_pipeline.identities.unconditional_tokens()
    assert calls[0]["id_scale"].tolist() == [0.0]
    assert calls[0]["id_tokens"].shape == (2, 4, uncond.shape[-1])
    assert np.array_equal(calls[0]["id_tokens"][1], uncond)


@pytest.mark.parametrize(
    "id_scale, message",
    [
        ([1.0], "1 value(s) for 2 identities"),
        ([1.0, 0.5, 0.2], "3 value(s) for 2 identities"),
        ([1.0, -0.1], ">= 0"),
        ([1.0, float("nan")], "finite"),
        (float("inf"), "finite"),
        ("strong", "give a number"),
        ([True, 1.0], "finite number"),
    ],
)
def test_bad_id_scale_is_a_request_error(people, id_scale, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Request(prompt="x", identities=people, id_scale=id_scale).validate()


def test_cli_id_scale_per_face_and_count_checked_before_loading(tmp_path, caplog):
    args = build_parser().parse_args(["generate", "--models", "m", "--prompt", "x", "--id-scale", "1", "--id-scale", "0.25"])
    assert args.id_scale == [1.0, 0.25]
    faces = ["--face", "a.png", "--face", "b.png"]
    # Checked before any model loads: neither the models folder nor the photos exist.
    code = main(["generate", "--models", str(tmp_path / "nowhere"), *faces, "--id-scale", "1", "--id-scale", "0.5",
                 "--id-scale", "0.2", "--prompt", "x"])
    assert code == 1 and "3 --id-scale values given for 2 --face photo(s)" in caplog.text


def test_per_person_id_scale_round_trips_through_png_parameters(tiny_pipeline, people, tmp_path):
    req = Request(prompt="two people", identities=people, width=256, height=256, steps=1, seed=3, id_scale=[1.0, 0.25])
    result = tiny_pipeline.generate(req)
    save_png(result.images[0], tmp_path / "two.png", format_parameters(result, 0))
    text = read_parameters(tmp_path / "two.png")
    assert "ID scale: 1.0;0.25," in text  # per person, ";"-separated like the boxes
    assert parse_parameters(text)["id_scale"] == [1.0, 0.25]
    single = tiny_pipeline.generate(req.with_updates(identities=people[:1], id_scale=0.6))
    assert parse_parameters(format_parameters(single, 0))["id_scale"] == 0.6
