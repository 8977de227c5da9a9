"""``dynamicid-rt serve``: its arguments, the safety checks before anything starts, and the run
(uvicorn on one machine, or Ray Serve with ``--ray``). FastAPI, uvicorn and Ray are imported only
when the command runs."""
from __future__ import annotations

import argparse
import logging
import math
import signal
import socket
from pathlib import Path
from typing import Any, Callable

from .. import DynamicIDError
from ..modelfiles.part_options import part_overrides
from .credentials import parse_auth

log = logging.getLogger("dynamicid_rt")

LOOPBACK, ALL_INTERFACES = "127.0.0.1", "0.0.0.0"
MAX_UPLOAD_MB = 4096.0  # a request body beyond this is no photo upload


def register(sub: argparse._SubParsersAction, add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    s = sub.add_parser("serve", help="serve AUTOMATIC1111's web API (/sdapi/v1/txt2img...) for existing clients")
    add_model_args(s)
    s.add_argument("--port", type=int, default=7860, help="TCP port, 0 for any free one (default: %(default)s, A1111's)")
    s.add_argument("--listen", action="store_true",
                   help="listen on every network interface instead of 127.0.0.1 only (requires --api-auth)")
    s.add_argument("--api-auth", metavar="USER:PASS[,USER:PASS]", default=None,
                   help="HTTP Basic credentials every request must carry, comma-separated pairs as in A1111")
    s.add_argument("--max-upload-mb", type=float, default=32.0,
                   help="largest request body in MiB, photos as base64 included (default: %(default)s)")
    s.add_argument("--lora-dir", type=Path, default=None, metavar="DIR",
                   help="LoRA folder (A1111's models/Lora): prompts' <lora:NAME:WEIGHT> tags name its .safetensors files")
    s.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (the [ray] extra); "
                   "joins the cluster of RAY_ADDRESS or `ray start`, else starts a local Ray")
    s.add_argument("--replicas", type=int, default=1, help="with --ray: pipelines, one per replica (default: %(default)s)")
    s.set_defaults(handler=cmd_serve)


def check_serve_args(args: argparse.Namespace) -> tuple[str, list[tuple[str, str]]]:
    """The host to bind and the credentials, after the checks that come before any model loads."""
    credentials = parse_auth(args.api_auth)
    if args.listen and not credentials:
        raise DynamicIDError("--listen makes the server reachable from the network: give --api-auth USER:PASS too")
    if not 0 <= args.port <= 65535:
        raise DynamicIDError(f"--port {args.port}: must be from 0 to 65535")
    if args.replicas < 1 or (args.replicas != 1 and not args.ray):
        raise DynamicIDError(f"--replicas {args.replicas}: give a number >= 1, and more than 1 only with --ray")
    lora_dir = getattr(args, "lora_dir", None)
    if lora_dir is not None and not Path(lora_dir).expanduser().is_dir():
        raise DynamicIDError(f"--lora-dir {lora_dir}: not a folder; give the folder that holds your LoRA .safetensors files")
    if not (math.isfinite(args.max_upload_mb) and 0 < args.max_upload_mb <= MAX_UPLOAD_MB):
        raise DynamicIDError(f"--max-upload-mb {args.max_upload_mb}: must be a number above 0 and at most {MAX_UPLOAD_MB:g} (MiB)")
    return (ALL_INTERFACES if args.listen else LOOPBACK), credentials


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``Pipeline.load`` arguments of the model options, as plain values (Ray ships them to replicas)."""
    overrides = {k: str(v) for k, v in part_overrides(args).items()}
    return dict(models=str(args.models) if args.models else None, backend=args.backend, device=args.device,
                precision=args.precision, onnx_cache=str(args.onnx_cache) if args.onnx_cache else None,
                backend_options=dict.fromkeys(args.backend_options or (), True), **overrides)  # the switch flags given


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DynamicIDError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    sock.listen(128)  # clients that come before uvicorn runs wait in the backlog, never refused
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    host, credentials = check_serve_args(args)
    max_upload = int(args.max_upload_mb * 2**20)
    if args.ray:
        from .ray_app import run_ray

        return run_ray(load_kwargs(args), host, args.port, credentials, max_upload, args.replicas, args.lora_dir)
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise DynamicIDError(f"`dynamicid-rt serve` needs FastAPI and uvicorn: pip install 'dynamicid-rt[serve]' ({exc})") from None
    from .. import Pipeline
    from .service import Service

    sock = _bind(host, args.port)  # a port in use is reported before minutes of model loading
    service = Service(Pipeline.load(**load_kwargs(args)), lora_dir=args.lora_dir)
    app = create_app(service, credentials, max_upload)
    log.info("dynamicid-rt serving on http://%s:%d (API docs at /docs)", host, sock.getsockname()[1])

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            # Running jobs stop at their next step and their clients get a 503 with a line, before
            # uvicorn's graceful shutdown would cancel them into a bare 500.
            service.shutdown()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=5))
    # uvicorn raises the signal that stopped it again once it has shut down; a service manager's
    # stop (SIGTERM) is a normal end, exit status 0.
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
