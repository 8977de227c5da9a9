"""Shared fixtures: one tiny bundle per test session (random weights, real formats and layout)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from dynamicid_rt.tiny.bundle import write_tiny_bundle

    # The same folder the exporter tests use, so one bundle (and one engine cache) serves the session.
    root = tmp_path_factory.getbasetemp() / "tiny-bundle"
    write_tiny_bundle(root)
    return root


@pytest.fixture(scope="session")
def tiny_engines(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle's fp32 ONNX engine cache, built once per session."""
    from dynamicid_rt.export import build_engines
    from dynamicid_rt.modelfiles.paths import ModelPaths

    folder = tmp_path_factory.getbasetemp() / "engines"
    build_engines(ModelPaths.from_folder(tiny_bundle), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_bundle, tmp_path_factory):
    from dynamicid_rt import Pipeline

    pipe = Pipeline.load(tiny_bundle, backend="torch", device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))
    yield pipe
    pipe.close()


@pytest.fixture(scope="session")
def samples(tiny_bundle) -> Path:
    return tiny_bundle / "samples"
