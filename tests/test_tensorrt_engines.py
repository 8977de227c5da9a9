"""Data-center TensorRT 10/11 without TensorRT: profiles against the real ONNX graphs, shape
dictionaries, the GPU-keyed plan cache, the missing-library error, and what differs between
TensorRT 10 and 11 (precision flags and pinned fp32 layers, the timing cache, refit, out-of-memory
builds), recorded by a STAND-IN (tests/tensorrt_standin.py) that checks only our side of the calls.
Whatever the real TensorRT-RTX library can check on this machine (parsing, building, plan reuse,
staleness, corruption, parse errors) is checked for real in tests/test_tensorrt_rtx.py; whether
TensorRT 10/11 accept the graphs is checked by tests/test_tensorrt_gpu.py on a GPU.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest

from dynamicid_rt.contract import ENGINES
from dynamicid_rt.engines import library
from dynamicid_rt.engines.build import build_plans, ensure_plan
from dynamicid_rt.engines.library import wrap
from dynamicid_rt.engines.builder import BuildSettings, EngineBuildError
from dynamicid_rt.engines.plans import GpuInfo, check_plan, plan_key, write_plan
from dynamicid_rt.engines.profiles import StaticSize, check_static_size, engine_profile, out_of_profile, request_shapes
from dynamicid_rt.engines.refit import structure_hash
from dynamicid_rt.errors import RequestError
from dynamicid_rt.export.cache import CacheEntry, build_engines
from dynamicid_rt.modelfiles.paths import ModelPaths

from tensorrt_standin import STATE, make_standin

GPU = GpuInfo("Stand-in GPU 24GB", "8.9", "12040")
TRT10, TRT11 = "10.13.0", "11.4.0"


@pytest.fixture(scope="module")
def paths(tiny_bundle) -> ModelPaths:
    return ModelPaths.from_folder(tiny_bundle)


@pytest.fixture(scope="module")
def fp16_cache(paths, tiny_engines, tmp_path_factory):
    """The tiny fp32 engine cache plus fp16 unet and vae_decoder entries (the graphs TensorRT builds)."""
    folder = tmp_path_factory.mktemp("trt") / "engines"
    shutil.copytree(tiny_engines, folder)  # copy2 keeps modification times: entries stay valid
    build_engines(paths, folder, "fp16", ["unet", "vae_decoder"])
    return folder


@pytest.fixture
def engine_dir(fp16_cache, tmp_path):
    folder = tmp_path / "engines"
    shutil.copytree(fp16_cache, folder, ignore=shutil.ignore_patterns("tensorrt"))
    return folder


def _graph_inputs(path) -> dict[str, list[int | str]]:
    model = onnx.load(str(path), load_external_data=False)
    return {
        i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }


# -- profiles and shapes --------------------------------------------------------------------------


def test_profiles_cover_every_input_of_each_graph(paths, tiny_engines):
    for entry in build_engines(paths, tiny_engines):  # reused: the fixture built them
        spec = ENGINES[entry.engine]
        profile = engine_profile(spec, entry.dims)
        graph = _graph_inputs(entry.onnx)
        assert set(profile) == set(graph), entry.engine
        for name, dims in graph.items():
            lo, opt, hi = profile[name]
            assert len(lo) == len(opt) == len(hi) == len(dims), (entry.engine, name)
            for k, dim in enumerate(dims):
                if isinstance(dim, int):
                    assert lo[k] == opt[k] == hi[k] == dim, (entry.engine, name, k)
                    continue
                factor, _, axis_name = dim.rpartition("x")  # the exporter writes 4*N as "4xN"
                axis = spec.axis(axis_name)
                f = int(factor) if factor else 1
                assert (lo[k], opt[k], hi[k]) == (f * axis.min, f * axis.opt, f * axis.max), (entry.engine, name, k)
                assert lo[k] < hi[k]


def test_opt_shapes_are_512_square_with_guidance_and_two_people(paths, tiny_engines):
    dims = build_engines(paths, tiny_engines, engines=["unet"])[0].dims
    opt = {name: shapes[1] for name, shapes in engine_profile(ENGINES["unet"], dims).items()}
    c = dims.context_dim
    assert opt["sample"] == (2, 4, 64, 64)
    assert opt["id_tokens"] == (2, 8, c) and opt["id_scale"] == (2,) and opt["id_boxes"] == (2, 4)
    assert opt["encoder_hidden_states"] == (2, 77, c)


def test_static_profile_fixes_size_and_batch_but_not_people(paths, tiny_engines):
    dims = build_engines(paths, tiny_engines, engines=["unet"])[0].dims
    profile = engine_profile(ENGINES["unet"], dims, StaticSize(512, 768))
    assert profile["sample"] == ((1, 4, 96, 64), (2, 4, 96, 64), (2, 4, 96, 64))  # one image, guidance off or on
    assert profile["id_tokens"] == ((1, 4, dims.context_dim), (2, 8, dims.context_dim), (2, 16, dims.context_dim))
    vae = engine_profile(ENGINES["vae_decoder"], dims, StaticSize(512, 768))
    assert vae["latent"] == ((1, 4, 96, 64),) * 3
    assert engine_profile(ENGINES["text_encoder"], dims, StaticSize(512, 768)) == ENGINES["text_encoder"].profile(dims)
    with pytest.raises(RequestError, match="multiples of 64"):
        StaticSize.parse("500x512")
    with pytest.raises(RequestError, match="outside"):
        check_static_size(ENGINES["unet"], StaticSize(2048, 512))


def test_request_shapes(paths, tiny_engines):
    dims = build_engines(paths, tiny_engines, engines=["unet"])[0].dims
    c = dims.context_dim
    shapes = request_shapes("unet", dims, width=768, height=512, batch=1, people=3, guidance=True)
    assert shapes == {
        "sample": (2, 4, 64, 96), "timestep": (2,), "encoder_hidden_states": (2, 77, c), "id_tokens": (2, 12, c),
        "id_boxes": (3, 4), "id_scale": (3,), "id_boost": (1,), "id_gating": (1,), "id_mix": (1,),
        "noise_pred": (2, 4, 64, 96),
    }
    no_people = request_shapes("unet", dims, 512, 512, batch=2, people=0, guidance=False)
    assert no_people["sample"] == (2, 4, 64, 64) and no_people["id_tokens"] == (2, 4, c) and no_people["id_scale"] == (1,)
    assert request_shapes("vae_decoder", dims, 768, 512)["image"] == (1, 3, 512, 768)
    dynamic = engine_profile(ENGINES["unet"], dims)
    static = engine_profile(ENGINES["unet"], dims, StaticSize(768, 512))
    assert out_of_profile(dynamic, shapes) == [] and out_of_profile(static, shapes) == []
    assert out_of_profile(static, request_shapes("unet", dims, 512, 512)) != []
    # Few-step samplers without guidance (batch 1) fit the static plan of their size too.
    assert out_of_profile(static, request_shapes("unet", dims, 768, 512, people=3, guidance=False)) == []
    too_wide = out_of_profile(dynamic, request_shapes("unet", dims, 2048, 512))
    assert len(too_wide) == 1 and too_wide[0].startswith("sample")


# -- the plan cache -------------------------------------------------------------------------------


def _key(entry, **changes):
    gpu = replace(GPU, **{k: v for k, v in changes.items() if k in ("name", "compute_capability", "driver")})
    profile = engine_profile(ENGINES[entry.engine], entry.dims, changes.get("static"))
    manifest = changes.get("entry_manifest", entry.manifest)
    lib = wrap("tensorrt", make_standin(changes.get("trt", TRT10)))
    return plan_key(entry.engine, changes.get("precision", entry.precision), manifest, lib, gpu, profile)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"trt": "10.14.1"}, "TensorRT version changed (10.13.0 -> 10.14.1)"),
        ({"driver": "13000"}, "the GPU driver changed"),
        ({"name": "Other GPU"}, "built on another GPU"),
        ({"compute_capability": "9.0"}, "built for another compute capability"),
        ({"static": StaticSize(512, 512)}, "the optimisation profile (shape ranges) changed"),
        ({"precision": "fp32"}, "precision changed"),
        ({"onnx": True}, "the ONNX graph changed"),
    ],
)
def test_stale_plans_are_detected_with_their_reason(engine_dir, paths, change, reason):
    entry = build_engines(paths, engine_dir, "fp16", ["unet"])[0]
    folder = engine_dir / "plans"
    write_plan(folder, "dynamic", b"plan-bytes", _key(entry), {})
    assert check_plan(folder, "dynamic", _key(entry)) [1] == ""
    if change.get("onnx"):
        files = {**entry.manifest["files"], "model.onnx": {**entry.manifest["files"]["model.onnx"], "sha256": "0" * 64}}
        change = {"entry_manifest": {**entry.manifest, "files": files}}
    manifest, why = check_plan(folder, "dynamic", _key(entry, **change))
    assert manifest is None and reason in why


def test_corrupt_truncated_and_unfinished_plans_are_rejected(engine_dir, paths, monkeypatch):
    entry = build_engines(paths, engine_dir, "fp16", ["unet"])[0]
    folder, key = engine_dir / "plans", _key(entry)
    write_plan(folder, "dynamic", b"0123456789", key, {})
    plan = folder / "dynamic.plan"
    plan.write_bytes(b"01234")
    assert "truncated" in check_plan(folder, "dynamic", key)[1]
    plan.write_bytes(b"0123456780")  # same size, other bytes, new modification time
    assert "corrupt" in check_plan(folder, "dynamic", key)[1]
    manifest_path = folder / "dynamic.json"
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "format": "dynamicid_rt.engines/0"}))
    assert "plan format tag changed" in check_plan(folder, "dynamic", key)[1]
    manifest_path.write_text("{not json")
    assert "unreadable" in check_plan(folder, "dynamic", key)[1]

    # A build interrupted while writing the new plan leaves no manifest, so nothing valid-looking.
    write_plan(folder, "dynamic", b"good plan", key, {})
    assert check_plan(folder, "dynamic", key)[0] is not None
    import dynamicid_rt.engines.plans as plans

    def interrupted(path, mode="wb"):
        raise KeyboardInterrupt

    monkeypatch.setattr(plans, "atomic_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_plan(folder, "dynamic", b"new plan", key, {})
    manifest, why = check_plan(folder, "dynamic", key)
    assert manifest is None and "did not finish" in why


# -- build settings through the stand-in ----------------------------------------------------------


def _islands(onnx_path) -> set[str]:
    """Independent reference: nodes of the fp16 graph that compute in fp32 (their outputs are float32)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    return {
        n.name for n in model.graph.node
        if n.op_type not in ("Cast", "Constant", "Shape") and n.output
        and all(types.get(o) == onnx.TensorProto.FLOAT for o in n.output)
    }


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_build_settings_reach_tensorrt(version, paths, engine_dir):
    trt = wrap("tensorrt", make_standin(version))
    settings = BuildSettings(workspace_gib=2, optimization_level=4)
    plans = build_plans(paths, engine_dir, "fp16", ["unet", "vae_decoder"], settings=settings, lib=trt, gpu=GPU)
    assert [(p.engine, p.tag, p.status) for p in plans] == [("unet", "dynamic", "built"), ("vae_decoder", "dynamic", "built")]
    unet, vae = (json.loads(p.path.read_bytes()) for p in plans)
    entry = build_engines(paths, engine_dir, "fp16", ["unet"])[0]
    assert unet["onnx"] == str(entry.onnx)  # the fp16 graph with its fp32 islands, on both versions
    assert unet["pool_limits"] == {"WORKSPACE": 2 * 2**30} and unet["optimization_level"] == 4
    want = {name: [list(s) for s in shapes] for name, shapes in ENGINES["unet"].profile(entry.dims).items()}
    assert unet["profiles"] == [want]
    assert "REFIT" in unet["flags"] and "REFIT" not in vae["flags"]
    assert unet["monitor_base"] is True
    if version == TRT11:
        assert unet["network_flags"] == 1 << 5  # STRONGLY_TYPED
        assert unet["flags"] == ["REFIT"] and unet["pinned_fp32"] == []
    else:
        assert unet["network_flags"] == 0
        assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(unet["flags"])
        islands = _islands(entry.onnx)
        assert set(unet["pinned_fp32"]) == islands
        ops = {n.name: n.op_type for n in onnx.load(str(entry.onnx)).graph.node}
        assert any(ops[n] == "Softmax" for n in islands)
        # The heavy ops stay fp16: every convolution and most matrix products (the exporter keeps a few
        # SAA gating products fp32).
        assert not any(ops[n] == "Conv" for n in islands)
        matmuls = [n for n, op in ops.items() if op == "MatMul"]
        assert 2 * sum(n in islands for n in matmuls) < len(matmuls)
    # The timing cache is kept and handed to the next build.
    timing = engine_dir / "tensorrt" / "unet-fp16" / "timing.cache"
    assert timing.read_bytes() == b"[timed]"
    again = build_plans(paths, engine_dir, "fp16", ["unet"], settings=settings, force=True, lib=trt, gpu=GPU)[0]
    assert json.loads(again.path.read_bytes())["timing_cache_in"] == "[timed]"


