"""Checkpoint layouts of SPEC §2: every SAA layout yields the same face projector; bad files fail clearly."""
from __future__ import annotations

import math
import pathlib

import pytest
import torch
from safetensors.torch import save_file

from dynamicid_rt.modelfiles.checkpoints import read_saa_checkpoint, read_state_dict
from dynamicid_rt.errors import CheckpointError
from dynamicid_rt.models.projector import FaceProjector, load_face_projector

C, CLIP_WIDTH = 64, 32


def projector_state(seed: int = 0, depth: int = 2) -> dict:
    """A tiny ProjPlusModel state dict with the release's key names."""
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}

    def lin(name, cout, cin, bias=True):
        sd[f"{name}.weight"] = torch.randn(cout, cin, generator=g) / math.sqrt(cin)
        if bias:
            sd[f"{name}.bias"] = 0.1 * torch.randn(cout, generator=g)

    def ln(name, d):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(d, generator=g)

    lin("proj.0", 1024, 512)
    lin("proj.2", 4 * C, 1024)
    ln("norm", C)
    r = "perceiver_resampler"
    lin(f"{r}.proj_in", C, CLIP_WIDTH)
    lin(f"{r}.proj_out", C, C)
    ln(f"{r}.norm_out", C)
    for i in range(depth):
        a = f"{r}.layers.{i}.0"
        ln(f"{a}.norm1", C)
        ln(f"{a}.norm2", C)
        lin(f"{a}.to_q", C, C, bias=False)
        lin(f"{a}.to_kv", 2 * C, C, bias=False)
        lin(f"{a}.to_out", C, C, bias=False)
        ln(f"{r}.layers.{i}.1.0", C)
        lin(f"{r}.layers.{i}.1.1", 4 * C, C, bias=False)
        lin(f"{r}.layers.{i}.1.3", C, 4 * C, bias=False)
    return sd


