"""Round 3: every file the project writes (outputs, identities, the model hash, engine caches, the
tiny bundle) turns a full disk or a permission error into one OutputError line, as for --out."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image

from dynamicid_rt import Identity, OutputError, save_image
from dynamicid_rt.cli import main

DISK_FULL = "cannot be written: the disk is full"


@pytest.fixture
def full_disk(monkeypatch):
    """Every fsync of an atomic write fails as on a full disk (the data does not fit)."""
    from dynamicid_rt.files import atomic

    def fail(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", fail)


def _no_temporaries(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".dynamicid-tmp")]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_outputs_on_a_full_disk(tmp_path, full_disk, suffix):
    with pytest.raises(OutputError, match=DISK_FULL):
        save_image(Image.new("RGB", (8, 8)), tmp_path / f"out{suffix}", "a cat")
    assert not (tmp_path / f"out{suffix}").exists() and _no_temporaries(tmp_path)


def test_identities_and_the_model_hash_on_a_full_disk(tmp_path, full_disk):
    from dynamicid_rt.modelfiles.model_hash import file_sha256

    with pytest.raises(OutputError, match=DISK_FULL):
        Identity(tokens=np.ones((4, 8), np.float32)).save(tmp_path / "a.npz")
    (tmp_path / "weights.bin").write_bytes(b"w" * 100)
    with pytest.raises(OutputError, match=DISK_FULL):
        file_sha256(tmp_path / "weights.bin", tmp_path / "hashes")
    assert _no_temporaries(tmp_path)


@pytest.mark.parametrize("code, expected", [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied")])
def test_read_only_or_forbidden_folders(tmp_path, monkeypatch, code, expected):
    from dynamicid_rt.files import atomic

    real_open = os.open

    def refuse(path, flags, mode=0o777, **kwargs):
        if str(path).endswith(".dynamicid-tmp"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(atomic.os, "open", refuse)
    with pytest.raises(OutputError, match=expected):
        Identity(tokens=np.ones((4, 8), np.float32)).save(tmp_path / "a.npz")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_really_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            Identity(tokens=np.ones((4, 8), np.float32)).save(folder / "a.npz")
    finally:
        folder.chmod(0o755)


def test_tiny_bundle_on_a_full_disk_is_one_line(tmp_path, monkeypatch, caplog):
    from safetensors import SafetensorError

    from dynamicid_rt.tiny import bundle

    def fail(*args, **kwargs):  # what safetensors raises (in save_pretrained) when the disk fills up
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(bundle, "_write_base", fail)
    code = main(["demo", "--models", str(tmp_path / "tiny"), "--out", str(tmp_path / "demo.png")])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 1 and len(errors) == 1 and DISK_FULL in errors[0] and "Traceback" not in errors[0]
    assert not (tmp_path / "tiny").exists() and [p.name for p in tmp_path.iterdir() if not p.name.startswith(".lock")] == []


def test_engine_cache_on_a_full_disk(tiny_bundle, tmp_path, monkeypatch):
    from dynamicid_rt.export import build_engines, onnx_export
    from dynamicid_rt.modelfiles.paths import ModelPaths

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx_export, "export_engine", fail)
    with pytest.raises(OutputError, match=DISK_FULL):
        build_engines(ModelPaths.from_folder(tiny_bundle), tmp_path / "engines", engines=["face_projector"])
    assert [p for p in (tmp_path / "engines").iterdir() if not p.name.startswith(".lock")] == []
