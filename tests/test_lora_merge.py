"""User LoRAs merged by the torch backend against diffusers' ``load_lora_weights`` + ``fuse_lora``,
on random kohya (alpha, LoCon) and diffusers/PEFT files; switching, undo and order independence."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.loaders import StableDiffusionLoraLoaderMixin  # noqa: E402
from transformers import CLIPTextModel  # noqa: E402

from dynamicid_rt.errors import CheckpointError, RequestError  # noqa: E402
from dynamicid_rt.modelfiles.lora import LoraRef, check_lora_refs, parse_lora_arg, read_lora  # noqa: E402
from lora_files import write_kohya, write_kohya_ldm, write_peft  # noqa: E402

TOL = 1e-5


class _Diffusers(StableDiffusionLoraLoaderMixin):
    """The two components StableDiffusionPipeline's LoRA loader touches."""

    hf_device_map = None

    def __init__(self, unet, text_encoder) -> None:
        self.unet, self.text_encoder = unet, text_encoder

    @property
    def components(self):
        return {"unet": self.unet, "text_encoder": self.text_encoder}


def _base(tiny_bundle: Path):
    base = tiny_bundle / "base"
    return UNet2DConditionModel.from_pretrained(base / "unet"), CLIPTextModel.from_pretrained(base / "text_encoder")


def diffusers_deltas(tiny_bundle: Path, files: list[Path], scale: float) -> dict[str, dict[str, torch.Tensor]]:
    """What diffusers' fused LoRAs add to each weight, per part."""
    unet, text = _base(tiny_bundle)
    before = {"unet": unet.state_dict(), "text_encoder": text.state_dict()}
    before = {p: {k: v.clone() for k, v in sd.items()} for p, sd in before.items()}
    pipe = _Diffusers(unet, text)
    names = [f"l{i}" for i in range(len(files))]
    for name, f in zip(names, files):
        # unet_config: diffusers maps LDM block names (kohya's input_blocks_...) only when given it, as its SDXL loader does.
        pipe.load_lora_weights(str(f), adapter_name=name, unet_config=unet.config)
    pipe.set_adapters(names)  # stacked: every adapter active, weight 1
    pipe.fuse_lora(lora_scale=scale, adapter_names=names)
    pipe.unload_lora_weights()
    after = {"unet": unet.state_dict(), "text_encoder": text.state_dict()}
    return {p: {k: after[p][k] - before[p][k] for k in before[p]} for p in before}


