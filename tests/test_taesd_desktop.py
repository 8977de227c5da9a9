"""The desktop's one TAESD control: the settings form's "Fast decode" switch, offered only when the
loaded models have a taesd/ folder, turned on by the Fast (LCM, 4 steps) preset where it is, and
restored from a PNG's "VAE: taesd"."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import pytest  # noqa: E402

pytest.importorskip("PySide6", reason="the desktop app needs PySide6 (pip install 'dynamicid-rt[desktop]')")
pytest.importorskip("pytestqt", reason="the desktop tests need pytest-qt")

from dynamicid_rt import parse_parameters  # noqa: E402


def test_fast_decode_switch_follows_the_models_and_the_preset(qtbot):
    from dynamicid_rt.desktop.lora_panel import FAST_PRESET
    from dynamicid_rt.desktop.settings_form import SettingsForm

    form = SettingsForm()
    qtbot.addWidget(form)
    assert form.values()["decoder"] == "vae" and not form.fast_decode_check.isEnabled()  # nothing loaded yet
    assert form.apply(FAST_PRESET) == ["decoder"]  # no tiny autoencoder: the preset leaves the full VAE
    assert form.values()["decoder"] == "vae" and form.values()["steps"] == 4

    form.set_decoders(["vae", "taesd"])  # Pipeline.decoders of a folder with taesd/
    assert form.apply(FAST_PRESET) == [] and form.values()["decoder"] == "taesd"
    form.set_decoders(["vae"])  # other models loaded: the switch cannot stay on
    assert form.values()["decoder"] == "vae"

    form.set_decoders(["vae", "taesd"])
    assert form.apply(parse_parameters("a portrait\nSteps: 4, Sampler: LCM, VAE: taesd")) == []
    assert form.values()["decoder"] == "taesd"
