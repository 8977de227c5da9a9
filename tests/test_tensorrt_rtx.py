"""TensorRT for RTX, the real library (``tensorrt-rtx-cu13-libs`` + ``-bindings``), on a machine
without a GPU: it parses our ONNX graphs and builds real portable plans here, as CI and a build
machine do. Running a plan needs a GPU (tests/test_tensorrt_gpu.py, ``-m tensorrt``).

Checked here, each against the library's own answer: every engine builds in fp32 and fp16, dynamic
and static 512²; the network its ONNX parser makes has the contract's names, ranks and dtypes; in
the fp16 UNet the layers on the timestep, box and gating paths compute in fp32, read from the parsed
network; the plan cache reuses, rebuilds stale (changed ONNX, changed profile) and corrupt plans
with their reason; a graph with an op the parser rejects gives one line naming engine and op.
"""
from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from dynamicid_rt.backends import probes

if not probes.installed("tensorrt_rtx_bindings"):
    pytest.skip("needs TensorRT-RTX: pip install 'dynamicid-rt[tensorrt-rtx]'", allow_module_level=True)

from dynamicid_rt.contract import ENGINES  # noqa: E402
from dynamicid_rt.engines.build import build_plans, ensure_plan  # noqa: E402
from dynamicid_rt.engines.builder import BuildSettings, EngineBuildError, make_logger, parse_network  # noqa: E402
from dynamicid_rt.engines.library import TENSORRT_RTX_1, load  # noqa: E402
from dynamicid_rt.engines.plans import plan_folder  # noqa: E402
from dynamicid_rt.engines.profiles import StaticSize  # noqa: E402
from dynamicid_rt.errors import DynamicIDError  # noqa: E402
from dynamicid_rt.export.cache import CacheEntry, build_engines  # noqa: E402
from dynamicid_rt.modelfiles.paths import ModelPaths  # noqa: E402

STATIC = StaticSize(512, 512)


@pytest.fixture(scope="module")
def lib():
    return load("tensorrt-rtx")


@pytest.fixture(scope="module")
def paths(tiny_bundle) -> ModelPaths:
    return ModelPaths.from_folder(tiny_bundle)


@pytest.fixture(scope="module")
def built(lib, paths, tiny_engines, tmp_path_factory):
    """Every engine's plans, fp32 and fp16, dynamic and static 512², built once by the real library
    with the default settings on this GPU-less machine."""
    folder = tmp_path_factory.mktemp("rtx") / "engines"
    shutil.copytree(tiny_engines, folder)  # copy2 keeps modification times: entries stay valid
    plans = {}
    for precision in ("fp32", "fp16"):
        for plan in build_plans(paths, folder, precision, static=STATIC, lib=lib, gpu=None):
            plans[(plan.engine, precision, plan.tag)] = plan
    return folder, plans


def test_every_engine_builds_in_fp32_and_fp16_dynamic_and_static(built, paths):
    _, plans = built
    engines = [name for name in ENGINES if name != "imr" or paths.has_imr]
    want = {(e, p, "dynamic") for e in engines for p in ("fp32", "fp16")}
    want |= {(e, p, f"static-{STATIC.tag}") for e in engines if ENGINES[e].sized for p in ("fp32", "fp16")}
    assert set(plans) == want
    for plan in plans.values():
        assert plan.status == "built" and plan.path.stat().st_size > 0
        # Portable plans: keyed by their targets, not by a GPU or driver (there is none here).
        assert plan.manifest["targets"] == list(TENSORRT_RTX_1.targets)
        assert "gpu" not in plan.manifest and "driver" not in plan.manifest
        assert plan.manifest["library"] == "TensorRT-RTX 1"
    # No GPU: the UNet could not be built refittable, and the manifest says so.
    assert plans[("unet", "fp16", "dynamic")].manifest["settings"]["refittable"] is False


def _parsed(lib, onnx_path: Path):
    trt = lib.trt
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network, parser = parse_network(lib, builder, logger, onnx_path, "test")
    return network, (builder, parser)  # both must outlive the network


