"""The HTTP side of ``llava-edge serve``: an OpenAI-compatible FastAPI app.

Routes: ``POST /v1/chat/completions`` (JSON, or server-sent events with ``stream: true``),
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (queue depth, queued image
bytes, the embedding cache's entries and bytes, each with its limit, and counters; open
without the API key so that a load balancer can poll it).

Every refusal is a 4xx/5xx with OpenAI's error body. A request is admitted to the
worker's queue (or refused: 429 + Retry-After when the queue is full in requests or in
image bytes, 413 when its images alone are over the byte bound), then this side waits
for the worker's events; while it waits it watches the deadline (504 and the job is
cancelled) and the client (gone: the job is cancelled, so the model is free within one
llama.cpp ubatch of a prefill, one vision-graph node or one token).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import asdict, dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llava_edge.errors import LlavaEdgeError, PromptError, SamplingError
from llava_edge.runtimes.images import DEFAULT_MAX_PIXELS
from llava_edge.runtimes.remote_fetch import RemotePolicy
from llava_edge.runtimes.serve.openai_schema import (ApiError, ChatRequest, FINISH_REASONS,
                                                      chunk_body, completion_body, error_body,
                                                      new_completion_id, parse_chat_request,
                                                      usage)
from llava_edge.runtimes.serve.worker import (ImagesTooLarge, Job, JobEvent, QueueFull,
                                              Worker)

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a waiting request checks whether its client is still there
DRAIN_MAX_BYTES = 64 * 1024 * 1024  # an oversized body is read (and dropped) up to this


@dataclass
class ServeConfig:
    """What the app enforces; the queue size is the worker's."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    timeout_s: float = 300.0  # per request, from admission to the last token
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_remote_images: bool = False
    # what a remote image fetch may reach and take (only with allow_remote_images)
    remote_policy: RemotePolicy = field(default_factory=RemotePolicy)


class _ClientGone(Exception):
    """The client disconnected while its request waited or ran."""


