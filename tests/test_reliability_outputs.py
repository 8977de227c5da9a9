"""Outputs: a user's file is never a write target, the path is checked before any model loads,
half-written temporaries never survive and files get the user's normal permissions."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dynamicid_rt.files import atomic
from dynamicid_rt.cli import main
from dynamicid_rt.errors import OutputError
from dynamicid_rt.formats.outputs import check_output_path, save_image


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the CLI gets as far as loading a model."""
    from dynamicid_rt import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(pipeline.Pipeline, "load", classmethod(refuse))


def _generate(tiny_bundle, samples, out, *extra):
    return main(["generate", "--models", str(tiny_bundle), "--face", str(samples / "person_a.png"),
                 "--prompt", "x", "--size", "256x256", "--steps", "1", "--seed", "3", "--out", str(out), *extra])


def test_face_photo_given_as_out_survives_byte_for_byte(tiny_bundle, samples, tmp_path, no_model_load, caplog):
    photo = tmp_path / "me.png"
    photo.write_bytes((samples / "person_a.png").read_bytes())
    before = photo.read_bytes()
    code = main(["generate", "--models", str(tiny_bundle), "--face", str(photo), "--prompt", "x", "--out", str(photo)])
    assert code == 1 and "is one of the input files" in caplog.text
    assert photo.read_bytes() == before
    # The same file under another spelling (a relative path through a symlinked folder) is caught too.
    (tmp_path / "link").symlink_to(tmp_path)
    code = main(["generate", "--models", str(tiny_bundle), "--face", str(photo), "--prompt", "x",
                 "--out", str(tmp_path / "link" / "me.png")])
    assert code == 1 and photo.read_bytes() == before


def test_target_landmark_photo_is_never_an_output(tiny_bundle, samples, tmp_path, no_model_load, caplog):
    target = tmp_path / "smile.png"
    target.write_bytes((samples / "person_a_smiling.png").read_bytes())
    before = target.read_bytes()
    code = _generate(tiny_bundle, samples, target, "--face-prompt", "in a happy expression", "--target-landmarks", str(target))
    assert code == 1 and target.read_bytes() == before


def test_folder_or_file_parent_output_fails_before_models_load(tiny_bundle, samples, tmp_path, no_model_load, caplog):
    assert _generate(tiny_bundle, samples, tmp_path) == 1
    assert "is a folder" in caplog.text
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    assert _generate(tiny_bundle, samples, blocker / "out.png") == 1
    assert "is not a folder" in caplog.text and blocker.read_text() == "keep me"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_fails_before_models_load(tiny_bundle, samples, tmp_path, no_model_load, caplog):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert _generate(tiny_bundle, samples, locked / "out.png") == 1
        assert "not writable" in caplog.text
    finally:
        locked.chmod(0o755)


def test_output_check_names_what_is_wrong(tmp_path):
    with pytest.raises(OutputError, match="extension"):
        check_output_path(tmp_path / "out.gif")
    with pytest.raises(OutputError, match="has no extension"):
        check_output_path(tmp_path / "out")
    with pytest.raises(OutputError, match="JPEG"):
        check_output_path(tmp_path / "out.png", image_format="JPEG")
    assert check_output_path(tmp_path / "new" / "deeper" / "out.webp") == (tmp_path / "new" / "deeper" / "out.webp").absolute()
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.parametrize("suffix, magic", [(".jpg", b"\xff\xd8\xff"), (".webp", b"RIFF"), (".png", b"\x89PNG")])
def test_writes_the_format_its_extension_names(tmp_path, suffix, magic):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    path = save_image(image, tmp_path / f"out{suffix}", "a prompt\nSteps: 2, Seed: 5")
    data = path.read_bytes()
    assert data.startswith(magic)
    with Image.open(path) as im:
        assert im.size == (64, 64)
        if suffix == ".png":
            assert im.info["parameters"].endswith("Seed: 5")
        else:  # A1111 keeps JPEG/WebP parameters in the EXIF UserComment
            comment = im.getexif().get_ifd(0x8769)[0x9286]
            text = comment[8:].decode("utf-16-be") if isinstance(comment, bytes) else comment
            assert text.endswith("Seed: 5")


def test_cli_writes_jpeg_when_asked(tiny_bundle, samples, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "me.jpg"
    assert _generate(tiny_bundle, samples, out) == 0
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"


def test_files_get_the_users_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic.atomic_write(tmp_path / "a.bin") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_no_temporary(tmp_path):
    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with atomic.atomic_write(tmp_path / "a.png") as f:
            f.write(b"half")
            raise Boom()
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_writers_are_swept(tmp_path):
    # A writer killed mid-write (SIGKILL: no cleanup) leaves its temporary behind.
    script = (
        "import os, signal, sys\n"
        "from dynamicid_rt.files.atomic import atomic_write\n"
        "with atomic_write(sys.argv[1]) as f:\n"
        "    f.write(b'half'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.png")], timeout=60)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.png.")
    foreign = tmp_path / ".notes.txt.tmp"  # not of our naming: never touched
    foreign.write_text("mine")
    alive = tmp_path / f".x.png.{os.getpid()}.abcd1234{atomic.TMP_SUFFIX}"  # a live writer's: kept
    alive.write_bytes(b"busy")
    with atomic.atomic_write(tmp_path / "other.png") as f:
        f.write(b"ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".notes.txt.tmp", alive.name, "other.png"])
