"""Round 3: one validation pass before any work. A Request, an Identity and the encoding options
are checked when made; hostile files (FIFOs, devices, NaN identities, npz bombs, odd images)
give the project's one-line errors, never a hang or a traceback."""
from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest

from dynamicid_rt import Identity, ImageError, Request, RequestError, read_parameters, save_image
from dynamicid_rt.cli import main
from dynamicid_rt.errors import BackendError


def _error(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


@pytest.mark.parametrize("changes, field", [
    ({"guidance": 1e300}, "guidance"),
    ({"guidance": -1e300}, "guidance"),
    ({"guidance": float("nan")}, "guidance"),
    ({"guidance": "7"}, "guidance"),
    ({"boost": 1e9}, "boost"),
    ({"id_scale": 1e9}, "id_scale"),
    ({"boost_steps": -1}, "boost_steps"),
    ({"boxes": ["0,0,1,1"]}, "box 0"),
    ({"boxes": [(0, 0, 1)]}, "box 0"),
    ({"boxes": [("0", 0, 1, 1)]}, "box 0"),
    ({"boxes": [None]}, "box 0"),
    ({"prompt": "a \udcff cat"}, "prompt holds U\\+DCFF at position 2"),
    ({"negative_prompt": "\ud800"}, "negative_prompt"),
    ({"prompt": "x" * 20000}, "prompt is 20000 characters"),
    ({"initial_latents": [[1], [1, 2]]}, "initial_latents"),
])
def test_request_is_validated_when_made(changes, field):
    with pytest.raises(RequestError, match=field):
        Request(**{"prompt": "x", **changes})


@dataclass
class _Person:
    tokens: np.ndarray
    name: str = "p"
    face_prompt: str | None = None


def test_a_persons_face_prompt_must_be_text_the_parameters_can_hold():
    with pytest.raises(RequestError, match=r"identities\[0\].face_prompt"):
        Request(prompt="x", identities=[_Person(np.zeros((4, 8), np.float32), face_prompt="smile \udc80")])


@pytest.mark.parametrize("tokens", ["abc", None, 3, [[1.0, 2.0], [3.0]], np.full((4, 8), np.nan, np.float32), np.zeros((3, 8))])
def test_identity_tokens_are_checked_when_made(tokens):
    with pytest.raises(RequestError, match="tokens"):
        Identity(tokens=tokens)


def _saved_identity(tmp_path, **arrays) -> os.PathLike:
    good = Identity(tokens=np.ones((4, 8), np.float32), base_tokens=np.ones((4, 8), np.float32), name="a")
    path = good.save(tmp_path / "a.npz")
    with np.load(path) as data:
        contents = {k: data[k] for k in data.files}
    contents.update(arrays)
    np.savez(path, **contents)
    return path


def test_saved_identity_with_nan_tokens_is_refused(tmp_path):
    path = _saved_identity(tmp_path, tokens=np.full((4, 8), np.nan, np.float32))
    with pytest.raises(ImageError, match="NaN"):
        Identity.load(path)


def test_saved_identity_whose_header_promises_terabytes_is_refused_unread(tmp_path):
    path = tmp_path / "bomb.npz"
    header, meta = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    np.save(meta, np.frombuffer(json.dumps({"format": 2}).encode(), np.uint8))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("tokens.npy", header.getvalue())  # 4 TB promised, none of it there
        archive.writestr("meta.npy", meta.getvalue())
    with pytest.raises(ImageError, match="too large"):
        Identity.load(path)


def test_saved_identity_holding_objects_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, meta=np.frombuffer(b"{}", np.uint8), tokens=np.array([object()], dtype=object))
    with pytest.raises(ImageError, match="objects"):
        Identity.load(path)


@pytest.mark.parametrize("kind", ["folder", "fifo", "text", "missing"])
def test_identity_load_names_what_the_path_is(tmp_path, kind):
    path = tmp_path / "x.npz"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "text":
        path.write_text("hello")
    with pytest.raises(ImageError, match={"folder": "is a folder", "fifo": "not a regular file", "text": "not a saved identity",
                                          "missing": "does not exist"}[kind]):
        Identity.load(path)


