"""The tiny bundle, the CLIP tokenizer it carries and the base-model loaders, on the bundle itself."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from dynamicid_rt.errors import ModelFolderError  # noqa: E402
from dynamicid_rt.models.base import (  # noqa: E402
    load_base_unet,
    load_image_encoder,
    load_text_encoder,
    load_vae_decoder,
    read_model_dims,
)
from dynamicid_rt.modelfiles.paths import ModelPaths  # noqa: E402
from dynamicid_rt.tiny import bundle as bundle_mod  # noqa: E402
from dynamicid_rt.tiny.bundle import MARKER, TINY, write_tiny_bundle  # noqa: E402
from dynamicid_rt.tiny.tokenizer import write_clip_tokenizer  # noqa: E402

HAS_FACE_PARTS = all(
    importlib.util.find_spec(f"dynamicid_rt.tiny.{m}") is not None for m in ("face_models", "portraits")
)


def _write(root: Path, seed: int = 0) -> ModelPaths:
    """write_tiny_bundle, skipping the face models and portraits while their writers do not exist."""
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("dynamicid_rt.tiny.face_models") is None:
            mp.setattr(bundle_mod, "_write_insightface", lambda pack_dir, seed: None)
        if importlib.util.find_spec("dynamicid_rt.tiny.portraits") is None:
            mp.setattr(bundle_mod, "_write_samples", lambda samples_dir, seed: None)
        return write_tiny_bundle(root, seed=seed)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ModelPaths:
    return _write(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tiny.base / "tokenizer"))


def test_bundle_loads_with_diffusers_and_transformers(tiny):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPVisionModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(str(tiny.base / "unet"))
    assert list(unet.config.block_out_channels) == list(TINY.unet_channels)
    assert unet.config.cross_attention_dim == TINY.context_dim
    vae = AutoencoderKL.from_pretrained(str(tiny.base / "vae"))
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    assert vae.config.latent_channels == 4
    text = CLIPTextModel.from_pretrained(str(tiny.base / "text_encoder"))
    assert text.config.hidden_size == TINY.context_dim and text.config.max_position_embeddings == 77
    vision = CLIPVisionModelWithProjection.from_pretrained(str(tiny.image_encoder))
    assert (vision.config.image_size // vision.config.patch_size) ** 2 + 1 == 257
    sched = PNDMScheduler.from_pretrained(str(tiny.base / "scheduler"))
    assert sched.config.beta_schedule == "scaled_linear"
    assert (sched.config.beta_start, sched.config.beta_end) == (0.00085, 0.012)
    assert sched.config.steps_offset == 1 and sched.config.skip_prk_steps and not sched.config.set_alpha_to_one
    index = json.loads((tiny.base / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    pre = json.loads((tiny.image_encoder / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 224, "width": 224} and pre["size"] == {"shortest_edge": 224}


def test_model_dims_from_configs(tiny):
    dims = read_model_dims(tiny)
    assert dims.context_dim == 64 and dims.clip_width == 48 and dims.clip_tokens == 257
    assert dims == TINY.dims


@pytest.mark.skipif(not HAS_FACE_PARTS, reason="tiny face models / portraits writers not there yet")
def test_bundle_is_a_complete_model_folder(tiny):
    assert ModelPaths.from_folder(tiny.root).problems() == []
    assert tiny.has_imr


def test_tokenizer_round_trip_pad_truncate(tmp_path, tokenizer):
    vocab = json.loads((write_clip_tokenizer(tmp_path / "tok") / "vocab.json").read_text())
    eos = vocab["<|endoftext|>"]
    assert eos == max(vocab.values()) == len(vocab) - 1
    assert vocab["<|startoftext|>"] == eos - 1
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == eos
    assert tokenizer.model_max_length == 77
    text = "a photo of a woman in a happy expression, facing up"
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == eos - 1
    n = ids.index(eos)
    assert all(i == eos for i in ids[n:])  # padded with end-of-text
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ,", ",") == text
    # Common words are single tokens thanks to the merges.
    assert tokenizer.convert_ids_to_tokens(ids[1:4]) == ["a</w>", "photo</w>", "of</w>"]
    long = tokenizer("word " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[-1] == eos and eos not in long[:-1]


def test_text_encoder_pooled_is_final_norm_at_eos(tiny, tokenizer):
    enc = load_text_encoder(tiny, torch.float32)
    prompts = ["a photo of a man", "in a neutral expression, in front view", "x " * 100]
    ids = torch.tensor(tokenizer(prompts, padding="max_length", max_length=77, truncation=True).input_ids)
    hidden, pooled = enc(ids)

    from transformers import CLIPTextModel

    ref = CLIPTextModel.from_pretrained(str(tiny.base / "text_encoder"))
    with torch.no_grad():
        pre_norm = ref(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        normed = ref.final_layer_norm(pre_norm)
    eos_pos = [row.index(tokenizer.eos_token_id) for row in ids.tolist()]
    assert eos_pos[2] == 76
    expected = torch.stack([normed[b, p] for b, p in enumerate(eos_pos)])
    torch.testing.assert_close(hidden, normed)
    torch.testing.assert_close(pooled, expected)
    assert hidden.shape == (3, 77, 64) and pooled.shape == (3, 64)


def test_image_encoder_is_penultimate_hidden_state(tiny):
    enc = load_image_encoder(tiny, torch.float32)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    out = enc(pixels)

    from transformers import CLIPVisionModelWithProjection

    ref = CLIPVisionModelWithProjection.from_pretrained(str(tiny.image_encoder))
    with torch.no_grad():
        expected = ref(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert out.shape == (2, 257, 48)
    torch.testing.assert_close(out, expected)


def test_vae_decoder_matches_decode_clamped(tiny):
    dec = load_vae_decoder(tiny, torch.float32)
    latent = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(2)) * 0.3
    image = dec(latent)

    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(tiny.base / "vae"))
    with torch.no_grad():
        expected = vae.decode(latent).sample.clamp(-1, 1)
    assert image.shape == (1, 3, 64, 96)
    torch.testing.assert_close(image, expected)
    assert float(image.abs().max()) <= 1.0


def test_vae_override_points_elsewhere(tiny, tmp_path):
    other = tmp_path / "vae"
    shutil.copytree(tiny.base / "vae", other)
    with torch.no_grad():
        dec = load_vae_decoder(ModelPaths.from_folder(tiny.root, vae=other), torch.float32)
    (other / "config.json").unlink()
    with pytest.raises(ModelFolderError, match="config.json"):
        load_vae_decoder(ModelPaths.from_folder(tiny.root, vae=other), torch.float32)
    assert isinstance(dec, torch.nn.Module)


def _layer_width(name: str, channels: tuple[int, ...]) -> int:
    parts = name.split(".")
    if parts[0] == "mid_block":
        return channels[-1]
    block = int(parts[1])
    return channels[block] if parts[0] == "down_blocks" else channels[::-1][block]


def test_saa_keys_follow_attn_processors(tiny):
    unet = load_base_unet(tiny, torch.float32)
    sd = torch.load(tiny.saa, weights_only=True)
    assert set(sd) == {"proj_module", "SAA_module"}
    saa = sd["SAA_module"]
    c, r = TINY.context_dim, TINY.lora_rank
    expected = {}
    names = list(unet.attn_processors)
    assert len(names) == 20  # (3 down + 1 mid + 3x2 up) transformer blocks, attn1 and attn2 each
    for i, name in enumerate(names):
        width = _layer_width(name, TINY.unet_channels)
        cross = ".attn2." in name
        kv_in = c if cross else width
        for proj, n_in in (("q", width), ("k", kv_in), ("v", kv_in), ("out", width)):
            expected[f"{i}.to_{proj}_lora.down.weight"] = (r, n_in)
            expected[f"{i}.to_{proj}_lora.up.weight"] = (width, r)
        if cross:
            expected[f"{i}.to_k_ip.weight"] = (width, c)
            expected[f"{i}.to_v_ip.weight"] = (width, c)
    assert {k: tuple(v.shape) for k, v in saa.items()} == expected
    ups = [v for k, v in saa.items() if "up.weight" in k or "_ip." in k]
    assert all(v.abs().sum() > 0 for v in ups)


def test_projector_imr_and_keypoint_keys(tiny):
    proj = torch.load(tiny.saa, weights_only=True)["proj_module"]
    assert proj["proj.0.weight"].shape == (1024, 512)
    assert proj["proj.2.weight"].shape == (4 * 64, 1024)
    assert proj["perceiver_resampler.proj_in.weight"].shape == (64, 48)
    assert proj["perceiver_resampler.layers.3.0.to_kv.weight"].shape == (128, 64)
    assert proj["perceiver_resampler.layers.3.1.3.weight"].shape == (64, 256)
    assert "perceiver_resampler.layers.4.0.to_q.weight" not in proj
    imr = torch.load(tiny.imr, weights_only=True)
    assert imr["feature_fusion.1.weight"].shape == (128, 128)
    assert imr["feature_fusion.4.weight"].shape == (512, 128)
    assert imr["disentangleNet.0.1.to_kv.weight"].shape == (256, 128)
    assert "disentangleNet.0.1.norm2.weight" not in imr and "entangleNet.0.0.norm2.weight" in imr

    # The keypoint encoder maps a 96x96 raster to C x 1 x 1 with the release's block structure:
    # run it here with plain conv + inference BatchNorm (+ residual where shapes allow it).
    kp = torch.load(tiny.keypoint_encoder, weights_only=True)
    x = torch.randn(1, 1, 96, 96)
    blocks = sorted({tuple(map(int, k.split(".")[1:3])) for k in kp})
    for b, j in blocks:
        p = f"blocks.{b}.{j}.conv_block"
        w = kp[f"{p}.0.weight"]
        k = w.shape[-1]
        stride = 2 if (j == 0 and 1 <= b <= 5) else 1
        pad = 0 if b == 6 else k // 2
        y = torch.nn.functional.conv2d(x, w, kp[f"{p}.0.bias"], stride=stride, padding=pad)
        y = torch.nn.functional.batch_norm(
            y, kp[f"{p}.1.running_mean"], kp[f"{p}.1.running_var"], kp[f"{p}.1.weight"], kp[f"{p}.1.bias"]
        )
        x = torch.relu(y + x if j > 0 and b <= 5 else y)
    assert x.shape == (1, 64, 1, 1) and torch.isfinite(x).all()
    assert [j for b, j in blocks if 1 <= b <= 5].count(0) == 5
    assert (kp["blocks.1.0.conv_block.1.running_var"] != 1).all()


def test_generators_are_deterministic():
    a = bundle_mod.imr_state(torch.Generator().manual_seed(5))
    b = bundle_mod.imr_state(torch.Generator().manual_seed(5))
    c = bundle_mod.imr_state(torch.Generator().manual_seed(6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["proj_in.weight"], c["proj_in.weight"])


def test_second_call_reuses_and_incomplete_is_rebuilt(tiny):
    root = tiny.root
    sentinel = root / "base" / "sentinel.txt"
    sentinel.write_text("kept")
    again = _write(root)
    assert again == tiny and sentinel.exists()  # reused, not rewritten

    (root / MARKER).unlink()
    rebuilt = _write(root)
    assert not sentinel.exists()  # the incomplete bundle was replaced
    assert json.loads((root / MARKER).read_text())["seed"] == 0
    assert rebuilt == tiny
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".tiny.")]  # no temp folder left
    assert load_base_unet(rebuilt, torch.float32) is not None


def test_foreign_folder_is_never_replaced(tmp_path):
    foreign = tmp_path / "my-models"
    foreign.mkdir()
    (foreign / "precious.safetensors").write_bytes(b"x")
    with pytest.raises(ModelFolderError, match="not a tiny bundle"):
        write_tiny_bundle(foreign)
    assert (foreign / "precious.safetensors").exists()
    assert bundle_mod.default_tiny_dir().name == "tiny-bundle"


def test_missing_unet_is_a_clear_error(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny.root, broken)
    shutil.rmtree(broken / "base" / "unet")
    paths = ModelPaths.from_folder(broken)
    with pytest.raises(ModelFolderError, match=r"base[/\\]unet"):
        load_base_unet(paths, torch.float32)
    with pytest.raises(ModelFolderError, match=r"unet[/\\]config.json"):
        read_model_dims(paths)
    assert any("unet" in p for p in paths.problems())


# --- single-file (original LDM layout) checkpoints ----------------------------------------------

_RESNET_TO_LDM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}


def _unet_to_ldm(sd: dict, layers: int, levels: int) -> dict:
    """Diffusers UNet keys -> the original SD ``model.diffusion_model.`` layout, written from the
    LDM module structure (input_blocks / middle_block / output_blocks)."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "time_embedding":
            new = "time_embed." + {"linear_1": "0", "linear_2": "2"}[parts[1]] + "." + parts[2]
        elif parts[0] in ("conv_in", "conv_norm_out", "conv_out"):
            new = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}[parts[0]]
            new += "." + parts[1]
        elif parts[0] == "down_blocks":
            b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if kind == "downsamplers":
                new = f"input_blocks.{1 + b * (layers + 1) + layers}.0.op." + rest[-1]
            else:
                n = 1 + b * (layers + 1) + j
                rest = [_RESNET_TO_LDM.get(rest[0], rest[0])] + rest[1:] if kind == "resnets" else rest
                new = f"input_blocks.{n}.{0 if kind == 'resnets' else 1}." + ".".join(rest)
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), parts[3:]
            if kind == "resnets":
                new = f"middle_block.{2 * j}." + ".".join([_RESNET_TO_LDM.get(rest[0], rest[0])] + rest[1:])
            else:
                new = "middle_block.1." + ".".join(rest)
        elif parts[0] == "up_blocks":
            b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            has_attn = b > 0
            if kind == "upsamplers":
                new = f"output_blocks.{b * (layers + 1) + layers}.{2 if has_attn else 1}.conv." + rest[-1]
            else:
                n = b * (layers + 1) + j
                rest = [_RESNET_TO_LDM.get(rest[0], rest[0])] + rest[1:] if kind == "resnets" else rest
                new = f"output_blocks.{n}.{0 if kind == 'resnets' else 1}." + ".".join(rest)
        else:
            raise AssertionError(f"unexpected UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(sd: dict, levels: int) -> dict:
    vae_res = {"conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        coder = parts[0]
        if coder in ("quant_conv", "post_quant_conv"):
            new = key
        elif parts[1] in ("conv_in", "conv_out"):
            new = key
        elif parts[1] == "conv_norm_out":
            new = f"{coder}.norm_out.{parts[2]}"
        elif parts[1] == "mid_block":
            kind, j, rest = parts[2], int(parts[3]), parts[4:]
            if kind == "resnets":
                new = f"{coder}.mid.block_{j + 1}." + ".".join(rest)
            else:
                new = f"{coder}.mid.attn_1.{attn[rest[0]]}.{rest[-1]}"
                if value.ndim == 2:
                    value = value[:, :, None, None]  # LDM's attention uses 1x1 convs
        else:
            i, kind, j, rest = int(parts[2]), parts[3], parts[4], parts[5:]
            level = i if coder == "encoder" else levels - 1 - i
            group = "down" if coder == "encoder" else "up"
            if kind == "resnets":
                new = f"{coder}.{group}.{level}.block.{j}." + ".".join([vae_res.get(rest[0], rest[0])] + rest[1:])
            else:
                new = f"{coder}.{group}.{level}.{'downsample' if coder == 'encoder' else 'upsample'}.conv.{rest[-1]}"
        out["first_stage_model." + new] = value
    return out


@pytest.fixture(scope="module")
def single_file(tiny, tmp_path_factory) -> ModelPaths:
    """The tiny base as one LDM-layout .safetensors, with its configs beside it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    folder = tmp_path_factory.mktemp("single")
    unet = UNet2DConditionModel.from_pretrained(str(tiny.base / "unet"))
    vae = AutoencoderKL.from_pretrained(str(tiny.base / "vae"))
    text = CLIPTextModel.from_pretrained(str(tiny.base / "text_encoder"))
    state = _unet_to_ldm(unet.state_dict(), layers=1, levels=4)
    state |= _vae_to_ldm(vae.state_dict(), levels=4)
    for key, value in text.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "tiny-sd15.safetensors"))
    for part in ("unet", "vae", "text_encoder"):
        (folder / part).mkdir()
        shutil.copy(tiny.base / part / "config.json", folder / part / "config.json")
    return ModelPaths.from_folder(tiny.root, base=folder / "tiny-sd15.safetensors", tokenizer=tiny.base / "tokenizer")


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=key)


def test_single_file_base_loads_offline(tiny, single_file):
    assert single_file.base_is_single_file
    if HAS_FACE_PARTS:
        assert single_file.problems() == []
    _assert_same_weights(load_base_unet(single_file, torch.float32), load_base_unet(tiny, torch.float32))
    _assert_same_weights(load_vae_decoder(single_file, torch.float32), load_vae_decoder(tiny, torch.float32))
    _assert_same_weights(load_text_encoder(single_file, torch.float32), load_text_encoder(tiny, torch.float32))
    assert read_model_dims(single_file) == TINY.dims


def test_single_file_without_configs_uses_sd15_and_checks_keys(tiny, single_file, tmp_path):
    lone = tmp_path / "lone.safetensors"
    shutil.copy(single_file.base, lone)
    paths = ModelPaths.from_folder(tiny.root, base=lone, tokenizer=tiny.base / "tokenizer")
    dims = read_model_dims(paths)
    assert dims.context_dim == 768 and dims.latent_channels == 4  # the bundled SD1.5 configs
    with pytest.raises(ModelFolderError, match="lone.safetensors"):
        load_base_unet(paths, torch.float32)  # tiny weights do not fit the SD1.5 config

    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(single_file.base)).items() if not k.startswith("model.diffusion_model.")}
    no_unet = single_file.base.parent / "no-unet.safetensors"
    save_file(state, str(no_unet))
    with pytest.raises(ModelFolderError, match="no UNet weights"):
        load_base_unet(ModelPaths.from_folder(tiny.root, base=no_unet, tokenizer=tiny.base / "tokenizer"), torch.float32)


def test_malformed_parts_are_clear_errors(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny.root, broken)
    weights = broken / "base" / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    paths = ModelPaths.from_folder(broken)
    with pytest.raises(ModelFolderError, match=r"base[/\\]vae"):
        load_vae_decoder(paths, torch.float32)

    text_file = broken / "base" / "text_encoder" / "model.safetensors"
    state = load_file(str(text_file))
    dropped = next(k for k in state if k.endswith("final_layer_norm.weight"))
    del state[dropped]
    save_file(state, str(text_file), metadata={"format": "pt"})
    with pytest.raises(ModelFolderError, match="missing weights.*final_layer_norm"):
        load_text_encoder(paths, torch.float32)

    (broken / "image_encoder" / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match=r"image_encoder[/\\]config.json"):
        read_model_dims(paths)
