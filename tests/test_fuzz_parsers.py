"""Fuzz targets, one per parser of outside input: each may return or raise a project error
(DynamicIDError), nothing else, on any input. Hypothesis runs derandomized with a bounded number
of examples (all targets together stay well under a minute); inputs that once crashed a parser
are kept below as @example regression cases."""
from __future__ import annotations

import argparse
import io
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dynamicid_rt import DynamicIDError, Identity, ImageError, RequestError, parse_parameters, read_parameters

# DYNAMICID_FUZZ_EXAMPLES raises the count for a longer hunt outside CI.
FUZZ = settings(max_examples=int(os.environ.get("DYNAMICID_FUZZ_EXAMPLES", "150")), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _mutations(seed: bytes):
    """The seed file truncated, or with bytes overwritten: what a damaged download looks like."""
    return st.one_of(
        st.integers(0, len(seed)).map(lambda n: seed[:n]),
        st.lists(st.tuples(st.integers(0, max(len(seed) - 1, 0)), st.integers(0, 255)), max_size=8).map(
            lambda edits: bytes(_edit(seed, edits))),
        st.binary(max_size=512),
    )


def _edit(seed: bytes, edits) -> bytearray:
    out = bytearray(seed)
    for at, value in edits:
        out[at] = value
    return out


# -- A1111 parameters text ------------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=300))
@example("Steps: abc, Sampler: x, Seed: 1")  # ValueError before round 3
@example('a\nSteps: 1, Seed: 1, Face prompts: "[\\q]", CFG scale: 7')  # JSONDecodeError
@example('a\nSteps: 1, Seed: 1, People: "' + "[" * 3000 + '", CFG scale: 7')  # RecursionError
@example("a\nSteps: 1, Seed: 1, Size: 99999999999999999999999x1, CFG scale: 7")
@example("a\nSteps: 1, Seed: 1, ID scale: ;;, CFG scale: inf")
def test_parse_parameters_raises_only_project_errors(text):
    try:
        parsed = parse_parameters(text)
    except RequestError:
        return
    assert isinstance(parsed["prompt"], str) and isinstance(parsed["negative_prompt"], str)


def _png_with_parameters() -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 2, Sampler: Euler, CFG scale: 7")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _jpeg_with_parameters() -> bytes:
    from PIL import Image

    image = Image.new("RGB", (4, 4))
    exif = image.getexif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + "a cat\nSteps: 2".encode("utf-16-be")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


@FUZZ
@given(st.one_of(_mutations(_png_with_parameters()), _mutations(_jpeg_with_parameters())))
@example(b"\x89PNG\r\n\x1a\n")  # a signature and nothing else
def test_read_parameters_raises_only_image_errors(folder, data):
    path = folder / "image.png"
    path.write_bytes(data)
    try:
        text = read_parameters(path)
    except ImageError:
        return
    assert text is None or isinstance(text, str)


# -- checkpoint and safetensors headers ---------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=12)
tensor_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "Q4"]),
    "shape": st.lists(st.integers(-2, 6), max_size=4),
    "data_offsets": st.lists(st.integers(-4, 200), min_size=0, max_size=3),
})
headers = st.one_of(json_values, st.dictionaries(st.text(max_size=6), tensor_entries, max_size=4))


def _safetensors_bytes(header, data_size: int, declared_extra: int) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", max(len(raw) + declared_extra, 0)) + raw + b"\0" * data_size


@FUZZ
@given(headers, st.integers(0, 300), st.integers(-8, 8))
@example([], 0, 0)  # a header that is not an object: AttributeError before round 3
@example({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, 8, 0)  # IndexError
@example({"w": {"dtype": "F32", "shape": [2] * 16, "data_offsets": [0, 8]}}, 8, 0)
@example({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 4, 0)
def test_safetensors_header_check_never_raises(folder, header, data_size, declared_extra):
    from dynamicid_rt.modelfiles.weightcheck import weight_file_problem

    path = folder / "weights.safetensors"
    path.write_bytes(_safetensors_bytes(header, data_size, declared_extra))
    problem = weight_file_problem(path)
    assert problem is None or isinstance(problem, str)


def _torch_checkpoint() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"proj_module": {"w": torch.ones(2)}, "SAA_module": {"1.to_k_ip.weight": torch.ones(2, 2)}}, buffer)
    return buffer.getvalue()


