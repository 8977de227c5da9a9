"""Caches (identities, engines, tiny bundle): an entry is trusted only after it is validated; a bad
one is a logged miss that gets rebuilt, never a crash and never advice that loops back to it."""
from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile

import numpy as np
import pytest

from dynamicid_rt import Pipeline, Request
from dynamicid_rt.errors import RequestError


@pytest.fixture
def fresh_pipeline(tiny_bundle, tmp_path):
    pipe = Pipeline.load(tiny_bundle, backend="torch", device="cpu", cache_dir=tmp_path / "cache")
    yield pipe
    pipe.close()


def _only_entry(pipe):
    entries = list((pipe.identities.cache_dir).glob("*.npz"))
    assert len(entries) == 1
    return entries[0]


def _rewrite_npz(path, **changes):
    """Rewrite a cached identity with some arrays or metadata fields replaced."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(bytes(arrays.pop("meta")).decode())
    for key, value in changes.items():
        if key.startswith("meta:"):
            name = key[5:]
            if value is None:
                meta.pop(name)
            else:
                meta[name] = value
        else:
            arrays[key] = value
    with open(path, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def _damages(context_dim):
    return {
        "nan tokens": {"tokens": np.full((4, context_dim), np.nan, np.float32)},
        "wrong width": {"tokens": np.zeros((4, context_dim + 8), np.float32)},
        "float64 tokens": {"tokens": np.zeros((4, context_dim), np.float64)},
        "unknown field": {"meta:colour": "blue"},
        "missing field": {"meta:source_prompt": None},
        "other model": {"meta:model_fingerprint": "0" * 16},
        "not a zip": "garbage",
    }


@pytest.mark.parametrize("damage", ["nan tokens", "wrong width", "float64 tokens", "unknown field", "missing field", "other model", "not a zip"])
def test_damaged_identity_cache_entry_is_a_logged_miss(fresh_pipeline, samples, caplog, damage):
    photo = samples / "person_a.png"
    first = fresh_pipeline.encode_identity(photo)
    entry = _only_entry(fresh_pipeline)
    change = _damages(fresh_pipeline.dims.context_dim)[damage]
    if change == "garbage":
        entry.write_bytes(b"PK\x03\x04 not really")
    else:
        _rewrite_npz(entry, **change)
    caplog.set_level(logging.INFO)
    again = fresh_pipeline.encode_identity(photo)
    assert "identity cache entry" in caplog.text and "re-encoding" in caplog.text
    np.testing.assert_array_equal(again.tokens, first.tokens)  # re-encoded, the same result
    # The bad entry was replaced by a good one: the next call is a clean hit.
    caplog.clear()
    hit = fresh_pipeline.encode_identity(photo)
    assert "re-encoding" not in caplog.text
    np.testing.assert_array_equal(hit.tokens, first.tokens)
    result = fresh_pipeline.generate(Request(prompt="x", identities=[hit], steps=1, width=256, height=256, seed=1))
    assert np.asarray(result.images[0]).std() > 0


def test_saved_identity_records_the_model_and_refuses_another(fresh_pipeline, samples, tmp_path, caplog):
    ident = fresh_pipeline.encode_identity(samples / "person_a.png")
    assert ident.model_fingerprint == fresh_pipeline.identities.model_fingerprint != ""
    path = ident.save(tmp_path / "a.npz")
    assert fresh_pipeline.load_identity(path).model_fingerprint == ident.model_fingerprint
    _rewrite_npz(path, **{"meta:model_fingerprint": "f" * 16})
    with pytest.raises(RequestError, match="another model"):
        fresh_pipeline.load_identity(path)
    stranger = fresh_pipeline.load_identity(path, allow_other_model=True)
    assert "another model" in caplog.text
    fresh_pipeline.generate(Request(prompt="x", identities=[stranger], steps=1, width=256, height=256, seed=1))
    # An identity from another model given straight to generate is refused before any work.
    from dataclasses import replace

    foreign = replace(ident, model_fingerprint="e" * 16)
    with pytest.raises(RequestError, match="another model"):
        fresh_pipeline.generate(Request(prompt="x", identities=[foreign], steps=1, width=256, height=256))


def test_fingerprint_is_content_not_location(tiny_bundle, tmp_path):
    from dynamicid_rt.modelfiles.fingerprint import identity_model_fingerprint
    from dynamicid_rt.modelfiles.paths import ModelPaths

    copy = tmp_path / "moved"
    shutil.copytree(tiny_bundle, copy)
    a = identity_model_fingerprint(ModelPaths.from_folder(tiny_bundle))
    assert identity_model_fingerprint(ModelPaths.from_folder(copy)) == a
    saa = copy / "dynamicid" / "SAA.bin"
    data = bytearray(saa.read_bytes())
    data[-100] ^= 0xFF
    saa.write_bytes(bytes(data))
    assert identity_model_fingerprint(ModelPaths.from_folder(copy)) != a


# -- engines -----------------------------------------------------------------------------------


@pytest.fixture
def engines_copy(tiny_bundle, tiny_engines, tmp_path):
    folder = tmp_path / "engines"
    shutil.copytree(tiny_engines, folder)
    return folder


def _flip_keep_mtime(path):
    """Corrupt one byte in place (same size) and put the modification time back."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_engine_with_put_back_mtime_is_rehashed_and_rebuilt(tiny_bundle, engines_copy, caplog):
    from dynamicid_rt.export import build_engines
    from dynamicid_rt.export.cache import check_entry, entry_dir, expected_manifest
    from dynamicid_rt.modelfiles.paths import ModelPaths

    paths = ModelPaths.from_folder(tiny_bundle)
    folder = entry_dir(engines_copy, "face_projector", "fp32")
    assert check_entry(folder, expected_manifest(paths, "face_projector", "fp32"))[0] is not None
    good = (folder / "model.onnx").read_bytes()
    _flip_keep_mtime(folder / "model.onnx")
    manifest, why = check_entry(folder, expected_manifest(paths, "face_projector", "fp32"))
    assert manifest is None and "SHA-256" in why
    caplog.set_level(logging.INFO)
    entries = build_engines(paths, engines_copy, engines=["face_projector"])
    assert not entries[0].reused and "rebuilding face_projector" in caplog.text
    assert (folder / "model.onnx").read_bytes() != b"" and len((folder / "model.onnx").read_bytes()) == len(good)


