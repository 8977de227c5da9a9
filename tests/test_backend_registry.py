"""The backend registry: declarations agree with the classes, precisions are checked before any
model loads, a new backend needs only a registration, and ``auto`` picks as documented when only
some backends are installed (modules hidden in a subprocess by a sys.meta_path blocker)."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dynamicid_rt.backends import BACKENDS, Backend, BackendInfo, backend_info, choose_auto, create_backend, probes
from dynamicid_rt.contract import ENGINES
from dynamicid_rt.errors import BackendError
from dynamicid_rt.modelfiles.paths import ModelPaths

# A meta-path finder that makes the named top-level packages look uninstalled.
BLOCKER = textwrap.dedent(
    """
    import sys
    class Blocker:
        def __init__(self, names): self.names = set(names)
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.names:
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
            return None
    sys.meta_path.insert(0, Blocker(HIDDEN))
    """
)


def _run_hidden(hidden: list[str], body: str) -> dict:
    script = f"HIDDEN = {hidden!r}\n{BLOCKER}\n{textwrap.dedent(body)}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


AUTO_BODY = """
    import json
    from dynamicid_rt.backends import choose_auto
    from dynamicid_rt.errors import BackendError
    try:
        choice = choose_auto(device="cpu")
        print(json.dumps({"backend": choice.backend, "device": choice.device, "why": choice.explain()}))
    except BackendError as exc:
        print(json.dumps({"backend": None, "why": str(exc)}))
"""


def _installed(*modules: str) -> bool:
    return all(probes.installed(m) for m in modules)


@pytest.mark.parametrize(
    ("hidden", "expected"),
    [
        ([], "openvino"),
        (["openvino"], "onnxruntime"),
        (["openvino", "onnxruntime"], "torch"),
        (["onnxruntime", "torch"], "openvino"),
        (["openvino", "onnxruntime", "torch"], None),
    ],
)
def test_auto_on_the_cpu_follows_the_documented_order(hidden, expected):
    needed = {"openvino": ["openvino"], "onnxruntime": ["onnxruntime"], "torch": ["torch", "diffusers"], None: []}[expected]
    if not _installed(*needed):
        pytest.skip(f"{expected} is not installed here")
    report = _run_hidden(hidden, AUTO_BODY)
    assert report["backend"] == expected, report
    cpu_order = ["openvino", "onnxruntime", "torch"]
    better = cpu_order[: cpu_order.index(expected)] if expected else cpu_order
    for name in better:  # the log says why each better backend was passed over
        assert f"{name} cpu: {name}" in report["why"] and "not installed" in report["why"]
    if expected is None:
        assert "found no usable backend" in report["why"]


def test_auto_backend_runs_without_torch_when_it_picks_onnxruntime(tiny_bundle, tiny_engines, samples, tmp_path):
    """Pipeline.load's default (auto) with OpenVINO hidden: onnxruntime runs the image, torch stays out."""
    body = f"""
        import json, sys
        from dynamicid_rt import Pipeline, Request
        pipe = Pipeline.load({str(tiny_bundle)!r}, onnx_cache={str(tiny_engines)!r}, cache_dir={str(tmp_path)!r})
        a = pipe.encode_identity({str(samples / "person_a.png")!r})
        result = pipe.generate(Request(prompt="x", identities=[a], width=256, height=256, steps=2, seed=0))
        print(json.dumps({{"backend": result.backend, "torch": "torch" in sys.modules, "size": list(result.images[0].size)}}))
    """
    assert _run_hidden(["openvino"], body) == {"backend": "onnxruntime", "torch": False, "size": [256, 256]}


