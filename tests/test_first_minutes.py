"""The first ten minutes: step progress with the time left, help that names the folder's parts,
and the same part options on every command that opens a model folder."""
from __future__ import annotations

import logging

import pytest

from dynamicid_rt.cli import build_parser


def test_step_progress_off_a_terminal_logs_the_time_left(caplog):
    from types import SimpleNamespace

    from dynamicid_rt.cli.step_progress import step_progress

    with caplog.at_level(logging.INFO, logger="dynamicid_rt.cli"), step_progress() as progress:
        for step in range(1, 21):
            progress(SimpleNamespace(step=step, total=20, elapsed=step * 3.0))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[0] == "denoising: step 2/20, 6.0 s, 54 s left"
    assert lines[-1] == "denoising: step 20/20, 60.0 s, 0 s left"


@pytest.mark.parametrize("command", ["generate", "serve", "build-engines", "inspect", "doctor"])
def test_every_model_command_takes_every_part_option_and_no_spec_jargon(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    for flag in ("--base", "--vae", "--tokenizer", "--image-encoder", "--saa", "--projector", "--imr", "--keypoint-encoder"):
        assert flag in text, (command, flag)
    assert "SPEC" not in text
