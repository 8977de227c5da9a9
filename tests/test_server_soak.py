"""Peak memory of the server stays flat over 100 requests (slow: about a minute on 2 cores)."""
from __future__ import annotations

import resource

import pytest

pytest.importorskip("fastapi")
webuiapi = pytest.importorskip("webuiapi")

from server_helpers import b64, start_server  # noqa: E402

pytestmark = pytest.mark.slow


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def test_peak_rss_flat_over_100_requests(tiny_pipeline, samples):
    server, _ = start_server(tiny_pipeline)
    try:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
        people = {"dynamicid": {"args": [{"image": b64(samples / "person_a.png")}]}}

        def request(seed: int) -> None:
            result = api.txt2img(prompt="x", seed=seed, width=256, height=256, steps=1, alwayson_scripts=people)
            assert len(result.images) == 1

        for seed in range(10):  # warm: first-call allocations, identity cache
            request(seed)
        warm = _peak_rss_mib()
        for seed in range(10, 110):
            request(seed)
        grown = _peak_rss_mib() - warm
        assert grown < 0.05 * warm, f"peak RSS grew {grown:.1f} MiB over 100 requests (from {warm:.1f} MiB)"
    finally:
        server.stop()