def create_app(worker: Worker, config: ServeConfig) -> FastAPI:
    """The app for one started :class:`Worker` (the caller closes the worker)."""
    app = FastAPI(title="llava-edge", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker, app.state.config = worker, config
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if e.status_code == 404 else None
        return JSONResponse(error_body(str(e.detail), "invalid_request_error", None, kind),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error",
                                       None, "internal_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": config.model_name, **asdict(worker.stats()),
                "embed_cache": worker.model.embed_cache.stats()}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        _check_auth(request, config)
        return {"object": "list", "data": [_model_card(config.model_name, created)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict:
        _check_auth(request, config)
        if model_id != config.model_name:
            raise ApiError(404, f"the model '{model_id}' does not exist", param="model",
                           code="model_not_found")
        return _model_card(config.model_name, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        _check_auth(request, config)
        raw = await _read_body(request, config.max_body_bytes)
        # Decoding images is CPU work: keep it off the event loop.
        chat = await run_in_threadpool(parse_chat_request, raw, config.model_name,
                                       config.max_pixels, config.allow_remote_images,
                                       config.remote_policy)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        job = Job(chat, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
                  max_new_tokens=chat.max_tokens or worker.model.llm.n_ctx,
                  stream_pieces=chat.stream)
        try:
            worker.submit(job)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy ({e})", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": str(e.retry_after_s)})
        except ImagesTooLarge as e:
            raise ApiError(413, f"{e} (--max-queue-image-mb)", param="messages",
                           code="images_too_large")
        waiter = _Waiter(job, events, request, loop.time() + config.timeout_s)
        try:
            _raise_for(await waiter.next())  # start, or why not
            if chat.stream:
                return StreamingResponse(_sse(waiter, chat, config.model_name),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            event = await waiter.next()
            _raise_for(event)
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it
        except BaseException:
            job.cancel("disconnect")  # no-op if it has ended; frees the worker otherwise
            raise
        a = event.answer
        return JSONResponse(completion_body(new_completion_id(), config.model_name, a.text,
                                            a.stop_reason, a.n_prompt_tokens, a.n_tokens))

    return app


class _Waiter:
    """Waits for a job's next event, minding the deadline and the client."""

    def __init__(self, job: Job, events: asyncio.Queue, request: Request, deadline: float):
        self.job, self.events, self.request, self.deadline = job, events, request, deadline
        self.finished = False

    async def next(self) -> JobEvent:
        loop = asyncio.get_running_loop()
        while True:
            remaining = self.deadline - loop.time()
            if remaining <= 0:
                self.job.cancel("timeout")
                self.finished = True
                raise ApiError(504, "the request ran past the server's time limit",
                               type="timeout_error", code="timeout")
            try:
                event = await asyncio.wait_for(self.events.get(), min(POLL_S, remaining))
            except asyncio.TimeoutError:
                if await self.request.is_disconnected():
                    self.job.cancel("disconnect")
                    self.finished = True
                    raise _ClientGone() from None
                continue
            if event.kind != "start" and event.kind != "piece":
                self.finished = True
            return event


def _raise_for(event: JobEvent) -> None:
    """Turn a job's failure into the ApiError the client gets."""
    if event.kind == "error":
        e = event.error
        if isinstance(e, PromptError) and "context" in str(e):
            raise ApiError(400, str(e), param="messages", code="context_length_exceeded")
        if isinstance(e, SamplingError):  # parse_chat_request checks ranges first; a backstop
            raise ApiError(400, str(e), param=e.option, code="invalid_value")
        if isinstance(e, LlavaEdgeError):
            raise ApiError(400, str(e), param="messages", code="invalid_prompt")
        raise ApiError(500, f"internal error: {type(e).__name__}", type="server_error",
                       code="internal_error")
    if event.kind == "cancelled":
        raise ApiError(503, "the server is shutting down", type="server_error",
                       code="shutting_down")


async def _sse(waiter: _Waiter, chat: ChatRequest, model: str):
    """The server-sent events of a streamed completion, ending with ``data: [DONE]``."""
    cid, created = new_completion_id(), int(time.time())
    try:
        yield _data(chunk_body(cid, model, created, {"role": "assistant", "content": ""}))
        while True:
            try:
                event = await waiter.next()
                if event.kind == "piece":
                    yield _data(chunk_body(cid, model, created, {"content": event.text}))
                    continue
                _raise_for(event)
            except ApiError as e:  # the status line has gone: the error is an event
                yield _data(e.body())
                break
            except _ClientGone:
                return
            a = event.answer
            yield _data(chunk_body(cid, model, created, {},
                                   FINISH_REASONS.get(a.stop_reason, a.stop_reason)))
            if chat.include_usage:
                yield _data(chunk_body(cid, model, created, None,
                                       usage_=usage(a.n_prompt_tokens, a.n_tokens)))
            break
        yield "data: [DONE]\n\n"
    finally:
        # Closed early (the server noticed the client left, or the send failed).
        if not waiter.finished:
            waiter.job.cancel("disconnect")


def _data(obj: dict) -> str:
    return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "llava-edge"}


def _check_auth(request: Request, config: ServeConfig) -> None:
    if config.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                             config.api_key.encode()):
        raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 if it is over ``limit`` bytes. An oversized body is still read
    (up to DRAIN_MAX_BYTES) and dropped, so that the client, still sending, gets the 413
    instead of a reset connection."""
    declared = request.headers.get("content-length", "")
    over = declared.isdigit() and int(declared) > limit
    buf, n = bytearray(), 0
    async for chunk in request.stream():
        n += len(chunk)
        over = over or n > limit
        if over:
            if n > limit + DRAIN_MAX_BYTES:
                break
            continue
        buf += chunk
    if over:
        raise ApiError(413, f"the request body is over the limit of {limit:,} bytes",
                       code="request_too_large")
    return bytes(buf)
