"""The OpenVINO backend's opt-in ``int8w`` precision (issue 21) on the tiny bundle: the UNet's
weights compressed to 8 bits by NNCF hold >= 30 dB against fp32 end to end, the compiled UNet really
holds int8 weights, the compressed model is cached (and rebuilt with a reason when damaged), and
int8w is refused in one line by the other backends."""
from __future__ import annotations

import json
import logging
import shutil
from collections import Counter

import numpy as np
import pytest

from dynamicid_rt.backends import probes

pytest.importorskip("openvino", reason="int8w needs openvino (pip install 'dynamicid-rt[openvino]')")
pytest.importorskip("nncf", reason="int8w needs nncf (pip install 'dynamicid-rt[openvino]')")

from dynamicid_rt import Pipeline, Request  # noqa: E402
from dynamicid_rt.backends import openvino_int8w, resolve  # noqa: E402
from dynamicid_rt.backends.openvino_backend import OpenVinoBackend  # noqa: E402
from dynamicid_rt.cli import main  # noqa: E402
from dynamicid_rt.contract import ENGINES  # noqa: E402
from dynamicid_rt.errors import BackendError  # noqa: E402
from dynamicid_rt.modelfiles.paths import ModelPaths  # noqa: E402

MIN_PSNR = 30.0  # the bar for int8w against fp32


@pytest.fixture(scope="module")
def engines(tiny_engines, tmp_path_factory):
    """A copy of the session's ONNX cache: int8w writes its compressed UNet into the unet entry."""
    folder = tmp_path_factory.mktemp("int8w") / "engines"
    shutil.copytree(tiny_engines, folder)
    return folder


@pytest.fixture(scope="module")
def int8w_backend(tiny_bundle, engines):
    backend = OpenVinoBackend(ModelPaths.from_folder(tiny_bundle), precision="int8w", engine_dir=engines)
    yield backend
    backend.close()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _image(tiny_bundle, engines, samples, cache_dir, precision: str) -> np.ndarray:
    pipe = Pipeline.load(tiny_bundle, backend="openvino", precision=precision, onnx_cache=engines, cache_dir=cache_dir)
    try:
        assert pipe.describe()["precision"] == precision
        people = [pipe.encode_identity(samples / "person_a.png"), pipe.encode_identity(samples / "person_b.png")]
        request = Request(prompt="two people at the beach", identities=people, width=256, height=256, steps=4, seed=123,
                          sampler="dpmpp_2m")
        return np.asarray(pipe.generate(request).images[0])
    finally:
        pipe.close()


def test_int8w_image_holds_30_db_against_fp32(tiny_bundle, engines, samples, tmp_path):
    fp32 = _image(tiny_bundle, engines, samples, tmp_path / "fp32", "fp32")
    int8w = _image(tiny_bundle, engines, samples, tmp_path / "int8w", "int8w")
    psnr = _psnr(int8w, fp32)
    print(f"int8w vs fp32 on the tiny bundle (same seed): PSNR {psnr:.1f} dB")
    assert psnr >= MIN_PSNR


def _u8_constants(compiled) -> int:
    """u8 constants of a compiled model's runtime graph: where OpenVINO keeps int8 weights."""
    kinds = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kinds[(info["layerType"].astype(str), info["outputPrecisions"].astype(str))] += 1
    return kinds[("Const", "u8")]


def _unet_plan(backend):
    backend.run("unet", ENGINES["unet"].sample_inputs(backend.dims, seed=1, h=16, w=16))
    return next(plan for key, plan in backend._plans.items() if key[0] == "unet")


