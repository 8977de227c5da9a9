"""``dynamicid-rt serve --ray``: the same FastAPI app as a Ray Serve deployment.

Each replica loads one pipeline and serves the whole app over it (its own queue, one generation
at a time). Ray routes requests between replicas, restarts a replica that dies, and with
``RAY_ADDRESS`` or ``ray start`` runs on a cluster; this module only configures it. ``/progress``
and ``/interrupt`` answer for the replica they reach.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Sequence

from .. import DynamicIDError

try:
    import ray
    from ray import serve
except ImportError as exc:
    raise DynamicIDError(f"`dynamicid-rt serve --ray` needs Ray Serve: pip install 'dynamicid-rt[ray]' ({exc})") from None

log = logging.getLogger("dynamicid_rt")

APP_NAME = "dynamicid"
# Requests a replica takes at once (A1111 polls /progress while a txt2img runs); more wait in Ray.
MAX_ONGOING_REQUESTS = 4


@serve.ingress()
class DynamicIDReplica:
    """One pipeline and its app; built in the replica's own process."""

    def __init__(self, load_kwargs: dict[str, Any], credentials: Sequence[tuple[str, str]], max_upload: int,
                 lora_dir: str | None = None) -> None:
        from .. import Pipeline
        from .service import Service

        self._service = Service(Pipeline.load(**load_kwargs), lora_dir=lora_dir)
        self._credentials, self._max_upload = list(credentials), max_upload
        self._replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self._service, self._credentials, self._max_upload, replica=self._replica)


def build_app(load_kwargs: dict[str, Any], credentials: Sequence[tuple[str, str]], max_upload: int, replicas: int,
              gpus_per_replica: int, cpus_per_replica: int = 1, lora_dir: str | None = None) -> "serve.Application":
    """The Ray Serve application: ``replicas`` copies of the app, each on its own GPU or its share
    of the CPUs (Ray sets a replica's thread count, OMP_NUM_THREADS, to its CPUs)."""
    deployment = serve.deployment(
        DynamicIDReplica, name="DynamicID", num_replicas=replicas, max_ongoing_requests=MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
    )
    return deployment.bind(load_kwargs, list(credentials), max_upload, lora_dir)


def app_builder(args: dict[str, str]) -> "serve.Application":
    """For Ray's own CLI: ``serve run dynamicid_rt.server.ray_app:app_builder models=DIR replicas=2
    [backend=auto device=cuda api_auth=USER:PASS max_upload_mb=32]`` (CPU replicas when device=cpu)."""
    from .credentials import parse_auth

    known = {"models", "backend", "device", "replicas", "api_auth", "max_upload_mb"}
    if set(args) - known:
        raise DynamicIDError(f"unknown serve run arguments {sorted(set(args) - known)}; use {', '.join(sorted(known))}")
    load = {"models": args.get("models"), "backend": args.get("backend", "auto"), "device": args.get("device")}
    gpus = 0 if args.get("device") == "cpu" else 1
    return build_app(load, parse_auth(args.get("api_auth")), int(float(args.get("max_upload_mb", 32)) * 2**20),
                     int(args.get("replicas", 1)), gpus)


def run_ray(load_kwargs: dict[str, Any], host: str, port: int, credentials: Sequence[tuple[str, str]], max_upload: int,
            replicas: int, lora_dir: str | os.PathLike | None = None) -> int:
    """Start (or join) Ray, deploy the app on ``host:port`` and serve until interrupted."""
    if port == 0:
        raise DynamicIDError("--ray needs a fixed --port (Ray Serve's proxy does not pick a free one)")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:  # a private local Ray; on loopback unless --listen
        ray.init(include_dashboard=False, **({"_node_ip_address": host} if host == "127.0.0.1" else {}))
    try:
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) >= 1 and load_kwargs.get("device") != "cpu" else 0
        cpus = 1 if gpus else max(1, int(resources.get("CPU", 1)) // replicas)
        serve.start(http_options={"host": host, "port": port})
        folder = str(lora_dir) if lora_dir is not None else None
        serve.run(build_app(load_kwargs, credentials, max_upload, replicas, gpus, cpus, folder), name=APP_NAME, route_prefix="/")
        log.info("dynamicid-rt serving on http://%s:%d with Ray Serve, %d replica(s) on %s (API docs at /docs)",
                 host, port, replicas, "GPUs" if gpus else "CPUs")
        # A service manager's stop (SIGTERM) and Ctrl-C both take the deployment down and exit 0,
        # as `serve` without Ray does.
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _signum, _frame: stop.set())
        while not stop.wait(0.5):  # a timed wait: the handlers run between the waits
            pass
        log.info("dynamicid-rt: stopping Ray Serve")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
