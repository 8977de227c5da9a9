"""Shared fixtures: one tiny bundle per test session (random weights, real formats and layout)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from dynamicid_rt.tiny.bundle import write_tiny_bundle

    root = tmp_path_factory.mktemp("bundle") / "models"
    write_tiny_bundle(root)
    return root


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_bundle, tmp_path_factory):
    from dynamicid_rt import Pipeline

    pipe = Pipeline.load(tiny_bundle, backend="torch", device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))
    yield pipe
    pipe.close()


@pytest.fixture(scope="session")
def samples(tiny_bundle) -> Path:
    return tiny_bundle / "samples"
