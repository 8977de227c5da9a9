"""`serve --ray`: the app as a Ray Serve deployment with 2 CPU replicas on the tiny bundle.

Slow (about two minutes on 2 cores: Ray's start and two pipelines) and run in a private network
namespace, loopback only, because Ray's own services listen on every interface."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def report(tiny_bundle) -> dict:
    if not (shutil.which("unshare") and shutil.which("ip") and os.geteuid() == 0):
        pytest.skip("needs root with unshare and ip, to keep Ray inside a loopback-only network namespace")
    script = Path(__file__).with_name("ray_scenario.py")
    proc = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", f'ip link set lo up && exec "{sys.executable}" "{script}" "{tiny_bundle}"'],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_six_concurrent_requests_spread_over_both_replicas_equal_the_direct_api(report):
    results = report["concurrent"].values()
    assert all(r["status"] == 200 and r["equals_direct"] for r in results), report["concurrent"]
    assert len({r["replica"] for r in results}) == 2


@pytest.mark.slow
def test_a_client_that_disconnects_cancels_its_job_on_the_replica(report):
    assert report["disconnect"]["idle"] and report["disconnect"]["seconds"] < 30, report["disconnect"]


@pytest.mark.slow
def test_killing_a_replica_mid_run_gives_a_clear_error_and_ray_restores_it(report):
    client = report["killed"]["client"]
    # Ray Serve does not retry an HTTP request whose replica died: the client gets a 5xx at once.
    assert client["status"] is not None and client["status"] >= 500, client
    assert report["killed"]["seconds_after_kill"] < 30
    assert report["replicas_running_after"] == 2
    assert report["after_kill_request"]["status"] == 200


def test_serve_run_builder_configures_replicas_without_starting_ray():
    from dynamicid_rt import DynamicIDError
    from dynamicid_rt.server.ray_app import app_builder

    app = app_builder({"models": "/m", "device": "cpu", "replicas": "3", "api_auth": "u:p"})
    config = app._bound_deployment._deployment_config  # noqa: SLF001 (Ray keeps the options there)
    assert config.num_replicas == 3 and app._bound_deployment.ray_actor_options["num_gpus"] == 0  # noqa: SLF001
    with pytest.raises(DynamicIDError, match="unknown serve run arguments"):
        app_builder({"modles": "/m"})