def test_valid_plans_are_reused_and_stale_ones_rebuilt_with_reason(paths, engine_dir, caplog):
    trt = wrap("tensorrt", make_standin(TRT10))
    build_plans(paths, engine_dir, "fp16", ["unet"], static=StaticSize(512, 512), lib=trt, gpu=GPU)
    assert STATE["builds"] == 2  # dynamic and static-512x512
    plans = build_plans(paths, engine_dir, "fp16", ["unet"], static=StaticSize(512, 512), lib=trt, gpu=GPU)
    assert [p.status for p in plans] == ["reused", "reused"] and STATE["builds"] == 2
    static = json.loads(plans[1].path.read_bytes())["profiles"][0]
    assert static["sample"] == [[1, 4, 64, 64], [2, 4, 64, 64], [2, 4, 64, 64]]
    with caplog.at_level(logging.INFO, logger="dynamicid_rt.engines"):
        plans = build_plans(paths, engine_dir, "fp16", ["unet"], lib=trt, gpu=replace(GPU, name="Another GPU"))
    assert plans[0].status == "built" and STATE["builds"] == 3
    assert "built on another GPU (Stand-in GPU 24GB -> Another GPU)" in caplog.text


def _entry_with_weights(entry, folder, change):
    """A copy of ``entry`` whose graph has other weights (a fine-tune) or another structure."""
    model = onnx.load(str(entry.onnx))
    if change == "weights":
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT16 and len(init.dims) >= 2:
                values = onnx.numpy_helper.to_array(init)
                init.CopyFrom(onnx.numpy_helper.from_array((values * np.float16(1.01)).astype(values.dtype), init.name))
    else:
        model.graph.node[-1].name += "-changed"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    files = {"model.onnx": {"sha256": structure_hash(folder / "model.onnx") + change, "size": 0}}
    return CacheEntry(entry.engine, entry.precision, folder, {**entry.manifest, "files": files}, reused=False)


