"""The first run (issue #21): what a cache build records and reports, stamps written at build time,
and the OpenVINO backend's plans (one dynamic plan per once-per-request engine, compiled from the
graph's path; identity plans released while sampling; one model cache per precision; a damaged
cached blob compiled again)."""
from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

from dynamicid_rt.files import stamps
from dynamicid_rt.contract import ENGINES
from dynamicid_rt.export import BuildStatus, build_engines
from dynamicid_rt.export.cache import MANIFEST, check_entry, entry_dir, expected_manifest
from dynamicid_rt.export.store import build_folder, check_files
from dynamicid_rt.modelfiles.paths import ModelPaths

def _bytes_under(root) -> int:
    if root is None:
        return 0
    files = [root] if root.is_file() else [f for f in root.rglob("*") if f.is_file() and not f.name.startswith(".")]
    return sum(f.stat().st_size for f in files)


EXPORT_STAGES = ("loading weights", "tracing", "folding constants", "checking parity", "checking the graph")


@pytest.fixture(scope="module")
def built(tiny_bundle, tmp_path_factory):
    """A fresh build of three engines with every progress report kept."""
    paths = ModelPaths.from_folder(tiny_bundle)
    folder = tmp_path_factory.mktemp("first-run") / "onnx"
    reports: list[BuildStatus] = []
    entries = build_engines(paths, folder, engines=["text_encoder", "face_projector", "vae_decoder"], progress=reports.append)
    return paths, folder, entries, reports


def test_manifest_records_each_stage_and_the_parity_error(built):
    _, _, entries, _ = built
    for entry in entries:
        seconds = entry.manifest["build_seconds"]
        assert set(seconds) == {"load", "trace", "fold", "save", "parity", "check"}
        assert all(s >= 0 for s in seconds.values()) and sum(seconds.values()) > 0
        assert entry.manifest["hash_seconds"] >= 0
        assert 0 <= entry.manifest["parity_relative_error"] <= 1e-4


def test_progress_reports_every_stage_of_every_engine_in_order(built):
    paths, _, entries, reports = built
    names = [e.engine for e in entries]
    for index, name in enumerate(names):
        stages = [r.stage for r in reports if r.engine == name]
        assert stages[0] == "checking" and stages[-1] == "built"
        assert [s for s in stages if s in EXPORT_STAGES] == list(EXPORT_STAGES)
        assert {r.index for r in reports if r.engine == name} == {index}
    assert all(r.count == len(names) for r in reports)
    # The weights exported so far grow to the sum of every engine's source files.
    total = sum(_bytes_under(paths.source(part)) for n in names for part in ENGINES[n].sources)
    done = [r.done_bytes for r in reports]
    assert done == sorted(done) and done[-1] == total and reports[-1].total_bytes == total
    # No estimate before the first engine is built; one, in words, after it.
    first_built = next(i for i, r in enumerate(reports) if r.stage == "built")
    assert all(r.seconds_left is None for r in reports[:first_built])
    later = [r for r in reports[first_built + 1:] if r.stage in EXPORT_STAGES]
    assert later and all(r.seconds_left is not None and r.seconds_left >= 0 for r in later)
    assert later[0].time_left.startswith("about ") and later[0].time_left.endswith(" left")


def test_a_warm_cache_reports_reused_and_builds_nothing(built):
    paths, folder, entries, _ = built
    reports: list[BuildStatus] = []
    again = build_engines(paths, folder, engines=[e.engine for e in entries], progress=reports.append)
    assert all(e.reused for e in again)
    assert {r.stage for r in reports} == {"checking", "reused"}
    assert all(r.seconds_left is None for r in reports)


