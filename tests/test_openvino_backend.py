"""The OpenVINO backend on the tiny bundle: each engine against the torch modules, whole images
against the torch pipeline (fp32 and bf16), static-shape plans, bind(), and no torch at inference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the openvino backend needs openvino (pip install 'dynamicid-rt[openvino]')")

from dynamicid_rt import Pipeline, Request  # noqa: E402
from dynamicid_rt.backends import probes  # noqa: E402
from dynamicid_rt.backends.openvino_backend import PLANS_PER_ENGINE, OpenVinoBackend  # noqa: E402
from dynamicid_rt.contract import ENGINES  # noqa: E402
from dynamicid_rt.modelfiles.paths import ModelPaths  # noqa: E402

needs_bf16 = pytest.mark.skipif(not probes.cpu_has_bf16(), reason="this CPU has no bf16 units (avx512_bf16 or amx_bf16)")


@pytest.fixture(scope="module")
def ov_backend(tiny_bundle, tiny_engines):
    backend = OpenVinoBackend(ModelPaths.from_folder(tiny_bundle), precision="fp32", engine_dir=tiny_engines)
    yield backend
    backend.close()


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_each_engine_matches_the_torch_module(ov_backend, tiny_pipeline, engine):
    inputs = ENGINES[engine].sample_inputs(ov_backend.dims, seed=3)
    if engine == "text_encoder":
        inputs["input_ids"] %= 400  # ids inside the tiny tokenizer's vocabulary
    got = ov_backend.run(engine, inputs)
    ref = tiny_pipeline.backend.run(engine, inputs)
    assert set(got) == set(ENGINES[engine].output_names)
    for name in ref:
        assert got[name].shape == ref[name].shape
        assert _relative_error(got[name], ref[name]) <= 1e-4, name


def test_unet_plans_are_static_and_kept_in_a_small_lru(ov_backend):
    results = {}
    for h in (32, 24, 16, 32):
        inputs = ENGINES["unet"].sample_inputs(ov_backend.dims, seed=1, h=h, w=h)
        results.setdefault(h, []).append(ov_backend.run("unet", inputs)["noise_pred"])
    plans = [key for key in ov_backend._plans if key[0] == "unet"]
    assert len(plans) == PLANS_PER_ENGINE
    for _, shapes in plans:  # every input of a plan has one fixed shape
        assert all(all(isinstance(d, int) for d in shape) for _, shape in shapes)
    np.testing.assert_array_equal(results[32][0], results[32][1])  # recompiled after eviction, same numbers
    cache_dir = ov_backend._entries["unet"].path / "openvino"
    assert any(cache_dir.iterdir()), "compiled blobs go to OpenVINO's cache inside the engine entry"


def test_bind_sets_constants_once_and_matches_run(ov_backend):
    inputs = ENGINES["unet"].sample_inputs(ov_backend.dims, seed=2)
    varying = ("sample", "timestep", "id_boost")
    call = ov_backend.bind("unet", {k: v for k, v in inputs.items() if k not in varying})
    for step in range(2):
        changed = {k: inputs[k] + step for k in varying}
        np.testing.assert_array_equal(call(changed)["noise_pred"], ov_backend.run("unet", {**inputs, **changed})["noise_pred"])
    with pytest.raises(KeyError, match="no input"):
        ov_backend.bind("unet", {"latent": inputs["sample"]})


def _two_person_image(pipe: Pipeline, samples) -> np.ndarray:
    people = [
        pipe.encode_identity(samples / "person_a.png"),
        pipe.encode_identity(samples / "person_b.png", face_prompt="in a happy expression, facing up"),
    ]
    req = Request(prompt="two people at the beach", identities=people, width=256, height=256, steps=4, seed=123,
                  sampler="dpmpp_2m")
    return np.asarray(pipe.generate(req).images[0])


@pytest.mark.parametrize(("precision", "min_psnr"), [("fp32", 40.0), pytest.param("bf16", 30.0, marks=needs_bf16), (None, 30.0)])
def test_image_matches_the_torch_pipeline(tiny_bundle, tiny_engines, tiny_pipeline, samples, tmp_path, precision, min_psnr):
    """None: what a user gets by default (bf16 on CPUs with bf16 units, else fp32)."""
    pipe = Pipeline.load(tiny_bundle, backend="openvino", precision=precision, onnx_cache=tiny_engines, cache_dir=tmp_path)
    try:
        expected = precision or ("bf16" if probes.cpu_has_bf16() else "fp32")
        assert pipe.backend.name == "openvino" and pipe.backend.precision == expected
        image = _two_person_image(pipe, samples)
    finally:
        pipe.close()
    assert _psnr(image, _two_person_image(tiny_pipeline, samples)) >= min_psnr


def test_openvino_pipeline_never_imports_torch_or_transformers(tiny_bundle, tiny_engines, samples, tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        from dynamicid_rt import Pipeline, Request
        pipe = Pipeline.load({str(tiny_bundle)!r}, backend="openvino", onnx_cache={str(tiny_engines)!r},
                             cache_dir={str(tmp_path)!r})
        a = pipe.encode_identity({str(samples / "person_a.png")!r}, face_prompt="in a sad expression")
        result = pipe.generate(Request(prompt="x", identities=[a], width=256, height=256, steps=2, seed=0))
        print(json.dumps({{"backend": result.backend, "torch": "torch" in sys.modules,
                          "transformers": "transformers" in sys.modules, "size": list(result.images[0].size)}}))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"backend": "openvino", "torch": False, "transformers": False, "size": [256, 256]}