def test_structure_hash_ignores_weight_values(paths, engine_dir, tmp_path):
    entry = build_engines(paths, engine_dir, "fp16", ["unet"])[0]
    tuned = _entry_with_weights(entry, tmp_path / "tuned", "weights")
    other = _entry_with_weights(entry, tmp_path / "other", "structure")
    assert tuned.onnx.read_bytes() != entry.onnx.read_bytes()
    assert structure_hash(tuned.onnx) == structure_hash(entry.onnx) != structure_hash(other.onnx)


def test_new_weights_refit_the_unet_plan_instead_of_rebuilding(paths, engine_dir, tmp_path):
    trt = wrap("tensorrt", make_standin(TRT10))
    unet, vae = build_engines(paths, engine_dir, "fp16", ["unet", "vae_decoder"])
    for entry in (unet, vae):
        ensure_plan(trt, GPU, entry, engine_dir, None, BuildSettings())
    assert STATE["builds"] == 2
    tuned = ensure_plan(trt, GPU, _entry_with_weights(unet, tmp_path / "u", "weights"), engine_dir, None, BuildSettings())
    assert tuned.status == "refit" and STATE["refits"] == 1 and STATE["builds"] == 2
    assert json.loads(tuned.path.read_bytes())["refit_from"] == str(tmp_path / "u" / "model.onnx")
    assert check_plan(tuned.folder, "dynamic", tuned.manifest)[0] is not None  # stored under the new key
    other = ensure_plan(trt, GPU, _entry_with_weights(unet, tmp_path / "o", "structure"), engine_dir, None, BuildSettings())
    assert other.status == "built" and STATE["builds"] == 3
    vae_tuned = ensure_plan(trt, GPU, _entry_with_weights(vae, tmp_path / "v", "weights"), engine_dir, None, BuildSettings())
    assert vae_tuned.status == "built"  # not built refittable


