"""The FastAPI app: A1111's ``/sdapi/v1`` routes over a :class:`~.service.Service`.

Errors a client can fix are HTTP 422 (413 for an upload over the cap) with the one line the CLI
prints for the same mistake, before any work. A client that disconnects cancels its job.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Sequence

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .. import DynamicIDError, ImageError, RequestError, __version__
from ..messages import user_message
from . import a1111
from .img2img import Img2ImgRequest
from .middleware import BasicAuth, ReplicaHeader, UploadCap, error_response
from .schema import (
    ErrorResponse,
    LoraModel,
    ProgressResponse,
    Sampler,
    Scheduler,
    ScriptsList,
    SDModel,
    Txt2ImgRequest,
    Txt2ImgResponse,
)
from .service import Service

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD = 32 * 1024 * 1024  # bytes of request body: four large photos as base64
_DISCONNECT_POLL_S = 0.25
_ERRORS = {413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
           503: {"model": ErrorResponse}}
_STOPPING = "the server is shutting down and stopped this job; send it again once the server is back"


def _one_line(exc: RequestValidationError) -> str:
    """Pydantic's errors as one line: "field: problem; field: problem"."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ())[1:]) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def create_app(service: Service, auth: Sequence[tuple[str, str]] = (), max_upload: int = DEFAULT_MAX_UPLOAD,
               replica: str | None = None) -> FastAPI:
    """The web app over ``service``; ``auth``: accepted (user, password) pairs, empty for none;
    ``replica``: a Ray Serve replica's id, sent back in an ``X-DynamicID-Replica`` header."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="dynamicid-rt", version=__version__, lifespan=lifespan,
                  description="AUTOMATIC1111's web API for DynamicID: people go in alwayson_scripts.dynamicid.args.")
    # Added last, runs first: a request is authenticated before its body is read.
    app.add_middleware(UploadCap, limit=max_upload)
    if replica is not None:
        app.add_middleware(ReplicaHeader, replica=replica)
    if auth:
        app.add_middleware(BasicAuth, credentials=list(auth))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _one_line(exc))

    @app.post("/sdapi/v1/txt2img", response_model=Txt2ImgResponse, responses=_ERRORS)
    async def txt2img(body: Txt2ImgRequest, request: Request):
        return await generate(service.plan, body, request)

    @app.post("/sdapi/v1/img2img", response_model=Txt2ImgResponse, responses=_ERRORS)
    async def img2img(body: Img2ImgRequest, request: Request):
        return await generate(service.plan_img2img, body, request)

    async def generate(make_plan, body: Txt2ImgRequest, request: Request):
        try:
            plan = await run_in_threadpool(make_plan, body)
        except DynamicIDError as exc:  # the request's fields, its photos, faces and LoRA files
            return error_response(422, user_message(exc))
        if service.stopping.is_set():
            return error_response(503, _STOPPING)
        try:
            job = service.queue.submit(lambda job: service.run(plan, job), plan.total_steps, len(plan.requests))
        except RuntimeError:  # the queue closed between the check and the submit
            return error_response(503, _STOPPING)
        future = asyncio.wrap_future(job.future)
        try:
            while not future.done():
                await asyncio.wait([future], timeout=_DISCONNECT_POLL_S)
                if not future.done() and await request.is_disconnected():
                    log.info("client went away: cancelling its job")
                    service.queue.cancel(job)
                    return Response(status_code=499)  # nobody reads it; the connection is gone
            if service.stopping.is_set():
                log.info("txt2img: %s", _STOPPING)
                return error_response(503, _STOPPING)
            results = future.result()
        except asyncio.CancelledError:  # Ray Serve cancels the request when its client disconnects
            service.queue.cancel(job)
            if service.stopping.is_set():
                return error_response(503, _STOPPING)
            raise
        except (RequestError, ImageError) as exc:  # e.g. no face in a photo: found when encoding it
            return error_response(422, user_message(exc))
        except DynamicIDError as exc:
            log.error("%s failed: %s", request.url.path.rpartition("/")[2], user_message(exc))
            return error_response(500, user_message(exc))
        return await run_in_threadpool(service.response, plan, results)

    @app.get("/sdapi/v1/progress", response_model=ProgressResponse)
    async def progress(skip_current_image: bool = Query(False)) -> ProgressResponse:
        return service.progress(with_image=not skip_current_image)

    @app.post("/sdapi/v1/interrupt")
    async def interrupt() -> dict:
        service.queue.interrupt()
        return {}

    @app.get("/sdapi/v1/loras", response_model=list[LoraModel])
    async def loras() -> list[dict]:
        return await run_in_threadpool(service.loras.listing)

    @app.post("/sdapi/v1/refresh-loras")
    async def refresh_loras() -> None:
        return None  # the folder is read anew on every request

    @app.get("/sdapi/v1/samplers", response_model=list[Sampler])
    async def samplers() -> list[dict]:
        return a1111.sampler_list()

    @app.get("/sdapi/v1/schedulers", response_model=list[Scheduler])
    async def schedulers() -> list[dict]:
        return list(a1111.SCHEDULER_LIST)

    @app.get("/sdapi/v1/sd-models", response_model=list[SDModel])
    async def sd_models() -> list[dict]:
        return a1111.sd_models(service.model)

    @app.get("/sdapi/v1/options")
    async def options() -> dict:
        return a1111.options(service.model, service.pipeline.describe())

    @app.get("/sdapi/v1/scripts", response_model=ScriptsList)
    async def scripts() -> dict:
        return {"txt2img": ["dynamicid"], "img2img": ["dynamicid"]}

    return app