_DTYPES = {"float32": "FLOAT", "int64": "INT64", "int32": "INT32", "float16": "HALF"}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_parsed_networks_have_the_contracts_names_ranks_and_dtypes(lib, built, paths, precision):
    folder, _ = built
    for entry in build_engines(paths, folder, precision):
        network, _keep = _parsed(lib, entry.onnx)
        spec = ENGINES[entry.engine]
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        outputs = [network.get_output(i) for i in range(network.num_outputs)]
        assert [t.name for t in inputs] == spec.input_names, entry.engine
        assert [t.name for t in outputs] == spec.output_names, entry.engine
        for tensor, declared in zip(inputs + outputs, spec.inputs + spec.outputs):
            assert len(tensor.shape) == len(declared.shape), (entry.engine, tensor.name)
            assert tensor.dtype.name == _DTYPES[declared.dtype], (entry.engine, tensor.name, tensor.dtype)


# The control inputs whose paths must stay fp32, and the layer types that carry no arithmetic.
_CONTROL = {"timestep", "id_boxes", "id_gating"}
_WEIGHT_ELEMENTS = 4096  # constants above this are weights (as export/fp16_islands.py counts them)


def _control_layers(lib, network) -> tuple[list[str], list[str]]:
    """Independent of the exporter: walk the parsed network and sort the layers computed from the
    control inputs (and constants, shapes) alone by their floating outputs: ``(not fp32, fp32)``.
    Layers that apply a weight end a path: the time-embedding projection runs in fp16 by design."""
    trt = lib.trt
    skip = {trt.LayerType.CONSTANT, trt.LayerType.SHAPE, trt.LayerType.CAST}
    role: dict[str, set[str]] = {network.get_input(i).name: ({"control"} if network.get_input(i).name in _CONTROL else {"other"})
                                 for i in range(network.num_inputs)}
    bad, good = [], []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        if layer.type == trt.LayerType.CONSTANT:
            size = int(np.prod(tuple(layer.get_output(0).shape)))
            out = {"weight"} if size > _WEIGHT_ELEMENTS else set()
        elif layer.type == trt.LayerType.SHAPE:
            out = {"shape"}
        else:
            out = set().union(*(role.get(t.name, set()) for t in ins if t is not None))
        operands = [role.get(t.name, set()) for t in ins if t is not None]
        if layer.type in (trt.LayerType.MATRIX_MULTIPLY, trt.LayerType.CONVOLUTION) and any(
            r <= {"weight"} for r in operands  # an operand made of constants only: a weight
        ):
            out = {"weight"}
        for j in range(layer.num_outputs):
            role[layer.get_output(j).name] = out
        if "control" in out and out <= {"control", "shape"} and layer.type not in skip:
            floats = [layer.get_output(j).dtype for j in range(layer.num_outputs)
                      if layer.get_output(j).dtype in (trt.float32, trt.float16, trt.bfloat16)]
            if any(dtype != trt.float32 for dtype in floats):
                bad.append(f"{layer.name} ({layer.type.name})")
            elif floats:
                good.append(layer.name)
    return bad, good


def test_fp16_unet_keeps_the_timestep_box_and_gating_paths_fp32(lib, built, paths):
    folder, _ = built
    entry = build_engines(paths, folder, "fp16", ["unet"])[0]
    network, _keep = _parsed(lib, entry.onnx)
    bad, good = _control_layers(lib, network)
    assert bad == []
    # The walk finds the sinusoidal embedding and the box grid arithmetic: it is not vacuous.
    assert len(good) >= 10