@pytest.fixture(scope="module")
def lora_files(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    unet, text = _base(tiny_bundle)
    return {
        "kohya_conv": write_kohya(folder / "kohya_conv.safetensors", unet, text, seed=1, alpha=2.0, conv=True),
        "kohya_plain": write_kohya(folder / "kohya_plain.safetensors", unet, text, seed=2, alpha=None, rank=3),
        "peft": write_peft(folder / "peft.safetensors", unet, text, seed=3),
        "kohya_ldm_bf16": write_kohya_ldm(folder / "kohya_ldm_bf16.safetensors", unet, text, seed=4),
    }


@pytest.fixture(scope="module")
def backend(tiny_bundle):
    from dynamicid_rt.backends.torch_backend import TorchBackend
    from dynamicid_rt.modelfiles.paths import ModelPaths

    b = TorchBackend(ModelPaths.from_folder(tiny_bundle), device="cpu", precision="fp32")
    yield b
    b.close()


def _weights(backend) -> dict[str, dict[str, torch.Tensor]]:
    roots = {"unet": backend.module("unet").unet, "text_encoder": backend.module("text_encoder").model}
    return {p: {k: v.detach().clone() for k, v in r.state_dict().items()} for p, r in roots.items()}


def _max_error(ours, base, ref) -> float:
    worst = 0.0
    for part in ref:
        for key, delta in ref[part].items():
            if key in base[part]:
                worst = max(worst, float((ours[part][key] - base[part][key] - delta).abs().max()))
    return worst


@pytest.mark.parametrize(
    ("names", "scale"),
    [(["kohya_conv"], 0.7), (["kohya_plain"], 1.3), (["peft"], 0.7), (["kohya_conv", "peft"], 0.7), (["kohya_conv", "peft"], 1.3),
     (["kohya_ldm_bf16"], 0.8), (["kohya_ldm_bf16", "peft"], 1.0)],
)
def test_merge_matches_diffusers(backend, lora_files, tiny_bundle, names, scale):
    backend.set_loras([])
    base = _weights(backend)
    files = [lora_files[n] for n in names]
    backend.set_loras([LoraRef(f, scale) for f in files])
    ours = _weights(backend)
    ref = diffusers_deltas(tiny_bundle, files, scale)
    changed = sum(int(d.abs().max() > 0) for part in ref.values() for d in part.values())
    assert changed > 10 and any(d.abs().max() > 0 for d in ref["text_encoder"].values())
    assert _max_error(ours, base, ref) <= TOL


def test_switching_undoes_and_order_does_not_matter(backend, lora_files):
    backend.set_loras([])
    base = _weights(backend)
    a, b = LoraRef(lora_files["kohya_conv"], 0.8), LoraRef(lora_files["peft"], 0.5)
    backend.set_loras([a, b])
    ab = _weights(backend)
    backend.set_loras([b, a])
    ba = _weights(backend)
    backend.set_loras([])
    back = _weights(backend)
    for part in base:
        for key in base[part]:
            assert torch.equal(ab[part][key], ba[part][key]), key
            assert torch.equal(back[part][key], base[part][key]), key


def test_bad_loras_fail_in_one_line(backend, lora_files, tmp_path, caplog):
    from safetensors.numpy import save_file

    with pytest.raises(RequestError, match="does not exist"):
        check_lora_refs([(tmp_path / "missing.safetensors", 1.0)])
    for bad in (float("nan"), -0.5):
        with pytest.raises(RequestError, match="finite number >= 0"):
            check_lora_refs([(lora_files["peft"], bad)])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        read_lora(garbage)
    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_x.hada_w1_a": np.zeros((2, 2), np.float32)}, str(loha))
    with pytest.raises(CheckpointError, match="LoHa"):
        read_lora(loha)
    lokr = tmp_path / "lokr.safetensors"
    save_file({"lora_unet_x.lokr_w1": np.zeros((2, 2), np.float32)}, str(lokr))
    with pytest.raises(CheckpointError, match="LoKr"):
        read_lora(lokr)
    # An SDXL-sized layer: the first layer whose shape does not fit is named.
    sdxl = tmp_path / "sdxl.safetensors"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{key}.lora_down.weight": np.zeros((4, 640), np.float32), f"{key}.lora_up.weight": np.zeros((640, 4), np.float32)}, str(sdxl))
    with pytest.raises(CheckpointError, match="attn1_to_q has shape .*another base model"):
        backend.set_loras([LoraRef(sdxl)])
    nothing = tmp_path / "nothing.safetensors"
    save_file({"lora_unet_no_such_layer.lora_down.weight": np.zeros((4, 8), np.float32),
               "lora_unet_no_such_layer.lora_up.weight": np.zeros((8, 4), np.float32)}, str(nothing))
    with pytest.raises(CheckpointError, match="none of its 1 layers match"):
        backend.set_loras([LoraRef(nothing)])
    partly = tmp_path / "partly.safetensors"
    from safetensors.numpy import load_file

    save_file({**load_file(str(lora_files["kohya_plain"])), **load_file(str(nothing))}, str(partly))
    with caplog.at_level(logging.WARNING):
        backend.set_loras([LoraRef(partly)])
    assert "1 of" in caplog.text and "match no module" in caplog.text
    backend.set_loras([])


def test_parse_lora_arg():
    assert parse_lora_arg("style.safetensors:0.8") == LoraRef(Path("style.safetensors"), 0.8)
    assert parse_lora_arg("style.safetensors") == LoraRef(Path("style.safetensors"), 1.0)
    assert parse_lora_arg("C:\\loras\\x.safetensors").path == Path("C:\\loras\\x.safetensors")
    assert parse_lora_arg("C:\\loras\\x.safetensors:0.5").scale == 0.5