@FUZZ
@given(st.sampled_from([".bin", ".safetensors"]), _mutations(_torch_checkpoint()))
def test_checkpoint_readers_raise_only_checkpoint_errors(folder, suffix, data):
    from dynamicid_rt.modelfiles.checkpoints import load_tensor_file, read_saa_checkpoint
    from dynamicid_rt.errors import CheckpointError
    from dynamicid_rt.modelfiles.weightcheck import weight_file_problem

    path = folder / f"SAA{suffix}"
    path.write_bytes(data)
    problem = weight_file_problem(path)
    assert problem is None or isinstance(problem, str)
    for read in (load_tensor_file, read_saa_checkpoint):
        try:
            read(path)
        except CheckpointError:
            pass


# -- saved identities ---------------------------------------------------------------------------

def _identity_file() -> bytes:
    buffer = io.BytesIO()
    meta = {"format": 2, "name": "a", "model_fingerprint": ""}
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), tokens=np.ones((4, 8), np.float32))
    return buffer.getvalue()


@FUZZ
@given(_mutations(_identity_file()))
def test_identity_files_raise_only_image_errors(folder, data):
    from dynamicid_rt.identity.cache import entry_problem, load_cached

    path = folder / "person.npz"
    path.write_bytes(data)
    try:
        Identity.load(path)
    except ImageError:
        pass
    problem = entry_problem(path, 8, "")
    assert problem is None or isinstance(problem, str)
    assert load_cached(path, 8, "fingerprint") is None or problem is None


# -- sampler, size and box parsers --------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=40), st.none() | st.text(max_size=20))
@example("DPM++ 2M", "Karras")
@example("", "automatic")
def test_sampler_names_raise_only_request_errors(name, schedule):
    from dynamicid_rt import canonical_sampler
    from dynamicid_rt.formats.pngmeta import sampler_from_a1111

    try:
        canonical_sampler(name, schedule)
    except RequestError:
        pass
    assert sampler_from_a1111(name, schedule) is None or isinstance(sampler_from_a1111(name, schedule), str)


@FUZZ
@given(st.text(max_size=30))
@example("512x")
@example("1e400,0,1,1")
@example("²x1")  # a digit for str.isdigit(), not for int(): ValueError before round 3
def test_command_line_parsers_raise_only_argument_errors(text):
    from dynamicid_rt.cli import _box, _face_index, _size

    for parse in (_size, _box, _face_index):
        try:
            parse(text)
        except argparse.ArgumentTypeError:
            pass


@FUZZ
@given(st.text(max_size=20), st.integers(-10, 2000), st.floats(allow_nan=True, allow_infinity=True))
def test_request_fields_raise_only_request_errors(prompt, steps, guidance):
    from dynamicid_rt import Request

    try:
        Request(prompt=prompt, steps=steps, guidance=guidance).validate()
    except DynamicIDError as exc:
        assert isinstance(exc, RequestError)


# -- LoRA files -----------------------------------------------------------------------------------

def _lora_file() -> bytes:
    """A small valid kohya LoRA in bf16 and fp32 with an alpha: the seed of the mutations."""
    import torch
    from safetensors.torch import save as save_torch

    key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    return save_torch({f"{key}.lora_down.weight": torch.ones(2, 4, dtype=torch.bfloat16),
                       f"{key}.lora_up.weight": torch.ones(4, 2), f"{key}.alpha": torch.tensor(1.0)},
                      metadata={"sshs_model_hash": "0123456789ab"})


@FUZZ
@given(st.one_of(_mutations(_lora_file()), headers.map(lambda h: _safetensors_bytes(h, 64, 0))))
@example(_safetensors_bytes({"lora_unet_a.lora_down.weight": {"dtype": "BF16", "shape": [0, 4], "data_offsets": [0, 0]},
                             "lora_unet_a.lora_up.weight": {"dtype": "F32", "shape": [4, 0], "data_offsets": [0, 0]}}, 0, 0))
@example(_safetensors_bytes({"lora_unet_a.lora_down.weight": {"dtype": "F64", "shape": [1, 1], "data_offsets": [0, 8]},
                             "lora_unet_a.lora_up.weight": {"dtype": "I64", "shape": [1, 1], "data_offsets": [8, 16]}}, 16, 0))
def test_lora_reader_raises_only_project_errors(folder, data):
    from dynamicid_rt.modelfiles.lora import read_lora

    path = folder / "lora.safetensors"
    path.write_bytes(data)
    try:
        lora = read_lora(path)
    except DynamicIDError as exc:
        assert "\n" not in str(exc)
    else:
        assert lora.layers and all(np.isfinite(layer.up).all() and np.isfinite(layer.down).all() for layer in lora.layers.values())