def test_auto_respects_a_requested_precision():
    choice = choose_auto(device="cpu", precision="fp32")
    assert "fp32" in backend_info(choice.backend).precisions_here("cpu")
    with pytest.raises(BackendError, match="does not run fp16 here"):
        choose_auto(device="cpu", precision="fp16")


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_declarations_agree_with_the_classes(name):
    info = BACKENDS[name]
    if info.missing_packages():
        pytest.skip(f"{name} needs {', '.join(info.missing_packages())}")
    module_name, _, class_name = info.target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    assert issubclass(cls, Backend) and cls.name == name
    params = inspect.signature(cls.__init__).parameters
    assert list(params)[:2] == ["self", "paths"] and set(info.options) <= set(params)
    undeclared = set(list(params)[2:]) - set(info.options)  # create_backend never passes these
    assert all(params[p].default is not inspect.Parameter.empty for p in undeclared)
    if "activation_maps" in info.capabilities:
        assert callable(getattr(cls, "activation_maps", None))
    if "device_bind" in info.capabilities:
        assert cls.bind is not Backend.bind  # it really keeps constants bound, not the generic fallback


def test_precisions_are_checked_before_any_model_loads(tiny_bundle):
    paths = ModelPaths.from_folder(tiny_bundle)
    with pytest.raises(BackendError, match="cannot run bf16 on cpu.*runs fp32"):
        create_backend("onnxruntime", paths, device="cpu", precision="bf16")
    with pytest.raises(BackendError, match="cannot run fp16 on cpu"):
        create_backend("torch", paths, device="cpu", precision="fp16")
    with pytest.raises(BackendError, match="unknown backend 'onnx'.*auto"):
        create_backend("onnx", paths)
    if not probes.cpu_has_bf16():
        with pytest.raises(BackendError, match="no bf16 units"):
            create_backend("torch", paths, device="cpu", precision="bf16")


class EchoBackend(Backend):
    """A fourth backend defined outside the package: it runs every engine as zeros of the contract's shapes."""

    name = "echo"

    def __init__(self, paths, device=None, precision=None):
        from dynamicid_rt.models.base import read_model_dims

        super().__init__(read_model_dims(paths), paths.has_imr)
        self.device, self.precision = device, precision

    def run(self, engine, inputs):
        axes = {"B": len(inputs[ENGINES[engine].inputs[0].name])}
        shapes = ENGINES[engine].shapes(self.dims, **axes, h=8, w=8, N=1, M=1)
        return {t.name: np.zeros(shapes[t.name], np.float32) for t in ENGINES[engine].outputs}


def test_a_new_backend_needs_only_its_registration(tiny_bundle, monkeypatch):
    monkeypatch.setitem(BACKENDS, "echo", BackendInfo(
        name="echo", target=f"{__name__}:EchoBackend", extra="echo", requires=("numpy",),
        precisions={"cpu": ("fp32",)}, auto_rank={"cpu": 1},
    ))
    backend = create_backend("auto", ModelPaths.from_folder(tiny_bundle), device="cpu")
    assert isinstance(backend, EchoBackend) and (backend.device, backend.precision) == ("cpu", "fp32")
    out = backend.run("text_encoder", {"input_ids": np.zeros((2, 77), np.int64)})
    assert out["last_hidden_state"].shape == (2, 77, backend.dims.context_dim)


def test_a_missing_package_names_the_pip_extra(monkeypatch, tiny_bundle):
    monkeypatch.setitem(BACKENDS, "ghost", BackendInfo(
        name="ghost", target="ghost_backend:Ghost", extra="ghost", requires=("no_such_package_dynamicid",),
        precisions={"cpu": ("fp32",)},
    ))
    with pytest.raises(BackendError, match=r"pip install 'dynamicid-rt\[ghost\]'"):
        create_backend("ghost", ModelPaths.from_folder(tiny_bundle))


def test_doctor_shows_what_auto_would_pick(capsys):
    from dynamicid_rt.cli import main

    main(["doctor"])
    out = capsys.readouterr().out
    assert f"auto picks: {choose_auto().backend} on" in out
    for name, info in BACKENDS.items():
        assert any(line.strip().startswith(name) for line in out.splitlines()), name