def test_files_hashed_at_build_are_stamped_so_the_next_check_reads_none(tmp_path, monkeypatch):
    def fill(tmp):
        (tmp / "weights.bin").write_bytes(np.arange(1 << 16, dtype=np.float32).tobytes())
        time.sleep(stamps.RACY_NS / 1e9 + 0.2)  # older than the racy window when the table hashes it
        (tmp / "graph.onnx").write_bytes(b"written just before the table: racy, not stamped")
        return {"engine": "demo"}

    manifest = build_folder(tmp_path, "entry", fill)
    hashed: list[str] = []
    real = stamps.sha256_file
    monkeypatch.setattr(stamps, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    assert check_files(tmp_path / "entry", manifest["files"]) == ""
    assert hashed == ["graph.onnx"]  # the stamped weights were not read again
    (tmp_path / "entry" / "weights.bin").write_bytes(b"\0" * (1 << 18))  # same size: only the hash can tell
    assert "weights.bin" in check_files(tmp_path / "entry", manifest["files"])


def test_a_damaged_entry_is_still_refused_after_build_time_stamps(built):
    paths, folder, entries, _ = built
    entry = entries[0]
    data = next(p for p in entry.path.iterdir() if p.name not in (MANIFEST, stamps.STAMP) and p.stat().st_size > 64)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))  # same size, new ctime: the stamp no longer matches
    manifest, why = check_entry(entry_dir(folder, entry.engine, "fp32"), expected_manifest(paths, entry.engine, "fp32"))
    assert manifest is None and "SHA-256" in why


needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")


@pytest.fixture()
def ov_backend(tiny_bundle, tiny_engines):
    from dynamicid_rt.backends.openvino_backend import OpenVinoBackend

    backend = OpenVinoBackend(ModelPaths.from_folder(tiny_bundle), precision="fp32", engine_dir=tiny_engines)
    yield backend
    backend.close()


@needs_openvino
def test_once_per_request_engines_run_one_dynamic_plan_for_every_batch(ov_backend, tiny_pipeline):
    spec = ENGINES["text_encoder"]
    one = spec.sample_inputs(ov_backend.dims, seed=3, B=1)
    two = spec.sample_inputs(ov_backend.dims, seed=4, B=2)
    got_one, got_two = ov_backend.run("text_encoder", one), ov_backend.run("text_encoder", two)
    assert [k for k in ov_backend._plans if k[0] == "text_encoder"] == [("text_encoder", ())]
    for inputs, got in ((one, got_one), (two, got_two)):
        ref = tiny_pipeline.backend.run("text_encoder", inputs)
        for name in spec.output_names:
            assert np.abs(got[name] - ref[name]).max() <= 1e-4 * max(1.0, np.abs(ref[name]).max())


@needs_openvino
def test_identity_plans_are_released_for_sampling_and_rebuilt_from_the_cache(ov_backend):
    spec = ENGINES["image_encoder"]
    inputs = spec.sample_inputs(ov_backend.dims, seed=5)
    before = ov_backend.run("image_encoder", inputs)["hidden_states"]
    ov_backend.release(["image_encoder", "face_projector", "imr"])
    assert not [k for k in ov_backend._plans if k[0] == "image_encoder"]
    np.testing.assert_array_equal(ov_backend.run("image_encoder", inputs)["hidden_states"], before)


@needs_openvino
def test_a_damaged_cached_blob_is_compiled_again_with_the_reason(tiny_bundle, tiny_engines, ov_backend, caplog):
    from dynamicid_rt.backends.openvino_backend import OpenVinoBackend

    inputs = ENGINES["face_projector"].sample_inputs(ov_backend.dims, seed=6)
    before = ov_backend.run("face_projector", inputs)["id_tokens"]
    blobs = list((ov_backend._entries["face_projector"].path / "openvino" / "f32").glob("*.blob"))
    assert blobs, "the compiled plan went to OpenVINO's cache in the entry"
    for blob in blobs:  # the same size, other bytes: only the manifest's SHA-256 can tell
        blob.write_bytes(bytes(255 - b for b in blob.read_bytes()))
    fresh = OpenVinoBackend(ModelPaths.from_folder(tiny_bundle), precision="fp32", engine_dir=tiny_engines)
    try:
        with caplog.at_level("WARNING", logger="dynamicid_rt"):
            np.testing.assert_array_equal(fresh.run("face_projector", inputs)["id_tokens"], before)
    finally:
        fresh.close()
    assert any("does not match its SHA-256" in r.getMessage() and "compiling again" in r.getMessage() for r in caplog.records)
    from dynamicid_rt.backends.openvino_cache import MANIFEST, check_blobs

    caplog.clear()
    check_blobs(blobs[0].parent, "face_projector")  # the rewritten blob is recorded again: nothing to say
    assert not caplog.records and (blobs[0].parent / MANIFEST).is_file()


