"""Requests per minute and p50/p95 latency of `dynamicid-rt serve --ray` with 1 and 2 replicas,
in one run (default: the tiny bundle, 256², 4 steps, CPU replicas, one person per request).

    python benchmarks/bench_serve.py [--models DIR] [--requests 24] [--concurrency 4] [--backend torch] [--rounds 1]

Ray's own services listen on every interface, so as root with `unshare` the benchmark re-runs
itself in a private network namespace where only loopback exists (``--no-isolate`` to skip).
"""
from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PORT = 8766


def _isolated() -> bool:
    return os.environ.get("DYNAMICID_BENCH_ISOLATED") == "1"


def _reexec_isolated() -> int:
    env = dict(os.environ, DYNAMICID_BENCH_ISOLATED="1")
    command = " ".join(f'"{a}"' for a in [sys.executable, *sys.argv])
    return subprocess.call(["unshare", "--net", "--", "sh", "-c", f"ip link set lo up && exec {command}"], env=env)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> None:
    import ray
    import requests
    from ray import serve

    from dynamicid_rt.server.ray_app import APP_NAME, build_app

    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="bench-serve-"))
    models = args.models
    if models is None:
        from dynamicid_rt.tiny.bundle import write_tiny_bundle

        models = str(write_tiny_bundle(Path(tempfile.mkdtemp(prefix="bench-serve-tiny-"))).root)
    photo = base64.b64encode((Path(models) / "samples" / "person_a.png").read_bytes()).decode() if args.models is None else None
    people = {"dynamicid": {"args": [{"image": photo}]}} if photo else {}
    body = {"prompt": "a portrait, photo", "width": 256, "height": 256, "steps": args.steps, "cfg_scale": 5,
            "sampler_name": "Euler", "alwayson_scripts": people}
    url = f"http://127.0.0.1:{PORT}/sdapi/v1/txt2img"

    def one(seed: int) -> float:
        start = time.perf_counter()
        response = requests.post(url, json={**body, "seed": seed}, timeout=600)
        response.raise_for_status()
        return time.perf_counter() - start

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    rows = []
    try:
        for replicas in [1, 2] * args.rounds:  # rounds interleaved: load from other jobs hits both alike
            load = {"models": models, "backend": args.backend, "device": "cpu"}
            threads = args.cpus_per_replica or max(1, cpus // replicas)  # as `serve --ray` splits the cores
            serve.run(build_app(load, [], 32 << 20, replicas, 0, threads), name=APP_NAME, route_prefix="/")
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(one, range(2 * replicas)))  # warm every replica (first-call costs, identity cache)
                start = time.perf_counter()
                latencies = list(pool.map(one, range(100, 100 + args.requests)))
                wall = time.perf_counter() - start
            rows.append((replicas, 60 * args.requests / wall, statistics.median(latencies), _percentile(latencies, 0.95)))
            serve.delete(APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"{args.requests} requests, {args.concurrency} concurrent clients, 256x256, {args.steps} steps, "
          f"{args.backend} on {cpus} CPU cores, "
          + (f"{args.cpus_per_replica} per replica" if args.cpus_per_replica else "split between the replicas"))
    print("| round | replicas | requests/min | p50 s | p95 s |\n| --- | --- | --- | --- | --- |")
    for k, (replicas, rpm, p50, p95) in enumerate(rows):
        print(f"| {k // 2 + 1} | {replicas} | {rpm:.1f} | {p50:.2f} | {p95:.2f} |")
    ratios = [rows[k + 1][1] / rows[k][1] for k in range(0, len(rows), 2)]
    print(f"scaling 2 vs 1 replica (requests/min), per round: {', '.join(f'{r:.2f}x' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="model folder (default: a fresh tiny bundle)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cpus-per-replica", type=int, default=None,
                        help="Ray CPUs (and threads) per replica (default: the cores split between the replicas)")
    parser.add_argument("--rounds", type=int, default=1, help="1-then-2-replica rounds (default: %(default)s)")
    parser.add_argument("--no-isolate", action="store_true", help="run Ray in this network namespace")
    args = parser.parse_args()
    if not args.no_isolate and not _isolated() and os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        return _reexec_isolated()
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
