"""A real uvicorn server on a free 127.0.0.1 port, in a thread of the test process (so tests can
share the session's tiny pipeline and watch what the server opens)."""
from __future__ import annotations

import base64
import socket
import threading
import time
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"  # tests never bind any other address


def b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


class LiveServer:
    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def start_server(pipeline, **options) -> tuple[LiveServer, object]:
    from dynamicid_rt.server.app import create_app
    from dynamicid_rt.server.service import Service

    service = Service(pipeline)
    return LiveServer(create_app(service, **options)), service


# A test module's own server and client on the session's tiny pipeline: `from server_helpers import live, api`.
@pytest.fixture(scope="module")
def live(tiny_pipeline):
    server, service = start_server(tiny_pipeline)
    yield server, service
    server.stop()


@pytest.fixture()
def api(live):
    import webuiapi

    return webuiapi.WebUIApi(host=LOOPBACK, port=live[0].port)
