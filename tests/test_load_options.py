"""Pipeline.load's keywords after the structure clean-up (issue #16): ``onnx_cache`` and
``backend_options``, the old spellings as deprecated aliases, and unknown options refused in one line."""
from __future__ import annotations

import pytest

from dynamicid_rt import BACKEND_OPTIONS, Pipeline
from dynamicid_rt.errors import DynamicIDError


def test_engine_dir_is_a_deprecated_alias_of_onnx_cache(tiny_bundle, tmp_path):
    with pytest.warns(DeprecationWarning, match="onnx_cache"):
        pipe = Pipeline.load(tiny_bundle, backend="onnxruntime", engine_dir=tmp_path / "old", cache_dir=tmp_path / "ids")
    try:
        assert pipe.backend.describe()["engine_dir"] == str(tmp_path / "old")
        assert (tmp_path / "old" / "unet-fp32" / "manifest.json").is_file()
    finally:
        pipe.close()


def test_trt_provider_keyword_is_a_deprecated_backend_option(tiny_bundle, tmp_path):
    with pytest.warns(DeprecationWarning, match="backend_options"):
        pipe = Pipeline.load(tiny_bundle, backend="torch", device="cpu", trt_provider=False, cache_dir=tmp_path)
    pipe.close()


def test_an_unknown_backend_option_is_one_line_naming_the_known_ones(tiny_bundle, tmp_path):
    with pytest.raises(DynamicIDError) as info:
        Pipeline.load(tiny_bundle, backend="onnxruntime", backend_options={"cuda_graph": True}, cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "'cuda_graph'" in message and "trt_provider" in message
    assert set(BACKEND_OPTIONS) == {"trt_provider", "cuda_graphs"}
