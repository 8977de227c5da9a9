"""A warm start reads no graph it need not read: OpenVINO's static graph files and ONNX Runtime's
stored optimized graphs compute what the slow route computes, and a damaged one is remade with
the reason logged (tiny bundle, real OpenVINO and ONNX Runtime)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynamicid_rt.contract import ENGINES
from dynamicid_rt.modelfiles.paths import ModelPaths

openvino = pytest.importorskip("openvino")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture()
def engines(tiny_engines, tmp_path) -> Path:
    """A private copy of the tiny engine cache, without the plans and graphs earlier tests left."""
    folder = tmp_path / "engines"
    shutil.copytree(tiny_engines, folder, ignore=shutil.ignore_patterns("openvino", "onnxruntime", ".lock-*"))
    return folder


def _ov(tiny_bundle, engines, precision="fp32"):
    from dynamicid_rt.backends.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(ModelPaths.from_folder(tiny_bundle), precision=precision, engine_dir=engines)


def _ort(tiny_bundle, engines):
    from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(ModelPaths.from_folder(tiny_bundle), engine_dir=engines)


def _first_run(backend, engine: str, seed: int, **dims):
    """``(inputs, output, entry)`` of one run of ``engine`` on a fresh backend, which is then closed."""
    inputs = ENGINES[engine].sample_inputs(backend.dims, seed=seed, **dims)
    try:
        output = backend.run(engine, inputs)[ENGINES[engine].output_names[0]]
        return inputs, output, backend._entries[engine]
    finally:
        backend.close()


def _flip(path: Path) -> None:
    """The same size, other bytes: only a SHA-256 can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(255 - b for b in data[len(data) // 2 : len(data) // 2 + 64])
    path.write_bytes(bytes(data))


def _reshaped_reference(entry_onnx: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The UNet compiled the slow way (read_model + reshape), with no model cache."""
    core = openvino.Core()
    model = core.read_model(str(entry_onnx))
    model.reshape({n: list(v.shape) for n, v in inputs.items()})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    return compiled(inputs)[compiled.output(0)]


# -- OpenVINO --------------------------------------------------------------------------------


def test_openvino_warm_start_compiles_the_unet_from_its_graph_file_without_reading_the_onnx(tiny_bundle, engines, monkeypatch):
    inputs, got, entry = _first_run(_ov(tiny_bundle, engines), "unet", seed=4, h=24, w=24)
    np.testing.assert_allclose(got, _reshaped_reference(entry.onnx, inputs), rtol=0, atol=1e-6)

    graphs = list((entry.path / "openvino" / "graphs").glob("static-*.onnx"))
    assert len(graphs) == 1
    plans = entry.path / "openvino" / "f32" / graphs[0].stem
    assert list(plans.glob("*.blob")), "the shape's plan sits in a folder of its own"

    def no_read(*args, **kwargs):
        raise AssertionError("a warm start read the ONNX graph")

    monkeypatch.setattr(openvino.Core, "read_model", no_read)
    warm = _ov(tiny_bundle, engines)
    try:
        np.testing.assert_array_equal(warm.run("unet", inputs)["noise_pred"], got)
    finally:
        warm.close()


def test_static_graph_links_the_entry_weights_and_computes_the_reshaped_graph(tiny_bundle, engines):
    from dynamicid_rt.backends.openvino_graphs import static_graph

    entry = _external_data_entry(engines)
    folder = entry.path
    inputs = ENGINES["unet"].sample_inputs(_ov(tiny_bundle, engines).dims, seed=5, h=16, w=16)
    shapes = {n: v.shape for n, v in inputs.items()}

    graph = static_graph(entry, shapes)
    assert graph is not None and graph.stat().st_size < (folder / "model.onnx").stat().st_size + 4096
    assert os.path.samefile(graph.parent / "model.onnx.data", folder / "model.onnx.data")
    core = openvino.Core()
    compiled = core.compile_model(str(graph), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    for port in compiled.inputs:  # every input fixed to the request's shape
        (name,) = set(port.get_names()) & set(inputs)
        assert tuple(port.get_shape()) == inputs[name].shape
    np.testing.assert_array_equal(compiled(inputs)[compiled.output(0)], _reshaped_reference(folder / "model.onnx", inputs))

    (graph.parent / "model.onnx.data").unlink()  # a link that is gone is made again
    (graph.parent / "model.onnx.data").write_bytes(b"not the weights")
    assert static_graph(entry, shapes) == graph
    assert os.path.samefile(graph.parent / "model.onnx.data", folder / "model.onnx.data")


def test_a_damaged_static_graph_is_written_again_with_the_reason(tiny_bundle, engines, caplog):
    inputs, before, entry = _first_run(_ov(tiny_bundle, engines), "unet", seed=6, h=16, w=16)
    (graph,) = (entry.path / "openvino" / "graphs").glob("static-*.onnx")
    _flip(graph)
    with caplog.at_level("WARNING", logger="dynamicid_rt"):
        again = _ov(tiny_bundle, engines)
        np.testing.assert_array_equal(again.run("unet", inputs)["noise_pred"], before)
        again.close()
    assert any("static graph" in r.getMessage() and "does not match its SHA-256" in r.getMessage() for r in caplog.records)


def test_plans_of_the_earlier_layout_are_removed(tiny_bundle, engines, caplog):
    backend = _ov(tiny_bundle, engines)
    legacy = backend._entries["unet"].path / "openvino" / "f32"
    legacy.mkdir(parents=True)
    (legacy / "1234.blob").write_bytes(b"a plan compiled from a reshaped model object")
    inputs = ENGINES["unet"].sample_inputs(backend.dims, seed=7, h=16, w=16)
    with caplog.at_level("INFO", logger="dynamicid_rt"):
        np.testing.assert_allclose(backend.run("unet", inputs)["noise_pred"],
                                   _reshaped_reference(backend._entries["unet"].onnx, inputs), rtol=0, atol=1e-6)
    backend.close()
    assert not (legacy / "1234.blob").exists()
    assert any("earlier OpenVINO cache layout" in r.getMessage() for r in caplog.records)


def _external_data_entry(engines: Path):
    """A copy of the tiny UNet entry with its weights in model.onnx.data, as real entries keep them
    (the tiny bundle's fit in the graph file)."""
    import onnx

    from dynamicid_rt.export.cache import CacheEntry
    from dynamicid_rt.files.stamps import sha256_file

    folder = engines / "unet-external"
    folder.mkdir()
    model = onnx.load(str(engines / "unet-fp32" / "model.onnx"))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data", size_threshold=1024)
    manifest = json.loads((engines / "unet-fp32" / "manifest.json").read_text())
    manifest["files"] = {name: {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
                         for name in ("model.onnx", "model.onnx.data")}
    return CacheEntry("unet", "fp32", folder, manifest, reused=True)


def test_without_hard_links_openvino_reshapes_as_before(tiny_bundle, engines, monkeypatch):
    import errno

    from dynamicid_rt.backends import openvino_backend, openvino_graphs

    entry = _external_data_entry(engines)
    real_link = os.link

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    inputs = ENGINES["unet"].sample_inputs(_ov(tiny_bundle, engines).dims, seed=8, h=16, w=16)
    assert openvino_graphs.static_graph(entry, {n: v.shape for n, v in inputs.items()}) is None
    monkeypatch.setattr(os, "link", real_link)

    monkeypatch.setattr(openvino_backend, "static_graph", lambda *args: None)  # as on such a file system
    backend = _ov(tiny_bundle, engines)
    try:
        np.testing.assert_allclose(backend.run("unet", inputs)["noise_pred"],
                                   _reshaped_reference(backend._entries["unet"].onnx, inputs), rtol=0, atol=1e-6)
    finally:
        backend.close()
    assert not list((engines / "unet-fp32" / "openvino" / "graphs").glob("*.onnx"))


# -- ONNX Runtime ----------------------------------------------------------------------------


def _plain_session_output(entry_onnx: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The UNet in a session of ONNX Runtime's own defaults for this backend, nothing stored."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(entry_onnx), options, providers=["CPUExecutionProvider"])
    types = {m.name: m.type for m in session.get_inputs()}
    feed = {n: (v.astype(np.int64) if types[n] == "tensor(int64)" else v.astype(np.float32)) for n, v in inputs.items() if n in types}
    return session.run(["noise_pred"], feed)[0]


def test_onnxruntime_stores_its_optimized_graph_and_a_warm_start_loads_it_unoptimized(tiny_bundle, engines, monkeypatch):
    inputs, got, entry = _first_run(_ort(tiny_bundle, engines), "unet", seed=9)
    reference = _plain_session_output(entry.onnx, inputs)
    np.testing.assert_array_equal(got, reference)
    (stored,) = (entry.path / "onnxruntime").glob("cpu-*")
    assert (stored / "model.onnx").is_file() and (stored / "manifest.json").is_file()

    levels = []
    real = ort.InferenceSession

    def spy(path, options=None, **kwargs):
        levels.append((Path(path), options.graph_optimization_level))
        return real(path, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    warm = _ort(tiny_bundle, engines)
    try:
        np.testing.assert_array_equal(warm.run("unet", inputs)["noise_pred"], reference)  # bit for bit
    finally:
        warm.close()
    assert levels == [(stored / "model.onnx", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)]


def test_a_damaged_optimized_graph_is_made_again_with_the_reason(tiny_bundle, engines, caplog):
    inputs, before, entry = _first_run(_ort(tiny_bundle, engines), "unet", seed=10)
    (stored,) = (entry.path / "onnxruntime").glob("cpu-*")
    _flip(stored / "model.onnx")
    with caplog.at_level("WARNING", logger="dynamicid_rt"):
        again = _ort(tiny_bundle, engines)
        np.testing.assert_array_equal(again.run("unet", inputs)["noise_pred"], before)
        again.close()
    assert any("optimized graph" in r.getMessage() and "does not match its SHA-256" in r.getMessage() for r in caplog.records)
    assert (stored / "manifest.json").is_file()  # stored again


def test_an_optimized_graph_of_another_onnxruntime_is_replaced(tiny_bundle, engines, monkeypatch):
    inputs, before, entry = _first_run(_ort(tiny_bundle, engines), "face_projector", seed=11)
    (old,) = (entry.path / "onnxruntime").glob("cpu-*")
    monkeypatch.setattr(ort, "__version__", ort.__version__ + ".other")
    again = _ort(tiny_bundle, engines)
    np.testing.assert_array_equal(again.run("face_projector", inputs)["id_tokens"], before)
    again.close()
    (new,) = (entry.path / "onnxruntime").glob("cpu-*")
    assert new != old and json.loads((new / "manifest.json").read_text())["onnxruntime"].endswith(".other")


def test_onnxruntime_prepares_the_unet_in_the_background_without_holding_up_other_engines(tiny_bundle, engines):
    import threading

    backend = _ort(tiny_bundle, engines)
    try:
        text = ENGINES["text_encoder"].sample_inputs(backend.dims, seed=12)
        text["input_ids"] %= 400  # ids inside the tiny tokenizer's vocabulary
        with backend._open_lock("unet"):  # the UNet "loading" all along
            done = threading.Event()
            worker = threading.Thread(target=lambda: (backend.run("text_encoder", text), done.set()))
            worker.start()
            assert done.wait(60), "the text encoder waited for the UNet's load"
            worker.join()
        backend.prepare(["unet"])
        (thread,) = backend._preparing
        thread.join(60)
        assert "unet" in backend._sessions and thread.name == "prepare-unet"
        unet = ENGINES["unet"].sample_inputs(backend.dims, seed=13)
        np.testing.assert_array_equal(backend.run("unet", unet)["noise_pred"],
                                      _plain_session_output(backend._entries["unet"].onnx, unet))
    finally:
        backend.close()


def test_a_cache_that_cannot_be_written_still_runs_the_slow_way_with_a_warning(tiny_bundle, engines, monkeypatch, caplog):
    import errno

    from dynamicid_rt.backends import openvino_graphs, ort_optimized
    from dynamicid_rt.errors import OutputError

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ort_optimized, "build_folder", read_only)
    monkeypatch.setattr(openvino_graphs, "_write", lambda *a, **k: (_ for _ in ()).throw(OutputError("x cannot be written: the disk is full")))
    with caplog.at_level("WARNING", logger="dynamicid_rt"):
        ort_backend = _ort(tiny_bundle, engines)
        inputs = ENGINES["unet"].sample_inputs(ort_backend.dims, seed=14, h=16, w=16)
        got = ort_backend.run("unet", inputs)["noise_pred"]
        ort_backend.close()
        ov_backend = _ov(tiny_bundle, engines)
        got_ov = ov_backend.run("unet", inputs)["noise_pred"]
        ov_backend.close()
    np.testing.assert_array_equal(got, _plain_session_output(engines / "unet-fp32" / "model.onnx", inputs))
    np.testing.assert_allclose(got_ov, _reshaped_reference(engines / "unet-fp32" / "model.onnx", inputs), rtol=0, atol=1e-6)
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot be stored" in m and "Read-only file system" in m for m in messages)
    assert any("static graph" in m and "cannot write there" in m and "disk is full" in m for m in messages)
