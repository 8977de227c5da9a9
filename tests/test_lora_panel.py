"""The desktop LoRA list: strengths into the request, the Fast (LCM) preset, a LoRA'd generation."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import pytest  # noqa: E402

pytest.importorskip("PySide6", reason="the desktop app needs PySide6 (pip install 'dynamicid-rt[desktop]')")
pytest.importorskip("pytestqt", reason="the desktop tests need pytest-qt")

from desktop_fixtures import _small, recorder, store, window  # noqa: E402,F401
from lora_files import write_kohya  # noqa: E402


@pytest.fixture(scope="module")
def lcm_lora(tiny_bundle, tmp_path_factory):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    base = tiny_bundle / "base"
    unet, text = UNet2DConditionModel.from_pretrained(base / "unet"), CLIPTextModel.from_pretrained(base / "text_encoder")
    return write_kohya(tmp_path_factory.mktemp("loras") / "lcm-lora-sdv1-5.safetensors", unet, text, seed=9)


def test_lora_list_and_fast_preset(qtbot, window, lcm_lora):
    win = window
    _small(win, steps=3)
    assert not win.lora_panel.fast_button.isVisibleTo(win)
    win.lora_panel.add(lcm_lora, 0.7)
    assert win.lora_panel.fast_button.isVisibleTo(win)  # an LCM LoRA is listed
    win.lora_panel.fast_button.click()
    request = win.build_request()
    assert [(p, round(s, 2)) for p, s in request.loras] == [(lcm_lora, 0.7)]
    assert (request.sampler, request.steps, request.guidance) == ("lcm", 4, 1.0)
    with qtbot.waitSignal(win.runEnded, timeout=60000):
        assert win.generate()
    assert win.error_label.text() == "" and win.gallery_model.rowCount() >= 1
    win.lora_panel.set_loras([])
    assert win.build_request().loras == [] and not win.lora_panel.fast_button.isVisibleTo(win)


def test_restore_finds_loras_by_name_and_hash(qtbot, window, lcm_lora, tmp_path):
    import hashlib
    import shutil

    win = window
    other = shutil.copy(lcm_lora, lcm_lora.with_name("other.safetensors"))  # lists the folder
    win.lora_panel.set_loras([(other, 1.0)])
    data = lcm_lora.read_bytes()
    right = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]
    prompt = "a portrait <lora:lcm-lora-sdv1-5:0.5> <lora:missing:1>"
    win.apply_parameters({"prompt": prompt, "lora_hashes": {"lcm-lora-sdv1-5": right}})
    assert [(p.name, s) for p, s in win.lora_panel.loras()] == [("lcm-lora-sdv1-5.safetensors", 0.5)]
    # A tag without a LoRA is said under the prompt, for as long as it has none (round 4, item 6).
    assert "<lora:missing> is not in the LoRA list" in win.form.prompt_note.text()
    win.lora_panel.set_loras([(other, 1.0)])
    win.apply_parameters({"prompt": prompt, "lora_hashes": {"lcm-lora-sdv1-5": "0" * 12}})
    assert "another hash" in win.error_label.text() and win.lora_panel.loras() == []
