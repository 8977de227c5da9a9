"""Bad LoRA files and arguments are refused in one line, naming the file and the layer, before
any model is loaded: files written here (bf16 kohya, rank 0, alpha of shape (0,), up/down that do
not fit, NaN, inf alpha, SDXL-shaped, matching nothing), paths that are no files, pickles, strict
scales; and the short hash never blocks on a device or FIFO."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from dynamicid_rt import Request
from dynamicid_rt.errors import CheckpointError, DynamicIDError, RequestError
from dynamicid_rt.modelfiles.lora import LoraRef, check_lora_refs, parse_lora_arg, read_lora
from dynamicid_rt.formats.lora_tags import lora_short_hash, prompt_loras, strip_lora_tags

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
LDM_Q = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"


def _unet_q_shape(tiny_bundle: Path) -> tuple[int, int]:
    from dynamicid_rt.modelfiles.lora_names import model_layer_shapes

    return model_layer_shapes(tiny_bundle / "base")["unet"]["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]


def _pair(key: str, down_shape, up_shape, alpha=None, fill=0.01) -> dict[str, np.ndarray]:
    out = {f"{key}.lora_down.weight": np.full(down_shape, fill, np.float32), f"{key}.lora_up.weight": np.full(up_shape, fill, np.float32)}
    if alpha is not None:
        out[f"{key}.alpha"] = np.asarray(alpha, np.float32)
    return out


@pytest.fixture(scope="module")
def bad_files(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_loras")
    out, c = {}, _unet_q_shape(tiny_bundle)[1]

    def write(name, tensors):
        save_file(tensors, str(folder / f"{name}.safetensors"))
        out[name] = folder / f"{name}.safetensors"

    write("rank0", _pair(Q, (0, c), (c, 0)))
    write("alpha_empty", _pair(Q, (4, c), (c, 4), alpha=np.zeros((0,), np.float32)))
    write("mismatched", _pair(Q, (4, c), (c, 3)))
    write("nan", {**_pair(Q, (4, c), (c, 4)), f"{Q}.lora_up.weight": np.full((c, 4), np.nan, np.float32)})
    write("inf_alpha", _pair(Q, (4, c), (c, 4), alpha=np.float32(np.inf)))
    write("huge_alpha", _pair(Q, (4, c), (c, 4), alpha=np.float32(3e38)))
    # SDXL: its second text encoder, and (without it) attention layers of SDXL's widths.
    write("sdxl_te2", {**_pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", (4, 1280), (1280, 4)), **_pair(LDM_Q, (4, c), (c, 4))})
    write("sdxl_shaped", _pair("lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k", (4, 2048), (c, 4)))
    write("no_match", _pair("lora_unet_no_such_block_0_proj", (4, 8), (8, 4)))
    return out


@pytest.fixture()
def no_model_load(tiny_bundle, monkeypatch):
    """A torch backend whose model loader fails the test if it is ever called."""
    from dynamicid_rt.backends import torch_backend
    from dynamicid_rt.modelfiles.paths import ModelPaths

    def loader(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the LoRA was refused")

    monkeypatch.setattr(torch_backend, "load_engine_module", loader)
    return torch_backend.TorchBackend(ModelPaths.from_folder(tiny_bundle), device="cpu", precision="fp32")


@pytest.mark.parametrize(("name", "message"), [
    ("rank0", "rank0.safetensors: layer .*attn1_to_q has lora_down \\(0, .*non-empty"),
    ("alpha_empty", "alpha_empty.safetensors: layer .*attn1_to_q: alpha has shape \\(0,\\)"),
    ("mismatched", "mismatched.safetensors: layer .*attn1_to_q: lora_up .* does not fit lora_down"),
    ("nan", "nan.safetensors: layer .*attn1_to_q: lora_up holds NaN"),
    ("inf_alpha", "inf_alpha.safetensors: layer .*attn1_to_q: alpha is inf"),
    ("huge_alpha", "huge_alpha.safetensors: layer .*attn1_to_q would change its weights"),
    ("sdxl_te2", "sdxl_te2.safetensors was made for SDXL"),
])
def test_damaged_files_are_refused_when_the_request_is_made(bad_files, no_model_load, name, message):
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as info:
        Request("a photo", loras=[(bad_files[name], 1.0)])
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=message):
        no_model_load.set_loras([LoraRef(bad_files[name])])
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(("name", "message"), [
    ("sdxl_shaped", "attn2_to_k has shape \\(\\d+, 2048\\) but the model's .*another base model"),
    ("no_match", "none of its 1 layers match this SD1.5 model"),
])
def test_files_that_do_not_fit_the_model_are_refused_before_it_loads(bad_files, no_model_load, caplog, name, message):
    start = time.perf_counter()
    with caplog.at_level("WARNING"), pytest.raises(CheckpointError, match=message):
        no_model_load.set_loras([LoraRef(bad_files[name])])
    assert time.perf_counter() - start < 2.0
    assert "match no module" not in caplog.text  # one error, not a warning and an error


def test_bf16_kohya_file_reads_in_its_own_dtype(tiny_bundle, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    c = _unet_q_shape(tiny_bundle)[1]
    values = torch.linspace(-1, 1, 4 * c).reshape(4, c).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    save_torch({f"{LDM_Q}.lora_down.weight": values, f"{LDM_Q}.lora_up.weight": values.T.contiguous(),
                f"{LDM_Q}.alpha": torch.tensor(2.0, dtype=torch.bfloat16)}, str(path))
    lora = read_lora(path)
    layer = lora.layers[("unet", LDM_Q.removeprefix("lora_unet_"))]
    np.testing.assert_array_equal(layer.down, values.float().numpy())
    assert layer.alpha == 2.0


def test_paths_that_are_not_lora_files_say_what_they_are(tmp_path):
    with pytest.raises(RequestError, match="is a folder"):
        check_lora_refs([(tmp_path, 1.0)])
    with pytest.raises(RequestError, match="not a regular file"):
        check_lora_refs([("/dev/zero", 1.0)])
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(RequestError, match="not a regular file"):
        check_lora_refs([(fifo, 1.0)])
    for suffix in (".ckpt", ".pt"):
        pickled = tmp_path / f"style{suffix}"
        pickled.write_bytes(b"\x80\x04K\x01.")
        with pytest.raises(CheckpointError, match=f"the \\{suffix} format \\(a pickle\\) is not supported") as info:
            check_lora_refs([(pickled, 1.0)])
        assert "download it again" not in str(info.value)


def test_scales_are_plain_bounded_numbers(tmp_path, bad_files):
    named = tmp_path / "style:2"
    named.write_bytes(Path(bad_files["no_match"]).read_bytes())
    assert parse_lora_arg(str(named)) == LoraRef(named, 1.0)  # an existing file is taken whole
    assert parse_lora_arg(f"{named}:0.5") == LoraRef(named, 0.5)
    for text in ("style.safetensors:1_0", "style.safetensors:inf", "style.safetensors:nan"):
        with pytest.raises(RequestError, match="not a plain decimal number"):
            parse_lora_arg(text)
    assert parse_lora_arg("style.safetensors:1e-1").scale == pytest.approx(0.1)
    for scale in (1e30, 3.4e38, 10.5, -1.0, True):
        with pytest.raises(RequestError, match="scale"):
            check_lora_refs([(bad_files["no_match"], scale)])
    for bad in (None, 5, b"x.safetensors"):
        with pytest.raises(RequestError):
            parse_lora_arg(bad)


def _returns_within(seconds: float, call) -> object:
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(out=_capture(call)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call blocked"
    return box["out"]


def _capture(call):
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the test inspects what came out
        return exc


def test_short_hash_never_blocks_and_raises_project_errors(tmp_path):
    fifo = tmp_path / "hang.safetensors"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    for target in ("/dev/zero", fifo, loop, tmp_path, None, 5):
        out = _returns_within(2.0, lambda target=target: lora_short_hash(target))
        assert isinstance(out, DynamicIDError), (target, out)
    loop_out = _returns_within(2.0, lambda: lora_short_hash(loop))
    assert "symlink loop" in str(loop_out) and str(loop) in str(loop_out)
    for helper in (prompt_loras, strip_lora_tags):
        with pytest.raises(RequestError):
            helper(None)


def test_cli_refuses_an_empty_photo_before_loading_or_exporting(tiny_bundle, tmp_path, monkeypatch, caplog):
    from dynamicid_rt import Pipeline
    from dynamicid_rt.cli import main

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    monkeypatch.setattr(Pipeline, "load", classmethod(lambda *a, **k: pytest.fail("the model loaded before the photo was checked")))
    assert main(["generate", "--models", str(tiny_bundle), "--prompt", "x", "--face", str(empty), "--out", str(tmp_path / "o.png")]) == 1
    assert "empty.png" in caplog.text


def test_cli_refuses_a_bad_lora_before_loading(tiny_bundle, tmp_path, monkeypatch, caplog, bad_files):
    from dynamicid_rt import Pipeline
    from dynamicid_rt.cli import main

    monkeypatch.setattr(Pipeline, "load", classmethod(lambda *a, **k: pytest.fail("the model loaded before the LoRA was checked")))
    for name in ("nan", "rank0", "sdxl_te2"):
        caplog.clear()
        assert main(["generate", "--models", str(tiny_bundle), "--prompt", "x", "--lora", f"{bad_files[name]}:0.5",
                     "--out", str(tmp_path / "o.png")]) == 1
        assert f"{name}.safetensors" in caplog.text


def test_cli_refuses_a_lora_that_fits_nothing_before_loading(tiny_bundle, tmp_path, monkeypatch, caplog, bad_files):
    from dynamicid_rt import Pipeline
    from dynamicid_rt.cli import main

    monkeypatch.setattr(Pipeline, "load", classmethod(lambda *a, **k: pytest.fail("the model loaded before the LoRA was checked")))
    for name in ("no_match", "sdxl_shaped"):
        caplog.clear()
        assert main(["generate", "--models", str(tiny_bundle), "--prompt", "x", "--lora", str(bad_files[name]),
                     "--out", str(tmp_path / "o.png")]) == 1
        assert name in caplog.text and "match no module" not in caplog.text


def test_a_vae_of_the_wrong_shape_and_a_pickled_image_encoder_are_refused_before_any_export(tiny_bundle, tmp_path, monkeypatch):
    import shutil

    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file, save_file as save_np

    from dynamicid_rt.errors import ModelFolderError
    from dynamicid_rt.export import build_engines
    from dynamicid_rt.export import cache as export_cache
    from dynamicid_rt.modelfiles.paths import ModelPaths

    monkeypatch.setattr(export_cache, "_build_entry", lambda *a, **k: pytest.fail("an engine was exported before the check"))
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    vae = bundle / "base" / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(vae))
    key = "decoder.conv_in.weight"
    tensors[key] = np.zeros((tensors[key].shape[0], tensors[key].shape[1] + 4, *tensors[key].shape[2:]), np.float32)
    save_np(tensors, str(vae))
    with pytest.raises(ModelFolderError, match="decoder.conv_in.weight.*has shape"):
        build_engines(ModelPaths.from_folder(bundle), tmp_path / "engines", engines=["vae_decoder"])
    shutil.copy(tiny_bundle / "base" / "vae" / "diffusion_pytorch_model.safetensors", vae)
    encoder = next((bundle / "image_encoder").glob("*.safetensors"))
    encoder.unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Payload()}, bundle / "image_encoder" / "pytorch_model.bin")
    with pytest.raises(ModelFolderError, match="pytorch_model.bin.*(pickle|objects)"):
        build_engines(ModelPaths.from_folder(bundle), tmp_path / "engines2", engines=["image_encoder"])
