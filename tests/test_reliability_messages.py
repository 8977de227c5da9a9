"""Messages: every user-facing error is one line saying what is wrong and how to fix it (exit 1),
found before any model loads or any face is encoded."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dynamicid_rt import Request
from dynamicid_rt.cli import main
from dynamicid_rt.errors import RequestError


@pytest.fixture
def no_model_load(monkeypatch):
    from dynamicid_rt import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the request was checked")

    monkeypatch.setattr(pipeline.Pipeline, "load", classmethod(refuse))


def _error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def _one_line_error(caplog) -> str:
    errors = _error_lines(caplog)
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in errors[0], errors
    return errors[0]


@pytest.mark.parametrize("extra, expected", [
    (["--batch", "0"], "batch=0"),
    (["--size", "500x512"], "width=500"),
    (["--box", "0,0,1,0.5", "--box", "0,0.5,1,1"], "2 boxes for 1 identities"),
    (["--box", "0.5,0,0.2,1"], "empty box"),
    (["--steps", "0"], "steps=0"),
])
def test_request_errors_come_before_models_load(tiny_bundle, samples, tmp_path, no_model_load, caplog, extra, expected):
    code = main(["generate", "--models", str(tiny_bundle), "--face", str(samples / "person_a.png"), "--prompt", "x",
                 "--out", str(tmp_path / "o.png"), *extra])
    assert code == 1 and expected in _one_line_error(caplog)


@pytest.mark.parametrize("device, expected", [("gpu0", "gpu0"), ("cuda", "cuda"), ("cuda:7", "cuda:7")])
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_missing_device_is_one_line(tiny_bundle, samples, tmp_path, caplog, device, expected, backend):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has a GPU")
    code = main(["generate", "--models", str(tiny_bundle), "--backend", backend, "--device", device,
                 "--engine-dir", str(tmp_path / "engines"), "--prompt", "x", "--out", str(tmp_path / "o.png"), "--steps", "1"])
    message = _one_line_error(caplog)
    assert code == 1 and expected in message


def test_device_checked_by_the_api_too(tiny_bundle):
    from dynamicid_rt import Pipeline
    from dynamicid_rt.errors import DynamicIDError

    with pytest.raises(DynamicIDError, match="gpu0"):
        Pipeline.load(tiny_bundle, backend="torch", device="gpu0")


def test_vae_override_checked_with_or_without_models(tiny_bundle, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    missing = tmp_path / "no-vae"
    for models in (["--models", str(tiny_bundle)], []):
        caplog.clear()
        code = main(["generate", *models, "--vae", str(missing), "--prompt", "x", "--out", str(tmp_path / "o.png"), "--steps", "1"])
        assert code == 1 and "no-vae" in _one_line_error(caplog)
    assert not (tmp_path / "o.png").exists()


def test_missing_or_folder_photo_fails_before_models_load(tiny_bundle, tmp_path, no_model_load, caplog):
    for photo, expected in ((tmp_path / "nobody.png", "does not exist"), (tmp_path, "is a folder")):
        caplog.clear()
        code = main(["generate", "--models", str(tiny_bundle), "--face", str(photo), "--prompt", "x", "--out", str(tmp_path / "o.png")])
        assert code == 1 and expected in _one_line_error(caplog)


def test_model_folder_that_is_a_file_is_named_as_such(tmp_path, caplog):
    afile = tmp_path / "models.txt"
    afile.write_text("not a folder")
    assert main(["generate", "--models", str(afile), "--prompt", "x", "--out", str(tmp_path / "o.png")]) == 1
    assert "is not a folder" in _one_line_error(caplog)


def test_incomplete_model_folder_is_one_line(tmp_path, caplog):
    (tmp_path / "models").mkdir()
    assert main(["generate", "--models", str(tmp_path / "models"), "--prompt", "x", "--out", str(tmp_path / "o.png")]) == 1
    assert "SAA checkpoint" in _one_line_error(caplog)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_model_folder_is_named_as_such(tiny_bundle, tmp_path, caplog):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        assert main(["generate", "--models", str(locked), "--prompt", "x", "--out", str(tmp_path / "o.png")]) == 1
        assert "permission" in _one_line_error(caplog)
    finally:
        locked.chmod(0o755)


def test_pickle_refusals_never_pass_on_torchs_weights_only_advice(tmp_path):
    import pickle

    import torch

    from dynamicid_rt.modelfiles.checkpoints import load_tensor_file
    from dynamicid_rt.errors import CheckpointError

    class Payload:
        pass

    plain = tmp_path / "plain.bin"
    plain.write_bytes(pickle.dumps({"x": 1.5}))
    with_object = tmp_path / "object.bin"
    torch.save({"w": torch.zeros(2), "obj": np.zeros(2)}, with_object)
    for path in (plain, with_object):
        with pytest.raises(CheckpointError) as info:
            load_tensor_file(path)
        text = str(info.value)
        assert "weights_only=False" not in text and "Re-running" not in text and "\n" not in text


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("victim", ["dynamicid/SAA.bin", "base/unet/diffusion_pytorch_model.safetensors"])
def test_inspect_and_doctor_report_truncated_weights_as_unusable(tiny_bundle, tmp_path, capsys, victim):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    _truncate(copy / victim)
    assert main(["inspect", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "usable: NO" in out and "truncated" in out
    assert main(["doctor", "--models", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "INCOMPLETE" in out and victim.split("/")[-1] in out and "truncated" in out


@pytest.mark.parametrize("changes, field", [
    ({"prompt": None}, "prompt"),
    ({"negative_prompt": None}, "negative_prompt"),
    ({"identities": None}, "identities"),
    ({"identities": [None]}, "identities[0]"),
    ({"steps": 2.0}, "steps"),
    ({"boost_steps": 2.5}, "boost_steps"),
    ({"batch": True}, "batch"),
    ({"width": 512.0}, "width"),
    ({"boxes": "0,0,1,1"}, "boxes"),
])
def test_request_types_raise_request_error(changes, field):
    with pytest.raises(RequestError, match=field.replace("[", r"\[")):  # when the Request is made
        Request(prompt="x").with_updates(**changes)
    request = Request(prompt="x")
    setattr(request, *next(iter(changes.items())))  # and by validate() after a field is assigned
    with pytest.raises(RequestError, match=field.replace("[", r"\[")):
        request.validate()


def test_request_checked_for_people_not_yet_encoded():
    Request(prompt="x", boxes=[(0, 0, 1, 0.5), (0, 0.5, 1, 1)]).validate(people=2)
    with pytest.raises(RequestError, match="2 boxes for 3 identities"):
        Request(prompt="x", boxes=[(0, 0, 1, 0.5), (0, 0.5, 1, 1)]).validate(people=3)


def test_insightface_future_warning_is_silenced(tiny_bundle, samples):
    script = (
        "import sys\n"
        "from dynamicid_rt.identity.faces import FaceAnalyzer\n"
        "from dynamicid_rt.identity.photos import load_photo\n"
        "a = FaceAnalyzer(sys.argv[1])\n"
        "assert a.detect(load_photo(sys.argv[2]))\n"
        "a.landmark_raster(load_photo(sys.argv[2]))\n"
    )
    proc = subprocess.run([sys.executable, "-W", "always", "-c", script, str(tiny_bundle / "insightface" / "buffalo_l"),
                           str(samples / "person_a.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "FutureWarning" not in proc.stderr


def test_desktop_without_display_gets_a_clear_message(monkeypatch, caplog):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["desktop"]) == 1
    assert "no display" in _one_line_error(caplog)
