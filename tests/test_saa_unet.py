"""SAAUNet (fused, LoRA merged) against the unfused reference of SPEC §1.5 on a tiny random UNet."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dynamicid_rt.contract import UNET
from dynamicid_rt.errors import CheckpointError, ModelFolderError
from dynamicid_rt.models.saa import SAAUNet, install_saa, load_unet
from saa_reference import TARGETS, ReferenceProcessor, box_cells, reference_unet

diffusers = pytest.importorskip("diffusers")

RANK = 4
CONTEXT = 64
TOL = 1e-4


def tiny_unet() -> "diffusers.UNet2DConditionModel":
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=CONTEXT,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def random_processors(unet) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    sd = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.rsplit(".", 1)[0])
        for target, path in TARGETS.items():
            lin = attn.get_submodule(path)
            sd[f"{i}.{target}_lora.down.weight"] = torch.randn(RANK, lin.in_features, generator=gen) * 0.2
            sd[f"{i}.{target}_lora.up.weight"] = torch.randn(lin.out_features, RANK, generator=gen) * 0.2
        if name.endswith("attn2.processor"):
            for p in ("to_k_ip", "to_v_ip"):
                sd[f"{i}.{p}.weight"] = torch.randn(attn.to_k.out_features, CONTEXT, generator=gen) / CONTEXT**0.5
    return sd


@pytest.fixture(scope="module")
def models():
    base = tiny_unet()
    sd = random_processors(base)
    fused = install_saa(copy.deepcopy(base), sd).eval()
    reference = copy.deepcopy(base)  # unmerged base weights, fp32 like the fused model
    return base, sd, fused, reference


def strips(n: int) -> torch.Tensor:
    edges = np.linspace(0, 1, n + 1)
    return torch.tensor([[0.0, edges[i], 1.0, edges[i + 1]] for i in range(n)], dtype=torch.float32)


def make_inputs(batch=2, h=16, w=16, n_ids=2, boxes=None, scale=1.0, boost=4.0, gating=1.0, mix=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, 4, h, w, generator=gen),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=torch.randn(batch, 77, CONTEXT, generator=gen),
        id_tokens=torch.randn(batch, 4 * n_ids, CONTEXT, generator=gen),
        id_boxes=strips(n_ids) if boxes is None else torch.tensor(boxes, dtype=torch.float32),
        id_scale=torch.full((n_ids,), scale) if np.isscalar(scale) else torch.tensor(scale, dtype=torch.float32),
        id_boost=torch.tensor([boost]),
        id_gating=torch.tensor([gating]),
        id_mix=torch.tensor([mix]),
    )


def run_fused(model: SAAUNet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs.values())


def run_reference(reference, sd, inputs) -> torch.Tensor:
    x = inputs
    return reference_unet(
        reference, sd, x["sample"], x["timestep"], x["encoder_hidden_states"], x["id_tokens"], x["id_boxes"],
        x["id_scale"], x["id_boost"], x["id_gating"], x["id_mix"],
    )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def check(models, **kw) -> torch.Tensor:
    _, sd, fused, reference = models
    inputs = make_inputs(**kw)
    out = run_fused(fused, inputs)
    ref = run_reference(reference, sd, inputs)
    assert out.shape == inputs["sample"].shape
    assert rel_err(out, ref) <= TOL, rel_err(out, ref)
    return out


def test_single_id_gating_off(models):
    out = check(models, n_ids=1, gating=0.0, boost=4.0)
    # Gating off ignores the boost entirely.
    assert torch.allclose(out, run_fused(models[2], make_inputs(n_ids=1, gating=0.0, boost=0.0)), atol=1e-6)


@pytest.mark.parametrize("n_ids", [2, 3, 4])
@pytest.mark.parametrize("boost", [0.0, 4.0])
def test_multi_id_gating(models, n_ids, boost):
    out = check(models, n_ids=n_ids, boost=boost)
    # The gating path really changes the result (masks, activation map).
    ungated = run_fused(models[2], make_inputs(n_ids=n_ids, boost=boost, gating=0.0))
    assert rel_err(out, ungated) > 1e-3


def test_non_square_latent(models):
    check(models, batch=1, h=32, w=48, n_ids=2, boxes=[[0.1, 0.0, 0.9, 0.55], [0.2, 0.45, 1.0, 1.0]])


def test_mixing_one_box_two_ids(models):
    box = [[0.1, 0.2, 0.9, 0.8]]
    a = check(models, n_ids=2, boxes=box, mix=0.3)
    b = check(models, n_ids=2, boxes=box, mix=0.8)
    assert rel_err(a, b) > 1e-4


def test_overlapping_boxes(models):
    check(models, n_ids=3, boxes=[[0.0, 0.0, 0.8, 0.6], [0.2, 0.4, 1.0, 1.0], [0.3, 0.1, 0.7, 0.9]])


def test_more_ids_than_boxes_without_mixing(models):
    # Two boxes, three identities: block 2 is never masked, no mixing (more than one box).
    check(models, n_ids=3, boxes=[[0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0]])


def test_per_person_scale_matches_reference(models):
    # Contract v2: id_scale (N) scales the value rows of each person's tokens (SPEC §1.5 step 4).
    per_person = check(models, n_ids=3, scale=[1.0, 0.3, 0.0])
    check(models, n_ids=2, scale=[0.5, 1.5], gating=0.0)  # no masks: every position mixes both people
    check(models, n_ids=2, boxes=[[0.1, 0.2, 0.9, 0.8]], scale=[1.2, 0.4], mix=0.3)  # ID mixing, one box
    assert rel_err(per_person, run_fused(models[2], make_inputs(n_ids=3, scale=1.0))) > 1e-4


def _cross_attention_calls(unet, inputs, model=None):
    """(layer path, hidden states in, output) of every attn2 during one call of ``model or unet``."""
    calls = []
    hooks = [
        unet.get_submodule(name.rsplit(".", 1)[0]).register_forward_hook(
            lambda mod, args, kwargs, out, name=name: calls.append(
                (name, args[0] if args else kwargs["hidden_states"], kwargs["encoder_hidden_states"], out)
            ),
            with_kwargs=True,
        )
        for name in unet.attn_processors
        if name.endswith("attn2.processor")
    ]
    try:
        run_fused(model or unet, inputs)
    finally:
        for h in hooks:
            h.remove()
    return calls


@pytest.mark.parametrize("j", [0, 2])
def test_person_at_scale_zero_adds_nothing_inside_their_box(models, j):
    """Person j at id_scale 0 equals a call without person j's tokens *in j's box*, stated exactly:
    at every SAA layer, at each position inside box j and outside the other boxes, the layer's output
    equals the text-only cross-attention of the same hidden states (no identity tokens at all).
    There the region masks (gating on) leave only j's 4 tokens unmasked, and σ_j = 0 zeroes their
    value rows, so the identity branch adds exactly 0, whatever the gating map a is.
    It does not hold for the whole UNet output against a call with j's tokens removed: a is
    min-max normalised over all positions from logits that include j's tokens, removing j's box
    unmasks the others' tokens there, and convolutions and self-attention carry the other boxes'
    identities into j's box. Checked against the unfused reference's text branch."""
    base, sd, fused, _ = models  # base: the unmerged weights the reference's LoRA goes onto
    names = list(base.attn_processors)
    boxes = strips(3)
    scales = [1.0, 1.0, 1.0]
    scales[j] = 0.0
    h, w = 16, 24
    for scale, expect_equal in ((scales, True), ([1.0, 1.0, 1.0], False)):
        inputs = make_inputs(batch=1, h=h, w=w, n_ids=3, scale=scale)
        calls = _cross_attention_calls(fused.unet, inputs, fused)
        assert len(calls) >= 2
        for name, hidden, context, out in calls:
            i = names.index(name)
            weights = {
                f"{t}_lora.{p}.weight": sd[f"{i}.{t}_lora.{p}.weight"] for t in TARGETS for p in ("down", "up")
            }
            with torch.no_grad():
                text_only = ReferenceProcessor(weights, cross=True)(
                    base.get_submodule(name.rsplit(".", 1)[0]), hidden, context
                )
            length = hidden.shape[1]
            k = int((h * w // length) ** 0.5)
            cells = [box_cells(b, h // k, w // k) for b in boxes.tolist()]
            only_j = cells[j] & ~torch.stack([c for m, c in enumerate(cells) if m != j]).any(0)
            others = ~cells[j]
            assert only_j.any() and others.any()
            err_j = rel_err(out[0, only_j], text_only[0, only_j])
            err_others = rel_err(out[0, others], text_only[0, others])
            assert err_others > 1e-3, (name, err_others)  # the other people's identities do act
            if expect_equal:
                assert err_j <= TOL, (name, err_j)
            else:
                assert err_j > 1e-3, (name, err_j)  # at σ_j = 1 person j acts in their box


def test_id_scale_zero_is_plain_merged_unet(models):
    base, sd, fused, _ = models
    plain = copy.deepcopy(base)
    with torch.no_grad():
        for i, name in enumerate(plain.attn_processors):
            attn = plain.get_submodule(name.rsplit(".", 1)[0])
            for target, path in TARGETS.items():
                lin = attn.get_submodule(path)
                lin.weight += sd[f"{i}.{target}_lora.up.weight"] @ sd[f"{i}.{target}_lora.down.weight"]
    inputs = make_inputs(n_ids=2, scale=0.0)
    with torch.no_grad():
        expected = plain(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"]).sample
        bare = fused.unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"]).sample
        unmerged = base(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"]).sample
    out = run_fused(fused, inputs)
    assert rel_err(out, expected) <= TOL
    assert rel_err(bare, expected) <= TOL
    assert rel_err(out, unmerged) > 1e-3  # the LoRA is really there


def test_bad_checkpoint_names_keys(models):
    base, sd, _, _ = models
    bad = dict(sd)
    del bad["3.to_k_ip.weight"]
    bad["99.to_q_lora.down.weight"] = torch.zeros(RANK, 32)
    bad["0.to_v_lora.up.weight"] = torch.zeros(7, RANK)
    with pytest.raises(CheckpointError) as err:
        install_saa(copy.deepcopy(base), bad, "bad.bin")
    msg = str(err.value)
    for key in ("3.to_k_ip.weight", "99.to_q_lora.down.weight", "0.to_v_lora.up.weight", "bad.bin"):
        assert key in msg
    # Self-attention layers carry no ip weights: one there is unexpected.
    extra = dict(sd, **{"0.to_k_ip.weight": torch.zeros(32, CONTEXT)})
    with pytest.raises(CheckpointError, match=r"unexpected .*0\.to_k_ip\.weight"):
        install_saa(copy.deepcopy(base), extra)


def test_load_unet_from_folders(models, tmp_path):
    base, sd, fused, _ = models
    base.save_pretrained(tmp_path / "sd" / "unet")
    torch.save({"proj_module": {"proj.0.weight": torch.zeros(2, 2)}, "SAA_module": sd}, tmp_path / "SAA.bin")
    inputs = make_inputs(n_ids=2)
    expected = run_fused(fused, inputs)
    for folder in (tmp_path / "sd", tmp_path / "sd" / "unet"):
        model = load_unet(folder, tmp_path / "SAA.bin")
        assert model.dtype == torch.float32 and model.config.cross_attention_dim == CONTEXT
        assert rel_err(run_fused(model, inputs), expected) <= 1e-6
    with pytest.raises(ModelFolderError, match="neither"):
        load_unet(tmp_path, tmp_path / "SAA.bin")


def test_fp16_close_to_fp32(models):
    _, _, fused, _ = models
    half = copy.deepcopy(fused).half()
    inputs = make_inputs(n_ids=3, boxes=[[0.0, 0.0, 0.8, 0.6], [0.2, 0.4, 1.0, 1.0], [0.3, 0.1, 0.7, 0.9]])
    out = run_fused(half, {k: (v.half() if k != "id_boxes" else v) for k, v in inputs.items()})
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert rel_err(out, run_fused(fused, inputs)) < 2e-2


def test_onnx_export_dynamic(models, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, _, fused, _ = models
    sample = make_inputs(batch=2, h=16, w=16, n_ids=2)
    path = tmp_path / "unet.onnx"
    with torch.no_grad():
        torch.onnx.export(
            fused, tuple(sample.values()), str(path), input_names=UNET.input_names, output_names=UNET.output_names,
            dynamic_axes=UNET.dynamic_axes(), opset_version=17, dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cases = [
        dict(batch=1, h=24, w=32, n_ids=3, boost=0.0),  # 3 ids, 3 boxes, no boost
        dict(batch=3, h=32, w=16, n_ids=2, boxes=[[0.1, 0.2, 0.9, 0.8]], mix=0.3),  # mixing
        dict(batch=2, h=16, w=24, n_ids=1, gating=0.0),  # gating off
        dict(batch=1, h=16, w=16, n_ids=4, boxes=[[0.0, 0.0, 0.8, 0.6], [0.2, 0.4, 1.0, 1.0]]),
        dict(batch=2, h=16, w=24, n_ids=3, scale=[1.0, 0.3, 0.0]),  # per-person strength (contract v2)
    ]
    for kw in cases:
        inputs = make_inputs(**kw)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        assert rel_err(torch.from_numpy(got), run_fused(fused, inputs)) <= TOL, kw


def test_box_edges_follow_exact_decimal_arithmetic():
    """Box edges land on the cells exact arithmetic gives: int(0.53·100) = 53 and int(0.29·100) = 29,
    where fp32 alone gives 52 and float64 gives 28."""
    from fractions import Fraction

    from dynamicid_rt.models.saa_attention import _region_masks

    block = torch.zeros(4, dtype=torch.int64)
    cases = [((0.29, 0.53, 0.58, 0.7), (100, 100)), ((0.58, 0.525, 0.7, 0.84), (50, 120)), ((0.1, 0.35, 0.7, 0.7), (90, 75))]
    for box, (h, w) in cases:
        size = (torch.tensor(h), torch.tensor(w))
        _, inside = _region_masks(torch.tensor([box], dtype=torch.float32), size, size, block,
                                  torch.ones(4, dtype=torch.bool), torch.tensor(True))
        y0, x0, y1, x1 = (Fraction(str(v)) for v in box)
        ref = np.zeros((h, w), bool)
        ref[int(y0 * h): int(y1 * h), int(x0 * w): int(x1 * w)] = True
        assert np.array_equal(inside.numpy().reshape(h, w), ref), (box, h, w)
