"""The build-machine story at full size (``python -m pytest -m slow tests/test_tensorrt_rtx_full_size.py -s``):
TensorRT-RTX builds the full-SD1.5-width SAA UNet (random weights, fp16 with fp32 islands, the
contract's dynamic profile) on this CPU-only machine. The build runs in its own process, whose
wall time and peak RSS are printed (docs/benchmarks.md quotes them)."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynamicid_rt.backends import probes

pytestmark = pytest.mark.slow

if not probes.installed("tensorrt_rtx_bindings"):
    pytest.skip("needs TensorRT-RTX: pip install 'dynamicid-rt[tensorrt-rtx]'", allow_module_level=True)

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# The child: build one plan with the project's builder and say how long it took.
BUILD = """
import json, sys, time
from pathlib import Path
from dynamicid_rt.contract import ENGINES, ModelDims
from dynamicid_rt.engines.builder import BuildSettings, build_plan
from dynamicid_rt.engines.library import load
from dynamicid_rt.engines.profiles import engine_profile
lib = load("tensorrt-rtx")
start = time.perf_counter()
plan, _ = build_plan(lib, Path(sys.argv[1]), "fp16", engine_profile(ENGINES["unet"], ModelDims()), BuildSettings(), desc="unet")
Path(sys.argv[2]).write_bytes(plan)
print(json.dumps({"seconds": time.perf_counter() - start, "version": lib.version}))
"""


def test_full_width_unet_fp16_builds_without_a_gpu(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import bench_onnxruntime as sd15  # the SD1.5-shaped SAA UNet with random weights

    from dynamicid_rt.contract import ENGINES, ModelDims
    from dynamicid_rt.export.onnx_export import convert_fp16, export_engine

    start = time.perf_counter()
    unet, _vae = sd15.build_modules()
    export_engine(unet, ENGINES["unet"], ModelDims(), tmp_path / "unet.onnx")
    del unet, _vae
    convert_fp16(tmp_path / "unet.onnx", tmp_path / "unet-fp16.onnx")
    prepared = time.perf_counter() - start

    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(tmp_path / "unet-fp16.onnx"), str(tmp_path / "unet.plan")],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    plan_gib = (tmp_path / "unet.plan").stat().st_size / 2**30
    print(
        f"\nTensorRT-RTX {result['version']}: full-width SD1.5 SAA UNet fp16 plan built on the CPU in "
        f"{result['seconds']:.0f} s, peak RSS {peak_gib:.1f} GiB, plan {plan_gib:.2f} GiB "
        f"(export + fp16 conversion before it: {prepared:.0f} s)"
    )
    assert plan_gib > 0.5  # the fp16 weights of an SD1.5 UNet alone are ~1.7 GB