def test_out_of_memory_build_says_how_to_lower_the_workspace(paths, engine_dir):
    trt = wrap("tensorrt", make_standin(TRT11))
    STATE["out_of_memory"] = True
    with pytest.raises(EngineBuildError, match=r"ran out of GPU memory.*--workspace 1\b"):
        build_plans(paths, engine_dir, "fp16", ["vae_decoder"], settings=BuildSettings(workspace_gib=2), lib=trt, gpu=GPU)
    assert not list((engine_dir / "tensorrt" / "vae_decoder-fp16").glob("*.json"))


# -- the missing library --------------------------------------------------------------------------


def test_missing_tensorrt_names_the_pip_command_for_the_cuda_version(monkeypatch):
    banner = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |"
    assert library.parse_nvidia_smi_cuda(banner) == 12
    assert library.parse_nvidia_smi_cuda("no GPU here") is None
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    monkeypatch.setattr(library, "detect_cuda_major", lambda: 13)
    with pytest.raises(library.TensorRTUnavailable) as info:
        library.load("tensorrt")
    assert "pip install 'dynamicid-rt[tensorrt]' tensorrt-cu13" in str(info.value) and "cu12" not in str(info.value)
    monkeypatch.setattr(library, "detect_cuda_major", lambda: None)
    with pytest.raises(library.TensorRTUnavailable, match="tensorrt-cu12 .*CUDA 12.* or .*tensorrt-cu13"):
        library.load("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", make_standin("9.3.0"))
    with pytest.raises(library.TensorRTUnavailable, match="supports TensorRT 10 and TensorRT 11"):
        library.load("tensorrt")
    # A TensorRT-RTX 1.x module is never taken for TensorRT 1 (or 10): only its own declaration matches.
    assert library.declaration_for("tensorrt", "tensorrt", "1.7.1") is None
    assert library.declaration_for("tensorrt-rtx", "tensorrt_rtx_bindings", "1.7.1.116") is library.TENSORRT_RTX_1
    assert library.declaration_for("tensorrt", "tensorrt", "10.13.0") is library.TENSORRT_10


