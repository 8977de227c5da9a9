"""benchmarks/gpu_check.py on a machine without a GPU: one clear message and exit status 2, before
anything is built (the check itself runs only on an NVIDIA machine)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dynamicid_rt.backends import probes

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(probes.cuda_device_count() > 0, reason="this machine has a GPU: run the check itself")
def test_without_a_gpu_the_check_stops_at_once_saying_why(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("gpu_check.py needs an NVIDIA GPU and its driver, and sees none here")
    assert len(done.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written
