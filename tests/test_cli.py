"""The command line end to end on the tiny bundle."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dynamicid_rt.cli import main
from dynamicid_rt import parse_parameters, read_parameters


def test_generate_writes_png_with_parameters(tiny_bundle, samples, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO)
    out = tmp_path / "two.png"
    code = main([
        "generate", "--models", str(tiny_bundle),
        "--face", str(samples / "person_a.png"), "--face", str(samples / "person_b.png"),
        "--face-prompt", "", "--face-prompt", "in a surprised expression", "--emotion", "sad",
        "--box", "0,0,1,0.5", "--box", "0,0.5,1,1",
        "--prompt", "two people", "--size", "256x256", "--steps", "2", "--seed", "9", "--sampler", "euler_ancestral",
        "--out", str(out),
    ])
    assert code == 0
    assert Image.open(out).size == (256, 256)
    params = parse_parameters(read_parameters(out))
    assert params["seed"] == 9 and params["sampler"] == "euler_a" and params["face_prompts"][1] == "in a surprised expression"
    assert "source face prompt: 'in a sad expression, in front view'" in caplog.text  # --emotion of person 1


def test_generate_bad_input_exit_code_and_message(tiny_bundle, samples, tmp_path, caplog):
    out = tmp_path / "never.png"
    code = main(["generate", "--models", str(tiny_bundle), "--face", str(samples / "person_a.png"),
                 "--box", "0,0,1,0.5", "--box", "0,0.5,1,1", "--prompt", "x", "--size", "256x256", "--out", str(out)])
    assert code == 1 and "2 boxes for 1 identities" in caplog.text
    assert not out.exists()
    code = main(["generate", "--models", str(tiny_bundle), "--face", str(samples / "no_face.png"), "--prompt", "x", "--out", str(out)])
    assert code == 1 and "no face" in caplog.text
    code = main(["generate", "--models", str(tmp_path / "missing"), "--prompt", "x"])
    assert code == 1 and "does not exist" in caplog.text


def test_inspect_checkpoint_and_folder(tiny_bundle, capsys):
    assert main(["inspect", str(tiny_bundle / "dynamicid" / "SAA.bin")]) == 0
    text = capsys.readouterr().out
    assert "LoRA rank 4" in text and "loads: yes" in text
    assert main(["inspect", str(tiny_bundle)]) == 0
    assert "usable: yes" in capsys.readouterr().out


def test_inspect_reports_broken_checkpoint(tiny_bundle, tmp_path, capsys, caplog):
    broken = tmp_path / "SAA.bin"
    broken.write_bytes((tiny_bundle / "dynamicid" / "SAA.bin").read_bytes()[:1000])
    assert main(["inspect", str(broken)]) == 1
    assert "loads: NO" in capsys.readouterr().out


def test_doctor_lists_what_a_folder_lacks(tiny_bundle, tmp_path, capsys):
    assert main(["doctor", "--models", str(tiny_bundle)]) == 0
    assert "onnxruntime providers" in capsys.readouterr().out
    (tmp_path / "models").mkdir()
    assert main(["doctor", "--models", str(tmp_path / "models")]) == 1
    assert "SAA checkpoint" in capsys.readouterr().out


def test_demo_console_script_on_a_fresh_folder(tmp_path):
    """`dynamicid-rt demo` as a user runs it: builds the bundle, then writes a two-person image."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    out = tmp_path / "demo.png"
    proc = subprocess.run(
        [sys.executable, "-m", "dynamicid_rt.cli", "demo", "--models", str(tmp_path / "tiny"), "--out", str(out), "--steps", "4"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "TINY RANDOM WEIGHTS" in proc.stdout
    image = np.asarray(Image.open(out))
    assert image.shape == (512, 512, 3) and image.std() > 0
    assert "DynamicID identities: 2" in read_parameters(out)


def test_sampler_option_takes_other_tools_names(capsys):
    from dynamicid_rt.cli import build_parser

    base = ["generate", "--prompt", "x"]
    parser = build_parser()
    assert parser.parse_args(base).sampler == "default"
    for spelling, ours in (("DPM++ 2M Karras", "dpmpp_2m_karras"), ("Euler a", "euler_a"), ("k_euler", "euler"), ("PLMS", "pndm")):
        assert parser.parse_args(base + ["--sampler", spelling]).sampler == ours
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(base + ["--sampler", "heun"])
    assert exc.value.code == 2 and "unknown sampler 'heun'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "one of: default, ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, pndm" in help_text
