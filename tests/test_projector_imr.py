"""Face projector, keypoint encoder and IMR against a reference of SPEC §1.3/§1.4 written here.

The reference works on the raw state dict in float64 with explicit formulas (LayerNorm, GELU,
BatchNorm written out, attention looped over heads); the modules run in float32.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynamicid_rt.errors import CheckpointError
from dynamicid_rt.models.imr import IMR, IMREditor, KeyPointEncoder, load_imr
from dynamicid_rt.models.projector import FaceProjector

HEAD = 64


# ---------------------------------------------------------------- random release-layout state dicts
def _lin(sd, name, cout, cin, g, bias=True):
    sd[f"{name}.weight"] = torch.randn(cout, cin, generator=g) / math.sqrt(cin)
    if bias:
        sd[f"{name}.bias"] = 0.1 * torch.randn(cout, generator=g)


def _ln(sd, name, d, g):
    sd[f"{name}.weight"] = 1 + 0.2 * torch.randn(d, generator=g)
    sd[f"{name}.bias"] = 0.2 * torch.randn(d, generator=g)


def _perceiver(sd, p, d, g):
    _ln(sd, f"{p}.norm1", d, g)
    _ln(sd, f"{p}.norm2", d, g)
    _lin(sd, f"{p}.to_q", d, d, g, bias=False)
    _lin(sd, f"{p}.to_kv", 2 * d, d, g, bias=False)
    _lin(sd, f"{p}.to_out", d, d, g, bias=False)


def _ff(sd, p, d, g):
    _ln(sd, f"{p}.0", d, g)
    _lin(sd, f"{p}.1", 4 * d, d, g, bias=False)
    _lin(sd, f"{p}.3", d, 4 * d, g, bias=False)


def projector_state(c: int, clip_width: int, depth: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}
    _lin(sd, "proj.0", 1024, 512, g)
    _lin(sd, "proj.2", 4 * c, 1024, g)
    _ln(sd, "norm", c, g)
    r = "perceiver_resampler"
    _lin(sd, f"{r}.proj_in", c, clip_width, g)
    _lin(sd, f"{r}.proj_out", c, c, g)
    _ln(sd, f"{r}.norm_out", c, g)
    for i in range(depth):
        _perceiver(sd, f"{r}.layers.{i}.0", c, g)
        _ff(sd, f"{r}.layers.{i}.1", c, g)
    return sd


KPE_WIDTHS = (4, 6, 8, 8, 10, 12)  # block 0 .. block 5 (the release: 16, 32, 64, 128, 256, 512)
KPE_RESIDUAL = (2, 3, 2, 2, 1)  # residual convs of blocks 1..5, as in the release


def keypoint_state(c: int, seed: int = 0, widths=KPE_WIDTHS, residual=KPE_RESIDUAL) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}

    def conv(b, j, cin, cout, k):
        p = f"blocks.{b}.{j}.conv_block"
        sd[f"{p}.0.weight"] = torch.randn(cout, cin, k, k, generator=g) / math.sqrt(cin * k * k)
        sd[f"{p}.0.bias"] = 0.1 * torch.randn(cout, generator=g)
        sd[f"{p}.1.weight"] = 1 + 0.2 * torch.randn(cout, generator=g)
        sd[f"{p}.1.bias"] = 0.2 * torch.randn(cout, generator=g)
        sd[f"{p}.1.running_mean"] = 0.3 * torch.randn(cout, generator=g)
        sd[f"{p}.1.running_var"] = 0.5 + torch.rand(cout, generator=g)
        sd[f"{p}.1.num_batches_tracked"] = torch.tensor(1000)

    conv(0, 0, 1, widths[0], 7)
    for b in range(1, 6):
        conv(b, 0, widths[b - 1], widths[b], 3)
        for j in range(residual[b - 1]):
            conv(b, j + 1, widths[b], widths[b], 3)
    conv(6, 0, widths[5], widths[5], 3)
    conv(6, 1, widths[5], c, 1)
    return sd


def imr_state(c: int, d: int, depth: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}
    _ln(sd, "feature_fusion.0", 2 * c, g)
    _lin(sd, "feature_fusion.1", d, 2 * c, g)
    _ln(sd, "feature_fusion.3", d, g)
    _lin(sd, "feature_fusion.4", 4 * d, d, g)
    _ln(sd, "norm_in", c, g)
    _lin(sd, "proj_in", d, c, g)
    _ln(sd, "norm_out", d, g)
    _lin(sd, "proj_out", c, d, g)
    for net in ("disentangleNet", "entangleNet"):
        for i in range(depth):
            _perceiver(sd, f"{net}.{i}.0", d, g)
            _ln(sd, f"{net}.{i}.1.norm1", d, g)
            _lin(sd, f"{net}.{i}.1.to_q", d, d, g, bias=False)
            _lin(sd, f"{net}.{i}.1.to_kv", 2 * d, d, g, bias=False)
            _lin(sd, f"{net}.{i}.1.to_out", d, d, g, bias=False)
            _ff(sd, f"{net}.{i}.2", d, g)
    return sd


# ---------------------------------------------------------------- reference (float64, explicit)
def r_ln(sd, p, x):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * sd[f"{p}.weight"].double() + sd[f"{p}.bias"].double()


def r_lin(sd, p, x):
    y = x @ sd[f"{p}.weight"].double().T
    return y + sd[f"{p}.bias"].double() if f"{p}.bias" in sd else y


def r_gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def r_heads_attention(q, k, v):
    """q (b, n, h·64), k/v (b, m, h·64): each head separately, explicit softmax."""
    outs = []
    for h in range(q.shape[-1] // HEAD):
        s = slice(h * HEAD, (h + 1) * HEAD)
        logits = q[..., s] @ k[..., s].transpose(-1, -2) / math.sqrt(HEAD)
        w = torch.exp(logits - logits.max(-1, keepdim=True).values)
        w = w / w.sum(-1, keepdim=True)
        outs.append(w @ v[..., s])
    return torch.cat(outs, -1)


def r_perceiver(sd, p, features, latents):
    f = r_ln(sd, f"{p}.norm1", features)
    lat = r_ln(sd, f"{p}.norm2", latents)
    q = r_lin(sd, f"{p}.to_q", lat)
    kv = r_lin(sd, f"{p}.to_kv", torch.cat([f, lat], 1))
    inner = q.shape[-1]
    return r_lin(sd, f"{p}.to_out", r_heads_attention(q, kv[..., :inner], kv[..., inner:]))


def r_self_attention(sd, p, x):
    x = r_ln(sd, f"{p}.norm1", x)
    q = r_lin(sd, f"{p}.to_q", x)
    kv = r_lin(sd, f"{p}.to_kv", x)
    inner = q.shape[-1]
    return r_lin(sd, f"{p}.to_out", r_heads_attention(q, kv[..., :inner], kv[..., inner:]))


def r_ff(sd, p, x):
    return r_lin(sd, f"{p}.3", r_gelu(r_lin(sd, f"{p}.1", r_ln(sd, f"{p}.0", x))))


def ref_projector(sd, e, h, depth):
    c = sd["norm.weight"].shape[0]
    x = r_lin(sd, "proj.2", r_gelu(r_lin(sd, "proj.0", e.double()))).reshape(-1, 4, c)
    x = r_ln(sd, "norm", x)
    r = "perceiver_resampler"
    feats = r_lin(sd, f"{r}.proj_in", h.double())
    for i in range(depth):
        x = r_perceiver(sd, f"{r}.layers.{i}.0", feats, x) + x
        x = r_ff(sd, f"{r}.layers.{i}.1", x) + x
    return r_ln(sd, f"{r}.norm_out", r_lin(sd, f"{r}.proj_out", x))


def ref_keypoints(sd, img):
    """The release layout written out: (block, conv, stride, padding, residual)."""
    x = img.double()
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd)
    for b in range(n_blocks):
        n_convs = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(f"blocks.{b}."))
        for j in range(n_convs):
            p = f"blocks.{b}.{j}.conv_block"
            stride = 2 if (1 <= b <= 5 and j == 0) else 1
            padding = {0: 3, 6: 0}.get(b, 1)
            y = F.conv2d(x, sd[f"{p}.0.weight"].double(), sd[f"{p}.0.bias"].double(), stride, padding)
            mean, var = sd[f"{p}.1.running_mean"].double(), sd[f"{p}.1.running_var"].double()
            y = (y - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
            y = y * sd[f"{p}.1.weight"].double()[:, None, None] + sd[f"{p}.1.bias"].double()[:, None, None]
            if 1 <= b <= 5 and j > 0:
                y = y + x
            x = torch.clamp(y, min=0)
    assert x.shape[-2:] == (1, 1)
    return x.reshape(x.shape[0], -1)


def ref_imr(sd, tokens, kp, txt, depth):
    d = sd["proj_in.weight"].shape[0]

    def fuse(v):
        v = r_gelu(r_lin(sd, "feature_fusion.1", r_ln(sd, "feature_fusion.0", v)))
        return r_gelu(r_lin(sd, "feature_fusion.4", r_ln(sd, "feature_fusion.3", v))).reshape(-1, 4, d)

    ls = fuse(torch.cat([kp[:1], txt[:1]], -1).double())
    lt = fuse(torch.cat([kp[1:], txt[1:]], -1).double())
    x = r_lin(sd, "proj_in", r_ln(sd, "norm_in", tokens.double()))
    for net, lat in (("disentangleNet", ls), ("entangleNet", lt)):
        for i in range(depth):
            x = r_perceiver(sd, f"{net}.{i}.0", lat, x) + x
            x = r_self_attention(sd, f"{net}.{i}.1", x) + x
            x = r_ff(sd, f"{net}.{i}.2", x) + x
    return r_lin(sd, "proj_out", r_ln(sd, "norm_out", x))


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def landmarks(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(n, 1, 96, 96, generator=g) < 0.03, 1.0, -1.0)


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("c,depth", [(64, 1), (128, 2)])
def test_projector_matches_reference(c, depth):
    sd = projector_state(c, 32, depth, seed=c + depth)
    proj = FaceProjector.from_state_dict(sd)
    g = torch.Generator().manual_seed(1)
    e = F.normalize(torch.randn(3, 512, generator=g), dim=-1)
    h = torch.randn(3, 257, 32, generator=g)
    with torch.no_grad():
        out = proj(e, h)
    assert out.shape == (3, 4, c) and out.dtype == torch.float32
    assert rel_err(out, ref_projector(sd, e, h, depth)) <= 1e-5
    assert len(proj.perceiver_resampler.layers) == depth
    assert proj.perceiver_resampler.layers[0][0].heads == c // 64


def test_projector_rejects_bad_state():
    sd = projector_state(64, 32, 1)
    bad = dict(sd)
    bad["perceiver_resampler.layers.0.0.to_out.weight"] = torch.zeros(64, 32)
    bad["extra.weight"] = torch.zeros(1)
    del bad["norm.bias"]
    with pytest.raises(CheckpointError) as err:
        FaceProjector.from_state_dict(bad, source="p.bin")
    msg = str(err.value)
    assert "norm.bias" in msg and "extra.weight" in msg
    assert "perceiver_resampler.layers.0.0.to_out.weight: (64, 32) (expected (64, 64))" in msg


def test_keypoint_encoder_matches_reference_with_running_stats():
    sd = keypoint_state(64)
    enc = KeyPointEncoder.from_state_dict(sd)
    assert not enc.training
    img = landmarks(3)
    with torch.no_grad():
        out = enc(img)
        single = enc(img[1:2])
    assert out.shape == (3, 64)
    assert rel_err(out, ref_keypoints(sd, img)) <= 1e-5
    # Eval mode: one sample's features do not depend on the rest of the batch (no batch statistics).
    assert rel_err(single, out[1:2]) <= 1e-6
    # The running statistics are used: shifting them moves the output as the reference predicts.
    shifted = dict(sd)
    shifted["blocks.3.1.conv_block.1.running_mean"] = sd["blocks.3.1.conv_block.1.running_mean"] + 0.5
    with torch.no_grad():
        out2 = KeyPointEncoder.from_state_dict(shifted)(img)
    assert rel_err(out2, out) > 1e-3
    assert rel_err(out2, ref_keypoints(shifted, img)) <= 1e-5


def test_keypoint_encoder_reads_structure_from_shapes():
    # Other widths and residual counts per stage: still read from the shapes.
    sd = keypoint_state(32, widths=(2, 3, 4, 5, 6, 7), residual=(1, 1, 2, 1, 2))
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # some savers drop them
    enc = KeyPointEncoder.from_state_dict(sd)
    img = landmarks(2, seed=3)
    with torch.no_grad():
        assert rel_err(enc(img), ref_keypoints(sd, img)) <= 1e-5
    assert [len(b) for b in enc.blocks] == [1, 2, 2, 3, 2, 3, 2]


def test_keypoint_encoder_rejects_bad_state():
    sd = keypoint_state(64)
    sd["blocks.2.1.conv_block.1.running_var"] = torch.ones(5)
    with pytest.raises(CheckpointError, match=r"blocks\.2\.1\.conv_block\.1\.running_var: \(5,\)"):
        KeyPointEncoder.from_state_dict(sd)
    with pytest.raises(CheckpointError, match="blocks"):
        KeyPointEncoder.from_state_dict({"foo.weight": torch.zeros(3)})


@pytest.mark.parametrize("c,d,depth", [(64, 128, 1), (128, 128, 2)])
def test_imr_editor_matches_reference(c, d, depth):
    imr_sd = imr_state(c, d, depth, seed=depth)
    kp_sd = keypoint_state(c, seed=depth)
    editor = IMREditor(KeyPointEncoder.from_state_dict(kp_sd), IMR.from_state_dict(imr_sd))
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(1, 4, c, generator=g)
    text = torch.randn(2, c, generator=g)
    lm = landmarks(2, seed=depth)
    with torch.no_grad():
        out = editor(tokens, lm, text)
    expected = ref_imr(imr_sd, tokens, ref_keypoints(kp_sd, lm), text, depth)
    assert out.shape == (1, 4, c)
    assert rel_err(out, expected) <= 1e-5
    # Source and target matter separately (row 0 = source, row 1 = target).
    with torch.no_grad():
        swapped = editor(tokens, lm.flip(0), text.flip(0))
    assert rel_err(swapped, expected) > 1e-3


def test_imr_rejects_bad_state():
    sd = imr_state(64, 128, 1)
    sd["entangleNet.0.1.to_q.weight"] = torch.zeros(128, 64)
    del sd["disentangleNet.0.2.3.weight"]
    with pytest.raises(CheckpointError) as err:
        IMR.from_state_dict(sd, source="IMR.bin")
    msg = str(err.value)
    assert "IMR.bin" in msg and "disentangleNet.0.2.3.weight" in msg
    assert "entangleNet.0.1.to_q.weight: (128, 64) (expected (128, 128))" in msg


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_load_imr_from_files(tmp_path, suffix):
    from safetensors.torch import save_file

    imr_sd, kp_sd = imr_state(64, 128, 1), keypoint_state(64)
    save = (lambda sd, p: save_file(sd, str(p))) if suffix == ".safetensors" else (lambda sd, p: torch.save(sd, p))
    save(imr_sd, tmp_path / f"IMR{suffix}")
    save(kp_sd, tmp_path / f"kpe{suffix}")
    editor = load_imr(tmp_path / f"IMR{suffix}", tmp_path / f"kpe{suffix}", dtype=torch.float64)
    assert not editor.training and not editor.keypoint_encoder.training
    assert editor.imr.proj_in.weight.dtype == torch.float64
    assert all(not p.requires_grad for p in editor.parameters())
    g = torch.Generator().manual_seed(5)
    tokens, text, lm = torch.randn(1, 4, 64, generator=g), torch.randn(2, 64, generator=g), landmarks(2)
    with torch.no_grad():
        out = editor(tokens.double(), lm.double(), text.double())
    assert rel_err(out, ref_imr(imr_sd, tokens, ref_keypoints(kp_sd, lm), text, 1)) <= 1e-10

    # A keypoint encoder of another width does not pair with this IMR.
    torch.save(keypoint_state(32), tmp_path / "kpe32.bin")
    with pytest.raises(CheckpointError, match="32 features"):
        load_imr(tmp_path / f"IMR{suffix}", tmp_path / "kpe32.bin")
    # Files swapped: said clearly.
    with pytest.raises(CheckpointError, match="not the expected IMR checkpoint"):
        load_imr(tmp_path / f"kpe{suffix}", tmp_path / f"IMR{suffix}")


def test_fp16_runs_close_to_reference():
    sd = projector_state(64, 32, 1, seed=7)
    proj = FaceProjector.from_state_dict(sd)
    g = torch.Generator().manual_seed(8)
    e, h = F.normalize(torch.randn(2, 512, generator=g), dim=-1), torch.randn(2, 257, 32, generator=g)
    with torch.no_grad():
        out16 = proj.half()(e.half(), h.half())
    assert out16.dtype == torch.float16 and torch.isfinite(out16).all()
    assert rel_err(out16, ref_projector(sd, e, h, 1)) <= 1e-2


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_onnx_export_matches(tmp_path, dynamo):
    ort = pytest.importorskip("onnxruntime")
    c = 64
    imr_sd, kp_sd = imr_state(c, 128, 1), keypoint_state(c)
    editor = IMREditor(KeyPointEncoder.from_state_dict(kp_sd), IMR.from_state_dict(imr_sd))
    proj = FaceProjector.from_state_dict(projector_state(c, 32, 1))
    g = torch.Generator().manual_seed(9)
    cases = {
        "imr": (editor, (torch.randn(1, 4, c, generator=g), landmarks(2), torch.randn(2, c, generator=g)),
                ["id_tokens", "landmarks", "text_pooled"], None),
        "proj": (proj, (torch.randn(2, 512, generator=g), torch.randn(2, 257, 32, generator=g)),
                 ["id_embeds", "clip_hidden"], {"id_embeds": {0: "B"}, "clip_hidden": {0: "B"}}),
    }
    for name, (module, args, names, dyn) in cases.items():
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["id_tokens_out"],
                          dynamic_axes=dyn, dynamo=dynamo)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
        with torch.no_grad():
            want = module(*args)
        assert rel_err(torch.from_numpy(got), want) <= 1e-5
    assert not editor.keypoint_encoder.training  # export left the BatchNorms on running statistics
    # The batch axis of the projector is dynamic.
    (got,) = sess.run(None, {"id_embeds": args[0][:1].numpy(), "clip_hidden": args[1][:1].numpy()})
    assert got.shape == (1, 4, c)
