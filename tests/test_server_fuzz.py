"""schemathesis against the server's own OpenAPI schema, for a bounded number of cases: no 500s,
answers in the declared shapes, and no traceback in the log."""
from __future__ import annotations

import logging

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance  # noqa: E402

from server_helpers import start_server  # noqa: E402

EXAMPLES = {"POST /sdapi/v1/txt2img": 30}  # the other routes take no body: a few cases each
CLIENT_TIMEOUT_S = 20
# Valid but long work (1000 steps at 1024², batch 16, or the defaults) is shrunk to a moment's work; values out of
# range are kept, as they are what the fuzzing is for.
_SHRINK = {"steps": (2, 1000, 2), "batch_size": (1, 16, 1), "n_iter": (1, 100, 1), "width": (256, 1024, 256),
           "height": (256, 1024, 256)}


def _shrink_valid_work(body) -> None:
    if not isinstance(body, dict):
        return
    for key, (low, high, small) in _SHRINK.items():
        value = body.get(key, high)  # a missing field means the default: 50 steps at 512²
        if isinstance(value, int) and not isinstance(value, bool) and low < value <= high and (key not in ("width", "height") or value % 64 == 0):
            body[key] = small


def test_fuzz_openapi_schema(tiny_pipeline, caplog):
    caplog.set_level(logging.INFO)
    server, _ = start_server(tiny_pipeline)
    try:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} >= {"POST /sdapi/v1/txt2img", "GET /sdapi/v1/progress"}
        answered = 0
        for operation in operations:
            @settings(max_examples=EXAMPLES.get(operation.label, 5), deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def check(case):
                nonlocal answered
                _shrink_valid_work(case.body)
                response = case.call(base_url=server.url, timeout=CLIENT_TIMEOUT_S)
                answered += 1
                case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                         response_schema_conformance])

            check()
        assert answered >= sum(EXAMPLES.values())  # every txt2img case was answered
    finally:
        server.stop()
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