def test_beside_the_export_bar_log_lines_stay_whole_and_the_stage_lines_go(capsys):
    import logging
    import sys

    from dynamicid_rt.cli.build_engines import logging_beside_a_bar

    console = logging.StreamHandler(sys.stderr)  # the CLI's handler (logging.basicConfig)
    root = logging.getLogger()
    root.addHandler(console)
    try:
        with logging_beside_a_bar():
            assert console not in root.handlers  # replaced by tqdm's, which writes above the bar
            logging.getLogger("dynamicid_rt.export.progress").warning("unet (engine 5/6): tracing, about 1 min left")
            logging.getLogger("dynamicid_rt.export.cache").warning("built unet (fp32) in 54.2 s")
        assert console in root.handlers
        logging.getLogger("dynamicid_rt.export.progress").warning("after the bar: shown again")
    finally:
        root.removeHandler(console)
    err = capsys.readouterr().err
    assert "built unet (fp32) in 54.2 s" in err and "after the bar: shown again" in err
    assert "tracing" not in err  # the bar shows the stage


def test_source_fingerprints_are_remembered_by_stat_and_read_again_when_a_file_changes(tmp_path, monkeypatch):
    import hashlib

    from dynamicid_rt.files.stamps import RememberedDigests

    monkeypatch.setattr(stamps, "RACY_NS", 0)  # the file was just written: trust its stat at once
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    reads = []

    def compute(path):
        reads.append(path)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    memo = RememberedDigests(tmp_path / "cache" / "sources.json")
    first = memo.digest(weights, compute)
    memo.save()
    again = RememberedDigests(tmp_path / "cache" / "sources.json")  # the next start
    assert again.digest(weights, compute) == first and len(reads) == 1
    weights.write_bytes(b"b" * 4096)  # the same size, rewritten: its stat moved
    assert again.digest(weights, compute) == hashlib.sha256(b"b" * 4096).hexdigest() and len(reads) == 2


def test_a_warm_cache_check_reads_no_source_file(tiny_bundle, tmp_path, monkeypatch):
    import shutil

    from dynamicid_rt.export import recipes

    monkeypatch.setattr(stamps, "RACY_NS", 0)
    paths = ModelPaths.from_folder(tiny_bundle)
    build_engines(paths, tmp_path / "engines", engines=["face_projector"])
    assert (tmp_path / "engines" / "sources.json").is_file()

    def no_reads(path):
        raise AssertionError(f"read {path} again")

    monkeypatch.setattr(recipes, "_file_fingerprint", no_reads)
    (entry,) = build_engines(paths, tmp_path / "engines", engines=["face_projector"])
    assert entry.reused
    # A changed source is still found: its stat moved, so it is read and the entry rebuilt.
    monkeypatch.undo()
    monkeypatch.setattr(stamps, "RACY_NS", 0)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    paths = ModelPaths.from_folder(bundle)
    build_engines(paths, tmp_path / "engines2", engines=["face_projector"])
    (source,) = [f for f in recipes.source_files(paths, "face_projector") if f.suffix in (".bin", ".safetensors")][:1]
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF
    source.write_bytes(bytes(data))
    (rebuilt,) = build_engines(paths, tmp_path / "engines2", engines=["face_projector"])
    assert not rebuilt.reused
