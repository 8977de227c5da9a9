"""Packaging (issue 11): core dependencies are the ones the package imports, the [gpu] extra brings
what insightface needs besides onnxruntime, and ``doctor`` reports clashing installs."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Distribution name -> the module it installs, where they differ.
MODULE_OF = {"pillow": "PIL", "opencv-python": "cv2", "scikit-image": "skimage", "PySide6-Essentials": "PySide6"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def _imported_modules() -> set[str]:
    modules = set()
    for folder in ("dynamicid_rt", "export", "engines", "desktop"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    modules.add(node.module.split(".")[0])
                elif isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
    return modules


def test_core_dependencies_are_imported_by_the_package():
    imported = _imported_modules()
    for requirement in _project()["dependencies"]:
        name = _name(requirement)
        assert MODULE_OF.get(name, name.replace("-", "_")) in imported, f"core dependency {name} is never imported"


def test_gpu_extra_brings_insightface_runtime_needs_except_onnxruntime():
    """[gpu] users install insightface with --no-deps, so [gpu] must carry its other requirements,
    spelt as insightface's own metadata spells them (opencv-python, not -headless)."""
    try:
        requires = importlib.metadata.requires("insightface") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("insightface is not installed here")
    needed = {_name(r).lower() for r in requires if "extra ==" not in r} - {"onnxruntime"}
    extras = _project()["optional-dependencies"]
    have = {_name(r).lower() for r in _project()["dependencies"] + extras["gpu"]}
    assert needed <= have, f"[gpu] lacks {sorted(needed - have)}"
    everything = [_name(r) for group in (_project()["dependencies"], *extras.values()) for r in group]
    assert "opencv-python-headless" not in everything  # it and opencv-python overwrite each other's cv2


def test_doctor_reports_onnxruntime_and_onnxruntime_gpu_together(monkeypatch):
    from dynamicid_rt import doctor as reports

    real = reports._version
    monkeypatch.setattr(reports, "_version", lambda dist: "1.20.0" if dist in ("onnxruntime", "onnxruntime-gpu") else real(dist))
    text, ok = reports.doctor_report(None)
    conflict = [line for line in text.splitlines() if line.startswith("CONFLICT")]
    assert not ok and len(conflict) == 1
    assert "onnxruntime and onnxruntime-gpu" in conflict[0] and "pip uninstall -y onnxruntime onnxruntime-gpu" in conflict[0]