def test_build_engines_cli_reports_missing_tensorrt_before_exporting(tiny_bundle, tmp_path, monkeypatch, caplog):
    from dynamicid_rt.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(library, "detect_cuda_major", lambda: 12)
    code = main(["build-engines", "--models", str(tiny_bundle), "--engine-dir", str(tmp_path / "e"),
                 "--backend", "tensorrt", "--static", "512x512"])
    assert code == 1 and "tensorrt-cu12" in caplog.text
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_pipeline_on_tensorrt_without_it_says_how_to_install(tiny_bundle, monkeypatch):
    from dynamicid_rt import Pipeline
    from dynamicid_rt.backends import probes
    from dynamicid_rt.errors import DynamicIDError

    real = probes.installed
    monkeypatch.setattr(probes, "installed", lambda module: module != "tensorrt" and real(module))
    with pytest.raises(DynamicIDError, match=r"tensorrt backend needs tensorrt.*tensorrt-cu12 .*tensorrt-cu13"):
        Pipeline.load(tiny_bundle, backend="tensorrt")


def test_doctor_lines_for_the_plan_cache(paths, engine_dir):
    from dynamicid_rt.engines.plans import describe_cache
    from dynamicid_rt.engines.report import tensorrt_report

    entry = build_engines(paths, engine_dir, "fp16", ["vae_decoder"])[0]
    ensure_plan(wrap("tensorrt", make_standin(TRT10)), GPU, entry, engine_dir, None, BuildSettings())
    lines = describe_cache(engine_dir)
    assert len(lines) == 1 and lines[0].startswith("vae_decoder-fp16/dynamic: TensorRT 10.13.0, Stand-in GPU 24GB (sm 8.9)")
    (engine_dir / "tensorrt" / "vae_decoder-fp16" / "dynamic.plan").write_bytes(b"x")
    assert "truncated" in describe_cache(engine_dir)[0]
    from dynamicid_rt.backends.probes import installed

    if not installed("tensorrt"):
        assert "pip install 'dynamicid-rt[tensorrt]'" in tensorrt_report(None)[0]
