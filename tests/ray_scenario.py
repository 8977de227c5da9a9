"""The Ray Serve checks of tests/test_server_ray.py, run as one script inside a private network
namespace (``unshare --net``, loopback only): Ray's own services listen on every interface of the
machine, and the tests must not be reachable from outside it.

Prints one JSON object: per request its status, replica and whether the image equals the direct
API's; what the client saw when a replica's process was killed mid-run; and whether Ray restored it.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import ray
import requests
from PIL import Image
from ray import serve

from dynamicid_rt import Pipeline, Request
from dynamicid_rt.server.ray_app import APP_NAME, build_app

PORT = 8765  # inside the namespace nothing else listens
SMALL = {"width": 256, "height": 256, "steps": 2, "sampler_name": "Euler", "cfg_scale": 5}


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def _post(body: dict, timeout: float = 300) -> dict:
    start = time.monotonic()
    try:
        r = requests.post(f"http://127.0.0.1:{PORT}/sdapi/v1/txt2img", json=body, timeout=timeout)
    except requests.RequestException as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"[:300], "seconds": time.monotonic() - start}
    out = {"status": r.status_code, "replica": r.headers.get("x-dynamicid-replica"), "seconds": time.monotonic() - start}
    if r.status_code == 200:
        images = r.json()["images"]
        out["digests"] = [_digest(np.asarray(Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB"))) for i in images]
    else:
        out["text"] = r.text[:300]
    return out


def _replica_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "ServeReplica:" in " ".join(p.info["cmdline"] or [])]


def _running_replicas() -> int:
    status = serve.status().applications[APP_NAME].deployments["DynamicID"]
    return status.replica_states.get("RUNNING", 0)


def main(bundle: str) -> None:
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ray-scenario-")
    report: dict = {}
    started = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    load = {"models": bundle, "backend": "torch", "device": "cpu"}
    serve.run(build_app(load, [], 32 << 20, replicas=2, gpus_per_replica=0), name=APP_NAME, route_prefix="/")
    report["startup_seconds"] = time.monotonic() - started

    seeds = list(range(300, 306))
    results: dict[int, dict] = {}
    threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, _post({"prompt": "a red boat", "seed": s, **SMALL})))
               for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Ray runs a 1-CPU replica with one thread (OMP_NUM_THREADS=1); the direct API here does the
    # same, since float sums in another order differ in their last bits.
    import torch

    torch.set_num_threads(1)
    with Pipeline.load(bundle, backend="torch", device="cpu") as pipe:  # the direct API, in this process
        for s in seeds:
            direct = pipe.generate(Request(prompt="a red boat", seed=s, width=256, height=256, steps=2, sampler="euler", guidance=5.0))
            results[s]["equals_direct"] = results[s].get("digests") == [_digest(np.asarray(direct.images[0]))]
    report["concurrent"] = results

    # A client that goes away mid-job: Ray cancels the request, the replica cancels the job.
    body = json.dumps({"prompt": "x", "seed": 3, **SMALL, "steps": 1000}).encode()  # minutes, if not cancelled
    with socket.create_connection(("127.0.0.1", PORT)) as sock:
        sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(4)
    closed_at, idle_polls = time.monotonic(), 0
    while idle_polls < 10 and time.monotonic() - closed_at < 60:  # ten answers in a row, from either replica
        running = requests.get(f"http://127.0.0.1:{PORT}/sdapi/v1/progress", timeout=30).json()["queue"]["running"]
        idle_polls = idle_polls + 1 if running == 0 else 0
        time.sleep(0.2)
    report["disconnect"] = {"idle": idle_polls >= 10, "seconds": time.monotonic() - closed_at}

    # A long job; then SIGKILL the replica process that is busy with it.
    outcome: dict = {}
    long = threading.Thread(target=lambda: outcome.update(_post({"prompt": "x", "seed": 1, **SMALL, "steps": 400})))
    long.start()
    time.sleep(4)
    procs = _replica_processes()
    for p in procs:
        p.cpu_percent(None)
    time.sleep(1.0)
    busy = max(procs, key=lambda p: p.cpu_percent(None))
    os.kill(busy.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    long.join(300)
    report["killed"] = {"client": outcome, "seconds_after_kill": time.monotonic() - killed_at}
    deadline = time.monotonic() + 120
    while _running_replicas() < 2 and time.monotonic() < deadline:
        time.sleep(1)
    report["replicas_running_after"] = _running_replicas()
    report["after_kill_request"] = _post({"prompt": "x", "seed": 2, **SMALL})
    serve.shutdown()
    ray.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
