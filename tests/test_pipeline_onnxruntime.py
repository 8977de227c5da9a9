"""The whole pipeline on the ONNX Runtime backend against the torch backend (tiny bundle)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dynamicid_rt import Pipeline, Request
from dynamicid_rt.cli import main


@pytest.fixture(scope="module")
def ort_pipeline(tiny_bundle, tiny_engines, tmp_path_factory):
    pipe = Pipeline.load(tiny_bundle, backend="onnxruntime", device="cpu", onnx_cache=tiny_engines,
                         cache_dir=tmp_path_factory.mktemp("ort-cache"))
    yield pipe
    pipe.close()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_onnxruntime_image_matches_torch(ort_pipeline, tiny_pipeline, samples):
    images, tokens = [], []
    for pipe in (tiny_pipeline, ort_pipeline):
        people = [
            pipe.encode_identity(samples / "person_a.png"),
            pipe.encode_identity(samples / "person_b.png", face_prompt="in a happy expression, facing up"),
        ]
        tokens.append(np.concatenate([p.tokens for p in people]))
        req = Request(prompt="two people at the beach", identities=people, width=256, height=256, steps=4,
                      seed=123, sampler="dpmpp_2m")
        images.append(np.asarray(pipe.generate(req).images[0]))
    rel = np.abs(tokens[0] - tokens[1]).max() / np.abs(tokens[0]).max()
    assert rel < 1e-4  # identity stages (CLIP, projector, text encoder, IMR) agree
    assert _psnr(images[0], images[1]) >= 40.0


def test_cli_generate_on_onnxruntime(tiny_bundle, tiny_engines, samples, tmp_path):
    out = tmp_path / "ort.png"
    code = main(["generate", "--models", str(tiny_bundle), "--backend", "onnxruntime", "--engine-dir", str(tiny_engines),
                 "--face", str(samples / "person_a.png"), "--prompt", "a portrait", "--size", "256x256",
                 "--steps", "2", "--seed", "1", "--out", str(out)])
    assert code == 0 and out.is_file()


def test_onnxruntime_pipeline_never_imports_torch_or_transformers(tiny_bundle, tiny_engines, samples, tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        from dynamicid_rt import Pipeline, Request
        pipe = Pipeline.load({str(tiny_bundle)!r}, backend="onnxruntime", onnx_cache={str(tiny_engines)!r},
                             cache_dir={str(tmp_path)!r})
        a = pipe.encode_identity({str(samples / "person_a.png")!r}, face_prompt="in a sad expression")
        result = pipe.generate(Request(prompt="x", identities=[a], width=256, height=256, steps=2, seed=0))
        print(json.dumps({{"torch": "torch" in sys.modules, "diffusers": "diffusers" in sys.modules,
                          "transformers": "transformers" in sys.modules,
                          "size": list(result.images[0].size)}}))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"torch": False, "diffusers": False, "transformers": False, "size": [256, 256]}
