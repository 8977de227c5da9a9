"""Pipeline.load's keywords after the structure clean-up (issue #16): ``onnx_cache`` and
``backend_options``; the unreleased old spellings and unknown options refused in one line."""
from __future__ import annotations

import pytest

from dynamicid_rt import BACKEND_OPTIONS, Pipeline
from dynamicid_rt.errors import DynamicIDError


@pytest.mark.parametrize("keyword", ["engine_dir", "trt_provider", "cuda_graphs"])
def test_the_unreleased_old_keywords_are_refused_in_one_line(tiny_bundle, tmp_path, keyword):
    # engine_dir / trt_provider / cuda_graphs were spellings no release carried: refused before any work.
    with pytest.raises(DynamicIDError) as info:
        Pipeline.load(tiny_bundle, backend="onnxruntime", cache_dir=tmp_path, **{keyword: tmp_path / "x"})
    assert "\n" not in str(info.value) and keyword in str(info.value)
    assert not (tmp_path / "x").exists()


def test_an_unknown_backend_option_is_one_line_naming_the_known_ones(tiny_bundle, tmp_path):
    with pytest.raises(DynamicIDError) as info:
        Pipeline.load(tiny_bundle, backend="onnxruntime", backend_options={"cuda_graph": True}, cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "'cuda_graph'" in message and "trt_provider" in message
    assert set(BACKEND_OPTIONS) == {"trt_provider", "cuda_graphs"}