def test_negative_face_index_is_refused_before_face_analysis(tiny_pipeline, samples, monkeypatch):
    def no_analysis():
        raise AssertionError("face analysis ran before face_index was checked")

    monkeypatch.setattr(tiny_pipeline.identities, "_analyzer", None)
    monkeypatch.setattr(tiny_pipeline.identities, "_make_analyzer", no_analysis)
    with pytest.raises(RequestError, match="face_index=-1"):
        tiny_pipeline.encode_identity(samples / "person_a.png", face_index=-1)
    with pytest.raises(RequestError, match="face_prompt"):
        tiny_pipeline.encode_identity(samples / "person_a.png", face_prompt="smile \udcff")


def test_cli_refuses_negative_face_index_and_non_utf8_face_prompt_while_parsing(samples, capsys):
    for extra in (["--face-index", "-1"], ["--face-prompt", "smile \udcff"]):
        with pytest.raises(SystemExit) as info:
            main(["generate", "--prompt", "x", "--face", str(samples / "person_a.png"), *extra])
        assert info.value.code == 2
    assert "whole number >= 0" in capsys.readouterr().err


def test_cli_non_utf8_prompt_is_one_line_before_models_load(tmp_path, caplog):
    code = main(["generate", "--models", str(tmp_path / "none"), "--prompt", "a \udcff cat", "--out", str(tmp_path / "o.png")])
    assert code == 1 and "not text" in _error(caplog)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "loop"])
def test_face_that_is_not_a_regular_file_is_named_as_such(tmp_path, caplog, kind):
    path = tmp_path / "face.png"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        path.symlink_to(path)
    else:
        path = "/dev/zero"
    code = main(["generate", "--models", str(tmp_path / "none"), "--prompt", "x", "--face", str(path), "--out", str(tmp_path / "o.png")])
    message = _error(caplog)
    assert code == 1 and ("symlink loop" if kind == "loop" else "not a regular file") in message and "does not exist" not in message


def test_api_refuses_a_fifo_photo_without_blocking(tmp_path):
    from dynamicid_rt import load_photo

    os.mkfifo(tmp_path / "face.png")
    with pytest.raises(ImageError, match="not a regular file"):
        load_photo(tmp_path / "face.png")


def test_a_device_name_no_backend_knows_is_named_as_such():
    from dynamicid_rt.backends.registry import choose_auto

    with pytest.raises(BackendError, match="'gpu0' is not a device name; use cpu, cuda") as info:
        choose_auto("gpu0")
    assert "install" not in str(info.value)


@pytest.mark.parametrize("kind, expected", [
    ("none", "must be a file path"),
    ("folder", "is a folder"),
    ("fifo", "not a regular file"),
    ("text", "not a readable image"),
    ("truncated", "not a readable image"),
    ("ztxt-bomb", "not a readable image"),
])
def test_read_parameters_raises_only_image_errors(tmp_path, kind, expected):
    from PIL import Image, PngImagePlugin

    path = tmp_path / "in.png"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "text":
        path.write_text("Steps: 20, Sampler: Euler, CFG scale: 7")
    elif kind in ("truncated", "ztxt-bomb"):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "a" * (4 << 20) if kind == "ztxt-bomb" else "a cat", zip=kind == "ztxt-bomb")
        Image.new("RGB", (8, 8)).save(path, pnginfo=info)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ImageError, match=expected):
        read_parameters(None if kind == "none" else path)


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".png"])
def test_read_parameters_reads_what_save_image_writes_in_every_format(tmp_path, suffix):
    from PIL import Image

    text = "a cat, 猫\nNegative prompt: dog\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 256x256"
    path = save_image(Image.new("RGB", (64, 64)), tmp_path / f"out{suffix}", text)
    assert read_parameters(path) == text
    assert read_parameters(save_image(Image.new("RGB", (64, 64)), tmp_path / f"plain{suffix}", "")) is None


def test_a_photo_whose_file_name_is_not_utf8_encodes_and_its_name_is_text(tiny_pipeline, samples, tmp_path):
    import shutil

    photo = tmp_path / os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: a lone surrogate in Python
    shutil.copy(samples / "person_a.png", photo)
    person = tiny_pipeline.encode_identity(photo)
    assert person.name == "caf\ufffd"
    Request(prompt="x", identities=[person])  # its name fits the PNG parameters
