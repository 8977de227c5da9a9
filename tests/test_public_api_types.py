"""The public API given wrong types or values raises only the project's errors (DynamicIDError),
one line each, never a raw Python error and never a hang: the constructors fed values of random
types (Hypothesis ``from_type``), and the helpers and writers given None, folders and devices."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamicid_rt import (
    DynamicIDError, Identity, LoraRef, Request, canonical_sampler, check_output_path, latent_to_rgb, parse_lora_arg, prompt_loras,
    save_png,
)

FUZZ = settings(max_examples=int(os.environ.get("DYNAMICID_FUZZ_EXAMPLES", "120")), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# A value of a random type: what a caller passes by mistake.
anything = st.sampled_from([int, float, str, bytes, bool, complex, list, tuple, dict, type(None)]).flatmap(st.from_type)


def _only_project_errors(call) -> None:
    try:
        call()
    except DynamicIDError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.sampled_from(["prompt", "negative_prompt", "width", "height", "steps", "guidance", "sampler", "seed", "batch",
                        "id_scale", "gating", "boost", "boost_steps", "mix", "boxes", "initial_latents", "best_of", "loras",
                        "tcd_gamma", "identities", "activation_maps", "check_identities"]), anything)
def test_request_fields_of_wrong_types(field, value):
    _only_project_errors(lambda: Request(**{"prompt": "x", field: value}))


@FUZZ
@given(st.sampled_from(["tokens", "base_tokens", "face_box", "landmarks", "pose", "source_prompt", "face_prompt", "thumbnail",
                        "num_faces", "face_index", "warnings", "name", "embedding", "model_fingerprint"]), anything)
def test_identity_fields_of_wrong_types(field, value):
    fields = {"tokens": np.zeros((4, 8), np.float32), field: value}
    _only_project_errors(lambda: Identity(**fields))


@FUZZ
@given(anything, anything)
def test_helpers_given_wrong_types(first, second):
    for call in (lambda: canonical_sampler(first, second), lambda: parse_lora_arg(first), lambda: prompt_loras(first),
                 lambda: latent_to_rgb(first), lambda: Request("x", loras=[LoraRef(first, second)])):
        _only_project_errors(call)


@pytest.mark.parametrize("tokens", [np.full((4, 64), 1e39), np.zeros((4, 0)), np.zeros((4, 8), np.int64), [[1.0] * 8] * 3])
def test_identity_tokens_are_checked_as_float32(tokens):
    with pytest.raises(DynamicIDError):
        Identity(tokens=tokens)


def test_identity_metadata_fields_are_typed():
    for bad in ({"face_box": "abc"}, {"face_box": (0, 0, 1)}, {"pose": (True, 0, 0)}, {"num_faces": -1}, {"warnings": "x"},
                {"embedding": np.zeros(3)}, {"landmarks": np.full((106, 2), np.nan)}):
        with pytest.raises(DynamicIDError):
            Identity(tokens=np.zeros((4, 8), np.float32), **bad)


def test_writers_refuse_folders_devices_and_non_text(tmp_path):
    from PIL import Image

    identity = Identity(tokens=np.zeros((4, 8), np.float32))
    for target in (tmp_path, "/proc/identity.npz", None, 5):
        with pytest.raises(DynamicIDError):
            identity.save(target)
    image = Image.new("RGB", (8, 8))
    for image_arg, parameters in ((image, "a\udc80b"), (image, None), (None, "x")):
        with pytest.raises(DynamicIDError):
            save_png(image_arg, tmp_path / "x.png", parameters)
    for path in (None, 5, b"x.png"):
        with pytest.raises(DynamicIDError):
            check_output_path(path)


def test_pipeline_load_refuses_wrong_arguments_before_opening_anything(tiny_bundle):
    from dynamicid_rt import Pipeline

    for kwargs in ({"models": 5}, {"models": tiny_bundle, "device": 5}, {"models": tiny_bundle, "onnx_cache": "/dev/null"},
                   {"models": tiny_bundle, "backend_options": 5}, {"models": tiny_bundle, "backend": None}):
        with pytest.raises(DynamicIDError):
            Pipeline.load(**kwargs)
    with pytest.raises(DynamicIDError):  # the old spelling is checked too
        Pipeline.load(tiny_bundle, engine_dir="/dev/null")