def test_engine_verified_once_then_trusted_by_its_stamp(tiny_bundle, engines_copy, monkeypatch):
    from dynamicid_rt.files import stamps
    from dynamicid_rt.export import cache
    from dynamicid_rt.modelfiles.paths import ModelPaths

    paths = ModelPaths.from_folder(tiny_bundle)
    folder = cache.entry_dir(engines_copy, "text_encoder", "fp32")
    expected = cache.expected_manifest(paths, "text_encoder", "fp32")
    hashed = []
    real = stamps.sha256_file
    monkeypatch.setattr(stamps, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    # Copied just now: hashed, but not stamped while its change time is within the racy window.
    assert cache.check_entry(folder, expected)[0] is not None
    assert cache.check_entry(folder, expected)[0] is not None
    assert hashed == ["model.onnx", "model.onnx"]
    monkeypatch.setattr(stamps, "RACY_NS", 0)  # as if the copy were older than the window
    assert cache.check_entry(folder, expected)[0] is not None  # hashed once more, now stamped
    assert cache.check_entry(folder, expected)[0] is not None  # stamped: not hashed again
    assert hashed == ["model.onnx"] * 3


def test_corrupt_engine_that_ort_cannot_parse_is_rebuilt(tiny_bundle, engines_copy, samples, caplog):
    """A manifest that matches a corrupt graph (a copy tool that rewrote both) still recovers."""
    from dynamicid_rt.export.cache import MANIFEST, entry_dir
    from dynamicid_rt.files.stamps import sha256_file as _sha256

    folder = entry_dir(engines_copy, "vae_decoder", "fp32")
    onnx = folder / "model.onnx"
    onnx.write_bytes(b"\x08\x07 this is not protobuf" * 10)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["model.onnx"] |= {"size": onnx.stat().st_size, "sha256": _sha256(onnx), "mtime_ns": onnx.stat().st_mtime_ns}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    caplog.set_level(logging.WARNING)
    with Pipeline.load(tiny_bundle, backend="onnxruntime", device="cpu", onnx_cache=engines_copy) as pipe:
        result = pipe.generate(Request(prompt="x", steps=1, width=256, height=256, seed=2))
    assert "corrupt engine" in caplog.text and "rebuilding" in caplog.text
    assert np.isfinite(np.asarray(result.images[0], np.float32)).all()


# -- tiny bundle -------------------------------------------------------------------------------


def test_truncated_tiny_bundle_file_is_rebuilt(tiny_bundle, tmp_path, caplog):
    from dynamicid_rt.tiny.bundle import write_tiny_bundle

    root = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, root)
    saa = root / "dynamicid" / "SAA.bin"
    good = saa.read_bytes()
    saa.write_bytes(good[: len(good) // 2])
    caplog.set_level(logging.INFO)
    write_tiny_bundle(root)
    assert saa.read_bytes() == good and "tiny bundle" in caplog.text
    assert zipfile.is_zipfile(saa)


def test_unconditional_tokens_come_from_the_validated_cache_on_a_warm_start(tiny_bundle, tmp_path, monkeypatch):
    """A second pipeline on the same cache skips the image encoder; a damaged entry is recomputed."""
    from dynamicid_rt.backends.torch_backend import TorchBackend

    with Pipeline.load(tiny_bundle, backend="torch", device="cpu", cache_dir=tmp_path) as first:
        reference = first.identities.unconditional_tokens().copy()
    calls = []
    real_run = TorchBackend.run
    monkeypatch.setattr(TorchBackend, "run", lambda self, engine, inputs: calls.append(engine) or real_run(self, engine, inputs))
    with Pipeline.load(tiny_bundle, backend="torch", device="cpu", cache_dir=tmp_path) as second:
        np.testing.assert_array_equal(second.identities.unconditional_tokens(), reference)
    assert "image_encoder" not in calls
    for entry in (tmp_path / "identities").glob("*.npz"):
        entry.write_bytes(b"damaged")
    with Pipeline.load(tiny_bundle, backend="torch", device="cpu", cache_dir=tmp_path) as third:
        np.testing.assert_array_equal(third.identities.unconditional_tokens(), reference)
    assert "image_encoder" in calls


def test_a_complete_cache_on_a_read_only_folder_is_used_without_writing(tiny_bundle, engines_copy, monkeypatch):
    from dynamicid_rt.export import build_engines
    from dynamicid_rt.modelfiles.paths import ModelPaths

    paths = ModelPaths.from_folder(tiny_bundle)
    build_engines(paths, engines_copy)  # complete and valid
    writes = []
    real_open = os.open
    # A read-only mount as the process sees it: every attempt to create or write a file fails with EROFS.
    def read_only(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(str(path))
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    entries = build_engines(paths, engines_copy)
    assert entries and all(e.reused for e in entries)
    assert [w for w in writes if not w.endswith((".dynamicid-tmp",))] == []  # not even a lock file


def test_a_cache_entry_that_is_a_symlink_loop_is_named_by_its_own_path(tiny_bundle, tmp_path):
    from dynamicid_rt.errors import DynamicIDError
    from dynamicid_rt.export import build_engines
    from dynamicid_rt.export.cache import entry_dir
    from dynamicid_rt.modelfiles.paths import ModelPaths

    cache = tmp_path / "engines"
    cache.mkdir()
    loop = entry_dir(cache, "face_projector", "fp32")
    loop.symlink_to(loop)
    for _ in range(2):  # every rerun says the same, naming the loop itself
        with pytest.raises(DynamicIDError, match=f"{loop} is a broken symlink or a symlink loop"):
            build_engines(ModelPaths.from_folder(tiny_bundle), cache, engines=["face_projector"])


def test_a_single_stored_file_with_its_mtime_put_back_is_hashed_again(tmp_path, monkeypatch):
    from dynamicid_rt.files import stamps
    from dynamicid_rt.export.store import check_file, file_record

    plan = tmp_path / "unet.plan"
    plan.write_bytes(bytes(range(256)) * 64)
    record = file_record(plan)
    monkeypatch.setattr(stamps, "RACY_NS", 0)  # as if written long ago: stamped at its first check
    assert check_file(plan, record, "the plan") == ""
    assert (tmp_path / stamps.FILE_STAMP).is_file() and not list(tmp_path.glob("*.json"))
    _flip_keep_mtime(plan)
    assert "does not match its SHA-256" in check_file(plan, record, "the plan")


def test_a_full_disk_anywhere_in_an_export_is_one_line(tiny_bundle, tmp_path, monkeypatch):
    """ONNX Runtime meets a graph a full disk cut short as "InvalidProtobuf": whatever a stage
    reports, a full disk under the cache is named as such (the disk is shown full via disk_usage)."""
    import collections

    from dynamicid_rt.files import atomic
    from dynamicid_rt.errors import OutputError
    from dynamicid_rt.export import build_engines
    from dynamicid_rt.export import cache as export_cache
    from dynamicid_rt.modelfiles.paths import ModelPaths

    class InvalidProtobuf(Exception):
        pass

    def cut_short(*_args, **_kwargs):
        raise InvalidProtobuf("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from model.onnx failed:Protobuf parsing failed.")

    monkeypatch.setattr(export_cache, "_build_entry", cut_short)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _path: usage(10 << 30, (10 << 30) - (1 << 20), 1 << 20))
    with pytest.raises(OutputError, match="the disk is full") as info:
        build_engines(ModelPaths.from_folder(tiny_bundle), tmp_path / "engines", engines=["face_projector"])
    assert "\n" not in str(info.value)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _path: usage(10 << 30, 0, 10 << 30))
    with pytest.raises(InvalidProtobuf):  # with room on the disk it is another failure, reported as it is
        build_engines(ModelPaths.from_folder(tiny_bundle), tmp_path / "engines", engines=["face_projector"])
