"""ASGI middleware of the web app: the upload cap, HTTP Basic auth and the replica header."""
from __future__ import annotations

import base64
import binascii
import secrets

from fastapi.responses import JSONResponse


def error_response(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    """The error body every refusal uses: ``{"detail": "<one line>"}``."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class UploadCap:
    """Refuse a request body over ``limit`` bytes with 413 before the app parses any of it."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        body, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # later calls see the disconnect
            replayed = True
            return {"type": "http.request", "body": b"".join(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        mib = self.limit / 2**20
        response = error_response(413, f"request body over the {mib:g} MiB upload cap; send smaller photos (or raise --max-upload-mb)")
        await response(scope, receive, send)


class ReplicaHeader:
    """Name the Ray Serve replica that answered: which pipeline made an image, across a cluster."""

    def __init__(self, app, replica: str) -> None:
        self.app, self.header = app, (b"x-dynamicid-replica", replica.encode())

    async def __call__(self, scope, receive, send) -> None:
        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


class BasicAuth:
    """HTTP Basic authentication (A1111's ``--api-auth``) on every route, the docs included."""

    def __init__(self, app, credentials: list[tuple[str, str]]) -> None:
        self.app = app
        self.credentials = [(u.encode(), p.encode()) for u, p in credentials]

    def _allowed(self, header: bytes) -> bool:
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        # Compare with every pair in constant time, so timing tells nothing about which part was wrong.
        matches = [secrets.compare_digest(user, u) & secrets.compare_digest(password, p) for u, p in self.credentials]
        return bool(sep) and any(matches)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not self._allowed(dict(scope["headers"]).get(b"authorization", b"")):
            response = error_response(401, "wrong or missing user name and password (the server was started with --api-auth)",
                              headers={"WWW-Authenticate": 'Basic realm="dynamicid-rt"'})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)