def test_the_compiled_unet_holds_int8_weights_and_the_other_engines_stay_f32(int8w_backend, tiny_bundle, engines):
    assert int8w_backend.describe()["precision"] == "int8w"
    assert {e: int8w_backend.engine_precision(e) for e in ENGINES} == {e: "int8w" if e == "unet" else "f32" for e in ENGINES}
    entry = int8w_backend._entries["unet"]
    source = int8w_backend.core.read_model(str(entry.onnx))
    compressed = openvino_int8w.compressed_model(int8w_backend.core, entry)

    def constants(model) -> Counter:
        return Counter(op.get_output_element_type(0).get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant")

    assert constants(source)["u8"] == 0 and constants(compressed)["u8"] >= 50  # a weight and a zero point per layer
    fp32 = OpenVinoBackend(ModelPaths.from_folder(tiny_bundle), precision="fp32", engine_dir=engines)
    try:
        fp32_u8, int8w_u8 = _u8_constants(_unet_plan(fp32).compiled), _u8_constants(_unet_plan(int8w_backend).compiled)
    finally:
        fp32.close()
    print(f"u8 constants in the compiled UNet: fp32 {fp32_u8}, int8w {int8w_u8}")
    assert int8w_u8 >= fp32_u8 + 50


def test_the_compressed_unet_is_cached_and_a_damaged_one_compressed_again(int8w_backend, monkeypatch, caplog):
    entry = int8w_backend._entries["unet"]
    folder = entry.path / openvino_int8w.FOLDER
    openvino_int8w.compressed_model(int8w_backend.core, entry)  # built by the earlier tests, or now
    assert json.loads((folder / openvino_int8w.MANIFEST).read_text())["mode"] == "int8_asym"
    real_compress = openvino_int8w._compress
    compressed = []
    monkeypatch.setattr(openvino_int8w, "_compress", lambda model: compressed.append(1) or real_compress(model))
    openvino_int8w.compressed_model(int8w_backend.core, entry)
    assert not compressed, "a valid cached model is read, not compressed again"

    def damage(how) -> str:
        caplog.clear()
        how()
        with caplog.at_level(logging.INFO, logger="dynamicid_rt.backends.openvino_int8w"):
            model = openvino_int8w.compressed_model(int8w_backend.core, entry)
        assert model.get_ops() and not openvino_int8w._problem(folder, openvino_int8w._expected(entry))
        return next(r.getMessage() for r in caplog.records if "compressing the int8w weights again" in r.getMessage())

    weights = folder / openvino_int8w.MODEL_BIN

    def flip_bytes():
        data = bytearray(weights.read_bytes())
        data[len(data) // 2: len(data) // 2 + 16] = bytes(16)
        weights.write_bytes(bytes(data))

    def truncate():
        weights.write_bytes(weights.read_bytes()[:1000])

    def other_nncf():
        manifest = json.loads((folder / openvino_int8w.MANIFEST).read_text())
        (folder / openvino_int8w.MANIFEST).write_text(json.dumps(manifest | {"nncf": "0.1"}))

    assert "model.bin does not match its SHA-256" in damage(flip_bytes)
    assert "model.bin has 1000 bytes" in damage(truncate)
    assert "nncf changed (0.1 ->" in damage(other_nncf)
    assert "manifest is unreadable" in damage(lambda: (folder / openvino_int8w.MANIFEST).write_text("{"))
    assert len(compressed) == 4
    assert not list(entry.path.glob(".building-*")) and not list(entry.path.glob(".old-*"))


def test_int8w_is_opt_in_and_openvino_only(tiny_bundle, tmp_path, caplog):
    assert resolve("openvino")[2] == ("bf16" if probes.cpu_has_bf16() else "fp32")  # int8w: off by default
    assert resolve("openvino", precision="int8w")[2] == "int8w"
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(BackendError, match=f"the {backend} backend cannot run int8w on cpu") as refused:
            resolve(backend, device="cpu", precision="int8w")
        assert "\n" not in str(refused.value)
    code = main(["generate", "--models", str(tiny_bundle), "--backend", "torch", "--device", "cpu", "--precision", "int8w",
                 "--prompt", "x", "--out", str(tmp_path / "never.png")])
    assert code == 1 and "the torch backend cannot run int8w on cpu" in caplog.text
    assert not (tmp_path / "never.png").exists()


def test_int8w_without_nncf_says_how_to_install(monkeypatch):
    def missing(name):
        raise openvino_int8w.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(openvino_int8w.metadata, "version", missing)
    with pytest.raises(BackendError, match=r"precision int8w needs NNCF, which is not installed: pip install 'dynamicid-rt\[openvino\]'"):
        openvino_int8w.nncf_version()