def processor_state(seed: int = 1) -> dict:
    """A few SAA processor tensors (self-attention LoRA, one cross-attention layer)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "0.to_q_lora.down.weight": torch.randn(4, 16, generator=g),
        "0.to_q_lora.up.weight": torch.randn(16, 4, generator=g),
        "1.to_k_ip.weight": torch.randn(16, C, generator=g),
        "1.to_v_ip.weight": torch.randn(16, C, generator=g),
    }


def flat(prefix: str, sd: dict) -> dict:
    return {f"{prefix}.{k}": v.contiguous() for k, v in sd.items()}


def write_layout(tmp_path: pathlib.Path, layout: str, proj: dict, procs: dict) -> pathlib.Path:
    if layout == "bin-release":
        path = tmp_path / "SAA.bin"
        torch.save({"proj_module": proj, "SAA_module": procs}, path)
    elif layout == "bin-ip-adapter":
        path = tmp_path / "SAA_ip.bin"
        torch.save({"image_proj": proj, "ip_adapter": procs}, path)
    elif layout == "st-release":
        path = tmp_path / "SAA.safetensors"
        save_file(flat("proj_module", proj) | flat("SAA_module", procs), str(path))
    else:
        path = tmp_path / "SAA_ip.safetensors"
        save_file(flat("image_proj", proj) | flat("ip_adapter", procs), str(path))
    return path


def inputs(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 512, generator=g), torch.randn(2, 257, CLIP_WIDTH, generator=g)


LAYOUTS = ["bin-release", "bin-ip-adapter", "st-release", "st-ip-adapter"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_saa_layout_loads_the_same_projector(tmp_path, layout):
    proj, procs = projector_state(), processor_state()
    path = write_layout(tmp_path, layout, proj, procs)
    module = load_face_projector(path)
    # Every parameter is the file's tensor under the release key name.
    params = module.state_dict()
    assert set(params) == set(proj)
    assert all(torch.equal(params[k], proj[k]) for k in proj)
    assert not module.training and module.norm.weight.dtype == torch.float32
    # The same outputs as the projector built from the in-memory release layout (first layout).
    (tmp_path / "ref").mkdir()
    reference = write_layout(tmp_path / "ref", "bin-release", proj, procs)
    with torch.no_grad():
        assert torch.equal(module(*inputs()), load_face_projector(reference)(*inputs()))
    # The processors come along in the same form whatever the layout.
    saa = read_saa_checkpoint(path)
    assert set(saa.processors) == set(procs)
    assert all(torch.equal(saa.processors[k], procs[k]) for k in procs)


def test_projector_dtype(tmp_path):
    path = write_layout(tmp_path, "st-release", projector_state(), processor_state())
    module = load_face_projector(path, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in module.parameters())
    assert all(not p.requires_grad for p in module.parameters())
    e, h = inputs()
    with torch.no_grad():
        assert module(e.double(), h.double()).shape == (2, 4, C)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_missing_projector_lists_keys_and_separate_file_works(tmp_path, suffix):
    procs = processor_state()
    saa = tmp_path / f"SAA{suffix}"
    if suffix == ".bin":
        torch.save({"SAA_module": procs}, saa)
    else:
        save_file(flat("SAA_module", procs), str(saa))
    with pytest.raises(CheckpointError) as err:
        load_face_projector(saa)
    msg = str(err.value)
    assert "SAA_module (4 keys)" in msg and "proj_module" in msg and "separate" in msg

    proj = projector_state(seed=5)
    separate = tmp_path / f"projector{suffix}"
    if suffix == ".bin":
        torch.save(proj, separate)
    else:
        save_file(proj, str(separate))
    module = load_face_projector(saa, separate)
    assert all(torch.equal(module.state_dict()[k], proj[k]) for k in proj)


def test_separate_projector_takes_precedence(tmp_path):
    in_saa, separate = projector_state(seed=1), projector_state(seed=2)
    saa = write_layout(tmp_path, "bin-release", in_saa, processor_state())
    torch.save({"image_proj": separate}, tmp_path / "proj.bin")  # an SAA-style file holding only the projector
    module = load_face_projector(saa, tmp_path / "proj.bin")
    assert torch.equal(module.proj[0].weight, separate["proj.0.weight"])
    assert not torch.equal(module.proj[0].weight, in_saa["proj.0.weight"])


@pytest.mark.parametrize("layout", ["bin-release", "st-release"])
def test_truncated_file_is_a_clear_error(tmp_path, layout):
    path = write_layout(tmp_path, layout, projector_state(), processor_state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_face_projector(path)
    assert str(path) in str(err.value)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_face_projector(tmp_path / "nope.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_face_projector(junk)


def test_wrong_shape_names_key_and_shapes(tmp_path):
    proj = projector_state()
    proj["perceiver_resampler.layers.1.1.3.weight"] = torch.zeros(C, 2 * C)
    path = write_layout(tmp_path, "st-ip-adapter", proj, processor_state())
    with pytest.raises(CheckpointError) as err:
        load_face_projector(path)
    msg = str(err.value)
    assert f"perceiver_resampler.layers.1.1.3.weight: ({C}, {2 * C}) (expected ({C}, {4 * C}))" in msg
    assert str(path) in msg


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    proj = projector_state()
    del proj["perceiver_resampler.norm_out.bias"]
    proj["perceiver_resampler.extra"] = torch.zeros(3)
    path = write_layout(tmp_path, "bin-release", proj, processor_state())
    expected = r"missing perceiver_resampler\.norm_out\.bias.*unexpected perceiver_resampler\.extra"
    with pytest.raises(CheckpointError, match=expected):
        load_face_projector(path)


class Payload:
    """Unpickling this would create a marker file: it must never happen."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_with_objects_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "SAA.bin"
    torch.save({"proj_module": projector_state(), "SAA_module": processor_state(), "x": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*objects other than tensors"):
        load_face_projector(path)
    assert not marker.exists()
    imr = tmp_path / "IMR.bin"
    torch.save({"feature_fusion.0.weight": torch.zeros(2), "blob": Payload(marker)}, imr)
    with pytest.raises(CheckpointError, match="refusing"):
        read_state_dict(imr, "IMR", ("feature_fusion.",))
    assert not marker.exists()


def test_non_tensor_values_are_reported(tmp_path):
    proj = projector_state()
    proj["norm.bias"] = 3  # weights_only admits ints: still not a tensor
    path = tmp_path / "proj.bin"
    torch.save(proj, path)
    saa = write_layout(tmp_path, "bin-release", projector_state(), processor_state())
    with pytest.raises(CheckpointError, match=r"norm\.bias: int value, not a tensor"):
        load_face_projector(saa, path)


def test_state_dict_from_memory_matches_file(tmp_path):
    proj = projector_state(seed=9, depth=1)
    path = write_layout(tmp_path, "st-release", proj, processor_state())
    with torch.no_grad():
        assert torch.equal(FaceProjector.from_state_dict(proj)(*inputs()), load_face_projector(path)(*inputs()))
