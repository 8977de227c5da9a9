"""A hub-compatible server on 127.0.0.1 for ``models pull`` tests: olah (PyPI ``olah``, a
self-hosted Hugging Face mirror) serving local git repos offline to the real ``huggingface_hub``
client. And, for what olah cannot emulate (gating), a stand-in that answers as the hub answers a
gated repo without a token, named as such."""
from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

GIT = ["git", "-c", "user.email=tests@localhost", "-c", "user.name=tests", "-c", "init.defaultBranch=main"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_repo(mirrors: Path, repo_id: str, content: Path) -> Path:
    """``content`` committed as ``repo_id`` on branch main, where olah's mirrors-path looks."""
    repo = mirrors / "models" / repo_id
    shutil.copytree(content, repo)
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "tiny weights in the real layout"], cwd=repo, check=True)
    return repo


@contextmanager
def olah_server(mirrors: Path, work: Path) -> Iterator[tuple[str, Path]]:
    """olah on a free loopback port, offline, serving ``mirrors``; yields (endpoint, its log)."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\nmirror-scheme = "http"\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'mirrors-path = ["{mirrors.as_posix()}"]\nrepos-path = "{(work / "repos").as_posix()}"\n'
        "[accessibility]\noffline = true\n",
        encoding="utf-8",
    )
    log = work / "olah.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(work / "logs")],
                                   cwd=work, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/api/models/none/none/revision/main", timeout=2)
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("olah did not start: " + log.read_text(errors="replace")[-2000:]) from None
                time.sleep(0.3)
            else:
                break
        yield endpoint, log
    finally:
        process.terminate()
        process.wait(timeout=30)


class _GatedHandler(http.server.BaseHTTPRequestHandler):
    """Stand-in for the hub's answer to a gated repo without a token (olah has no gating)."""

    def _gated(self) -> None:
        self.send_response(401)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model org/gated is restricted. You must have access to it.")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b'{"error": "Access to model org/gated is restricted."}')

    do_GET = do_HEAD = _gated

    def log_message(self, *args) -> None:
        pass


@contextmanager
def gated_stand_in() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GatedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
