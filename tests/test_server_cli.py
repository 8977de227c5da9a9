"""`dynamicid-rt serve` as a user starts it: safe defaults, HTTP Basic auth, the port check."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time

import pytest
import requests

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webuiapi = pytest.importorskip("webuiapi")

from dynamicid_rt.cli import main as cli_main  # noqa: E402
from server_helpers import LOOPBACK  # noqa: E402


def _error(caplog) -> str:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR][-1]


def test_listen_without_api_auth_refuses_to_start(tiny_bundle, caplog):
    # Refused before any socket is opened or model loaded (no address but loopback is ever bound in tests).
    assert cli_main(["serve", "--models", str(tiny_bundle), "--listen", "--port", "0"]) == 1
    assert "--listen" in _error(caplog) and "--api-auth" in _error(caplog)
    assert cli_main(["serve", "--models", str(tiny_bundle), "--api-auth", "nopassword", "--port", "0"]) == 1
    assert "expected USER:PASS" in _error(caplog)
    assert cli_main(["serve", "--models", str(tiny_bundle), "--replicas", "2", "--port", "0"]) == 1
    assert "only with --ray" in _error(caplog)


@pytest.fixture(scope="module")
def served(tiny_bundle, tmp_path_factory):
    """The real command in its own process, on a free loopback port, with credentials."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path_factory.mktemp("serve-cache")))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynamicid_rt", "serve", "--models", str(tiny_bundle), "--backend", "torch", "--device", "cpu",
         "--port", "0", "--api-auth", "alice:s3cret,bob:hunter2"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    lines = []
    deadline = time.monotonic() + 120
    port = None
    while port is None:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        lines.append(line)
        found = re.search(rf"serving on http://{re.escape(LOOPBACK)}:(\d+)", line)
        port = int(found.group(1)) if found else None
    yield port
    proc.terminate()
    proc.wait(30)


def test_api_auth(served):
    url = f"http://{LOOPBACK}:{served}/sdapi/v1/options"
    assert requests.get(url).status_code == 401
    wrong = requests.get(url, auth=("alice", "wrong"))
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(url, auth=("bob", "s3cret")).status_code == 401  # a password is only its own user's
    assert requests.get(f"http://{LOOPBACK}:{served}/docs").status_code == 401  # the docs too
    assert requests.get(url, auth=("bob", "hunter2")).status_code == 200
    api = webuiapi.WebUIApi(host=LOOPBACK, port=served, username="alice", password="s3cret")
    assert api.get_sd_models()[0]["model_name"]  # the client's own auth reaches the routes
    denied = webuiapi.WebUIApi(host=LOOPBACK, port=served, username="alice", password="nope").get_sd_models()
    assert "wrong or missing user name and password" in denied["detail"]


def test_port_in_use_is_one_line(served, tiny_bundle, caplog):
    assert cli_main(["serve", "--models", str(tiny_bundle), "--port", str(served)]) == 1
    assert f"cannot listen on {LOOPBACK}:{served}" in _error(caplog)