def test_the_control_path_check_fails_on_a_graph_converted_without_islands(lib, built, paths, tmp_path):
    """The same walk on an fp16 UNet converted without the exporter's fp32 islands finds fp16
    control layers, so the test above can fail."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from dynamicid_rt.export.onnx_export import FP16_KEEP_FP32_OPS, _sort_topologically

    folder, _ = built
    fp32 = build_engines(paths, folder, "fp32", ["unet"])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = convert_float_to_float16(onnx.load(str(fp32.onnx)), keep_io_types=True, op_block_list=list(FP16_KEEP_FP32_OPS))
    _sort_topologically(naive.graph)
    onnx.save(naive, str(tmp_path / "naive.onnx"))
    network, _keep = _parsed(lib, tmp_path / "naive.onnx")
    assert len(_control_layers(lib, network)[0]) > 0


# -- the plan cache on real plans ------------------------------------------------------------------


def test_valid_plans_are_reused_without_building(lib, built, paths, monkeypatch):
    folder, _ = built
    import dynamicid_rt.engines.build as build_module

    def no_build(*args, **kwargs):
        raise AssertionError("a valid plan was rebuilt")

    monkeypatch.setattr(build_module, "build_plan", no_build)
    again = build_plans(paths, folder, "fp16", static=STATIC, lib=lib, gpu=None)
    engines = [name for name in ENGINES if name != "imr" or paths.has_imr]
    assert {p.status for p in again} == {"reused"} and len(again) == len(engines) + sum(ENGINES[e].sized for e in engines)


@pytest.fixture
def small(lib, built, paths, tmp_path):
    """A copy of the face_projector fp16 ONNX entry and its plan, to damage."""
    folder, _ = built
    copy = tmp_path / "engines"
    shutil.copytree(folder / "face_projector-fp16", copy / "face_projector-fp16")
    shutil.copytree(folder / "tensorrt-rtx" / "face_projector-fp16", copy / "tensorrt-rtx" / "face_projector-fp16")
    entry = build_engines(paths, copy, "fp16", ["face_projector"])[0]
    assert entry.reused
    return copy, entry


def _rebuilt(lib, entry, engine_dir, caplog) -> tuple[str, str]:
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.engines"):
        plan = ensure_plan(lib, None, entry, engine_dir, None, BuildSettings())
    assert ensure_plan(lib, None, entry, engine_dir, None, BuildSettings()).status == "reused"  # the new plan is valid
    return plan.status, caplog.text


def test_a_flipped_byte_in_a_plan_is_rebuilt_with_its_reason(lib, small, caplog):
    engine_dir, entry = small
    plan = plan_folder(engine_dir, "face_projector", "fp16", "tensorrt-rtx") / "dynamic.plan"
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0x01
    plan.write_bytes(bytes(data))
    status, log_text = _rebuilt(lib, entry, engine_dir, caplog)
    assert status == "built" and "does not match its SHA-256 (corrupt)" in log_text
    assert plan.read_bytes() != bytes(data)


def test_a_changed_profile_is_rebuilt_with_its_reason(lib, small, caplog):
    engine_dir, entry = small
    manifest_path = plan_folder(engine_dir, "face_projector", "fp16", "tensorrt-rtx") / "dynamic.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["profile"]["id_embeds"][2] = [8, 512]  # as if built for another batch range
    manifest_path.write_text(json.dumps(manifest))
    status, log_text = _rebuilt(lib, entry, engine_dir, caplog)
    assert status == "built" and "the optimisation profile (shape ranges) changed" in log_text


def test_a_changed_onnx_graph_is_rebuilt_with_its_reason(lib, small, caplog, tmp_path):
    engine_dir, entry = small
    model = onnx.load(str(entry.onnx))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT16 and len(init.dims) >= 2:
            values = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array((values * np.float16(1.5)).astype(values.dtype), init.name))
            break
    tuned_dir = tmp_path / "tuned"
    tuned_dir.mkdir()
    onnx.save(model, str(tuned_dir / "model.onnx"))
    files = {"model.onnx": {"sha256": "1" * 64, "size": (tuned_dir / "model.onnx").stat().st_size}}
    tuned = CacheEntry(entry.engine, entry.precision, tuned_dir, {**entry.manifest, "files": files}, reused=False)
    status, log_text = _rebuilt(lib, tuned, engine_dir, caplog)
    # Not refitted: TensorRT-RTX cannot build refittable plans without a GPU.
    assert status == "built" and "the ONNX graph changed" in log_text


def test_an_op_the_parser_rejects_gives_one_line_naming_engine_and_op(lib, paths, small, tmp_path):
    engine_dir, entry = small
    model = onnx.load(str(entry.onnx))
    node = next(n for n in model.graph.node if n.op_type == "Erf")
    node.op_type = "StringNormalizer"  # an op TensorRT has no importer for
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    onnx.save(model, str(bad_dir / "model.onnx"))
    files = {"model.onnx": {"sha256": "2" * 64, "size": 1}}
    bad = CacheEntry(entry.engine, entry.precision, bad_dir, {**entry.manifest, "files": files}, reused=False)
    with pytest.raises(EngineBuildError) as info:
        ensure_plan(lib, None, bad, engine_dir, None, BuildSettings())
    message = str(info.value)
    assert "\n" not in message
    assert "face_projector" in message and "op StringNormalizer" in message and node.name in message


def test_two_builders_of_one_plan_build_it_once(lib, small, monkeypatch):
    import threading

    import dynamicid_rt.engines.build as build_module

    engine_dir, entry = small
    (plan_folder(engine_dir, "face_projector", "fp16", "tensorrt-rtx") / "dynamic.json").unlink()
    real, builds = build_module.build_plan, []
    monkeypatch.setattr(build_module, "build_plan", lambda *a, **k: builds.append(1) or real(*a, **k))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_plan(lib, None, entry, engine_dir, None, BuildSettings())))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and sorted(r.status for r in results) == ["built", "reused"]


def test_targets_reach_the_plan_and_unknown_ones_are_refused_first(lib, small):
    engine_dir, entry = small
    plan = ensure_plan(lib, None, entry, engine_dir, None, BuildSettings(targets=("7.5", "8.6")))
    assert plan.status == "built" and plan.manifest["targets"] == ["7.5", "8.6"]
    with pytest.raises(DynamicIDError, match=r"9\.0 is not a TensorRT-RTX 1 target; choose from 8\.0, 8\.6"):
        ensure_plan(lib, None, entry, engine_dir, None, BuildSettings(targets=("9.0",)))


def test_data_center_tensorrt_without_a_gpu_says_to_use_tensorrt_rtx(paths, tmp_path):
    from dynamicid_rt.engines.library import wrap

    from tensorrt_standin import make_standin

    with pytest.raises(EngineBuildError, match="build portable plans without a GPU with --backend tensorrt-rtx"):
        build_plans(paths, tmp_path, "fp16", ["vae_decoder"], lib=wrap("tensorrt", make_standin("10.13.0")), gpu=None)
    assert not any(tmp_path.iterdir())  # refused before any export


# -- the command line, as a user runs it -----------------------------------------------------------


def test_build_engines_cli_reuses_every_plan_and_rebuilds_a_corrupt_one(built, tiny_bundle, caplog, capsys):
    from dynamicid_rt.cli import main

    folder, _ = built
    args = ["build-engines", "--models", str(tiny_bundle), "--engine-dir", str(folder), "--backend", "tensorrt-rtx",
            "--precision", "fp16"]
    assert main(args) == 0
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert sorted(ln[0] for ln in lines) == sorted(ENGINES) and {ln[2] for ln in lines} == {"reused"}
    plan = plan_folder(folder, "text_encoder", "fp16", "tensorrt-rtx") / "dynamic.plan"
    data = bytearray(plan.read_bytes())
    data[-100] ^= 0xFF
    plan.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.engines"):
        assert main(args) == 0
    lines = {ln.split()[0]: ln.split()[2] for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    assert lines["text_encoder"] == "built" and lines["unet"] == "reused"
    assert "text_encoder dynamic (fp16): the plan does not match its SHA-256 (corrupt)" in caplog.text


def test_doctor_reports_the_library_the_gpu_and_the_plans(built, paths, tiny_bundle, monkeypatch):
    from dynamicid_rt.engines import report
    from dynamicid_rt.engines.cuda import gpu_here

    folder, _ = built
    monkeypatch.setattr(report, "_engine_dir", lambda models: folder)
    lines = report.tensorrt_report(tiny_bundle)
    text = "\n".join(lines)
    assert f"TensorRT-RTX: {load('tensorrt-rtx').version}" in text
    if gpu_here() is None:
        assert "GPU: none usable here; plans can still be built here (portable)" in text
    engines = [name for name in ENGINES if name != "imr" or paths.has_imr]
    per_precision = len(engines) + sum(ENGINES[e].sized for e in engines)  # dynamic, and static for sized engines
    assert f"plan cache {folder / 'tensorrt-rtx'}: {2 * per_precision} plan(s)" in text
    assert f"unet-fp16/dynamic: TensorRT-RTX {load('tensorrt-rtx').version}, sm 8.0, 8.6, 8.9, 12.0, " in text
