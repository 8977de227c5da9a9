"""Round 3: what `inspect` calls unusable, `Pipeline.load` refuses before any engine is exported,
and defects `inspect` let pass (absurd configs, symlink loops, lying headers, NaN weights) are
refused too, each named."""
from __future__ import annotations

import argparse
import json
import shutil
import struct

import pytest

from dynamicid_rt import ModelFolderError, Pipeline
from dynamicid_rt.models.inspect import inspect_path

VAE_WEIGHTS = "base/vae/diffusion_pytorch_model.safetensors"


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy, symlinks=True)
    return copy


@pytest.fixture
def no_export(monkeypatch):
    from dynamicid_rt.export import onnx_export

    def refuse(*args, **kwargs):
        raise AssertionError("an engine was exported before the model folder was checked")

    monkeypatch.setattr(onnx_export, "export_engine", refuse)


def _edit_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _load_onnxruntime(bundle, tmp_path):
    return Pipeline.load(bundle, backend="onnxruntime", device="cpu", onnx_cache=tmp_path / "engines", cache_dir=tmp_path / "cache")


def _overlap_two_tensors(path):
    """Rewrite a safetensors header so two tensors share bytes while the file size stays right."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    first, second = header[names[0]], header[names[1]]
    size = first["data_offsets"][1] - first["data_offsets"][0]
    second_size = second["data_offsets"][1] - second["data_offsets"][0]
    second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + second_size]
    assert size and second_size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


@pytest.mark.parametrize("defect, expected", [
    ("image_size", "image_size=1000000"),
    ("patch_size", "patch_size"),
    ("channels", "block_out_channels"),
    ("offsets", "overlap or gap"),
    ("loop", "symlink loop"),
])
def test_defects_are_refused_by_inspect_and_by_load_before_any_export(bundle, tmp_path, no_export, defect, expected):
    if defect == "image_size":
        _edit_json(bundle / "image_encoder" / "config.json", image_size=10**6)
    elif defect == "patch_size":
        _edit_json(bundle / "image_encoder" / "config.json", patch_size=0)
    elif defect == "channels":
        _edit_json(bundle / "base" / "unet" / "config.json", block_out_channels=[320000, 640000])
    elif defect == "offsets":
        _overlap_two_tensors(bundle / VAE_WEIGHTS)
    elif defect == "loop":
        (bundle / VAE_WEIGHTS).unlink()
        (bundle / VAE_WEIGHTS).symlink_to(bundle / VAE_WEIGHTS)
    report, ok = inspect_path(bundle)
    assert not ok and expected in report
    with pytest.raises(ModelFolderError, match=expected):
        _load_onnxruntime(bundle, tmp_path)
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").iterdir())


def test_nan_weights_are_named_before_any_export(bundle, tmp_path, no_export):
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(bundle / VAE_WEIGHTS))
    victim = sorted(k for k in state if k.startswith("decoder."))[0]
    state[victim].view(-1)[0] = float("nan")
    save_file(state, str(bundle / VAE_WEIGHTS))
    assert torch.isnan(load_file(str(bundle / VAE_WEIGHTS))[victim]).any()
    with pytest.raises(ModelFolderError, match=f"tensor '{victim}' holds NaN or infinite values"):
        _load_onnxruntime(bundle, tmp_path)


def test_a_pickle_in_the_saa_file_is_refused_before_any_export(bundle, tmp_path, no_export):
    import torch

    saa = torch.load(bundle / "dynamicid" / "SAA.bin", weights_only=True)
    saa["payload"] = argparse.Namespace(run="code")  # an object weights_only refuses to build
    torch.save(saa, bundle / "dynamicid" / "SAA.bin")
    report, ok = inspect_path(bundle)
    assert not ok and "refusing to load" in report
    with pytest.raises(ModelFolderError, match="refusing to load"):
        _load_onnxruntime(bundle, tmp_path)


def test_a_valid_cache_is_reused_without_the_export_checks(tiny_bundle, tiny_engines, no_export, monkeypatch):
    from dynamicid_rt.models import preflight

    def refuse(*args):
        raise AssertionError("checkpoints were loaded although every engine was cached")

    monkeypatch.setattr(preflight, "check_before_export", refuse)
    Pipeline.load(tiny_bundle, backend="onnxruntime", device="cpu", onnx_cache=tiny_engines).close()
