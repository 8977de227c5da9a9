"""Concurrency: the first generations of a fresh pipeline are thread-safe on every backend, and
processes sharing one cache folder never both build the same entry."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

# Runs in a fresh interpreter: the race is in first-time (lazy) imports and loads, which the test
# process has long done.
TWO_THREADS = """
import sys, threading
import numpy as np
from dynamicid_rt import Pipeline, Request

pipe = Pipeline.load(sys.argv[1], backend=sys.argv[2], device="cpu", cache_dir=sys.argv[3], onnx_cache=sys.argv[4])
images, errors = {}, []

def generate(k):
    try:
        person = pipe.encode_identity(sys.argv[5])
        result = pipe.generate(Request(prompt="a photo", identities=[person], steps=2, width=256, height=256, seed=5))
        images[k] = np.asarray(result.images[0])
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=generate, args=(k,)) for k in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not errors, errors
generate("after")  # the same request once more, alone
assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images["after"])
print("OK")
"""


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_two_threads_on_a_fresh_pipeline(tiny_bundle, tiny_engines, samples, tmp_path, backend):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    proc = subprocess.run(
        [sys.executable, "-c", TWO_THREADS, str(tiny_bundle), backend, str(tmp_path / "cache"), str(engines),
         str(samples / "person_a.png")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


BUILD_ONE = """
import sys
from dynamicid_rt.export import build_engines
from dynamicid_rt.modelfiles.paths import ModelPaths

(entry,) = build_engines(ModelPaths.from_folder(sys.argv[1]), sys.argv[2], engines=["face_projector"])
print("reused" if entry.reused else "built")
"""


def test_two_processes_build_an_engine_once(tiny_bundle, tmp_path):
    folder = tmp_path / "engines"
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_ONE, str(tiny_bundle), str(folder)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        outcomes.append(out.strip().splitlines()[-1])
    assert sorted(outcomes) == ["built", "reused"]
    assert not list(folder.glob(".building-*"))


WRITE_BUNDLE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from dynamicid_rt.tiny.bundle import write_tiny_bundle

write_tiny_bundle(sys.argv[1])
"""


def test_two_processes_write_the_tiny_bundle_once(tmp_path):
    root = tmp_path / "tiny"
    procs = [subprocess.Popen([sys.executable, "-c", WRITE_BUNDLE, str(root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = []
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        logs.append(err)
    assert sum("random bundle written" in log for log in logs) == 1
    assert (root / "tiny_bundle.json").is_file()
