"""The FastAPI app: routes on routers, the bearer token as one dependency, errors answered in one place."""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

# Resolved at module level: FastAPI reads the handlers' annotations.
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dtconvert.batching import MicroBatcher
from dtconvert.cloud import Catalogue, SharedCloud, Variant
from dtconvert.serve.errors import HOLD_KEY, REFUSALS, UNREAD_BODY, EdgeError, as_problem, error_response
from dtconvert.serve.gateway import TritonForwarder
from dtconvert.serve.openapi import openapi_document
from dtconvert.serve.options import DEFAULT_TOP_K, MAX_TOP_K, ServeOptions
from dtconvert.serve.prometheus import MEDIA_TYPE, ServerMetrics
from dtconvert.wire import CONTENT_TYPE, WirePayload, decode_payload


@dataclass
class Serving:
    """What the routes share, as ``app.state.serving``: the cloud, its batcher, the metrics, the limits."""

    service: Catalogue
    options: ServeOptions
    batcher: MicroBatcher | TritonForwarder
    metrics: ServerMetrics
    max_body_bytes: int
    token: bytes | None


def create_app(service: Catalogue, options: ServeOptions | None = None) -> FastAPI:
    """The HTTP app serving ``service``; its decode worker starts and stops with the app's lifespan."""
    options = options or ServeOptions()
    metrics = ServerMetrics()
    batcher: MicroBatcher | TritonForwarder
    if options.triton:  # a gateway: Triton decodes
        batcher = TritonForwarder(
            service,
            options.triton,
            options.queue_limit(),
            options.triton_timeout,
            on_forward=lambda variant, rows: metrics.forwarded.labels(variant.model_id).inc(rows),
            on_refused=lambda variant, reason: metrics.triton_refused.labels(variant.model_id, reason).inc(),
        )
    elif isinstance(service, SharedCloud):
        batcher = MicroBatcher(service, options.max_batch, options.max_wait_ms, options.queue_limit(), on_batch=metrics.on_batch)
    else:
        raise TypeError("a server without --triton decodes itself: it needs a SharedCloud, not a Catalogue")
    token = options.token.encode() if options.token else None
    app = FastAPI(
        title="dtconvert cloud decoder",
        version="1",
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
        description="The shared cloud half of a Device Tuning model: int8 wire tensors in, top-k labels per task out.",
    )
    app.state.serving = Serving(service, options, batcher, metrics, options.body_limit(service), token)
    app.include_router(public)
    app.include_router(v1)
    for refusal in REFUSALS:
        app.add_exception_handler(refusal, _refused)
    # Starlette types a handler as taking any Exception; these take the one they are registered for.
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]  # see above
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]  # see above
    app.add_exception_handler(Exception, _internal_error)

    def openapi() -> dict:
        if app.openapi_schema is None:  # built once, on the first request for it
            app.openapi_schema = openapi_document(app, secured=token is not None, gateway=options.triton is not None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to replace the document
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    batcher = _serving_of(app).batcher
    await batcher.start()
    yield
    await batcher.stop()  # refuses new requests (503) and answers those it holds


def _serving_of(app: FastAPI) -> Serving:
    return app.state.serving


async def authorized(request: Request) -> None:
    """The bearer token on /v1/*, compared in constant time, when the server has one."""
    token = _serving_of(request.app).token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
        raise EdgeError(
            401,
            "this server needs 'Authorization: Bearer <token>' (missing or wrong token)",
            "unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )


# ---- the routes: open ones, and /v1/* behind the token ----------------------------------------------
# (The handlers carry no docstrings: FastAPI would put them into the OpenAPI document.)

public = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])


@public.get("/healthz")
async def healthz(request: Request):
    serving = _serving_of(request.app)
    serving.metrics.requests.labels("/healthz", "200").inc()
    # model_id: the first variant, as a one-variant server has always answered; model_ids: all of them.
    model_ids = serving.service.model_ids
    return JSONResponse({"status": "ok", "model_id": model_ids[0], "model_ids": model_ids})


@public.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request):
    serving = _serving_of(request.app)
    return PlainTextResponse(serving.metrics.exposition(serving.batcher.pending), media_type=MEDIA_TYPE)


@v1.get("/model")
async def model(request: Request):
    serving = _serving_of(request.app)
    variants, model_ids = serving.service.variants, serving.service.model_ids
    wanted = request.query_params.get("id")
    if wanted is None and len(variants) > 1:
        raise EdgeError(
            409, f"this server serves {len(variants)} models ({', '.join(model_ids)}): GET /v1/models, or /v1/model?id=MODEL_ID", "model_id"
        )
    if wanted is not None and wanted not in variants:
        raise EdgeError(404, f"model id {wanted!r} is not served here (serving {', '.join(model_ids)})", "model_id")
    serving.metrics.requests.labels("/v1/model", "200").inc()
    return JSONResponse(variants[wanted or model_ids[0]].public())


@v1.get("/models")
async def models(request: Request):
    serving = _serving_of(request.app)
    serving.metrics.requests.labels("/v1/models", "200").inc()
    return JSONResponse({"models": [v.summary() for v in serving.service.variants.values()]})


@v1.post("/decode")
async def decode(request: Request):
    arrived = time.perf_counter()
    serving = _serving_of(request.app)
    serving.metrics.in_flight.inc()
    try:
        serving.batcher.check_open()
        variant, tasks, payload, k = await _read_message(request, serving)
        request.state.model_id = variant.model_id  # for the metrics, should the batcher refuse it
        probs, timing = await serving.batcher.submit(payload.tensor, variant)
        predictions = [serving.service.top_k(variant, row, tasks, k) for row in probs]
        timing["server_ms"] = round((time.perf_counter() - arrived) * 1000.0, 3)
        serving.metrics.decoded(variant.model_id, time.perf_counter() - arrived)
        # A Response, not a dict: skips FastAPI's per-request jsonable_encoder walk.
        return JSONResponse({"model_id": variant.model_id, "tasks": tasks, "predictions": predictions, "timing": timing})
    finally:
        serving.metrics.in_flight.dec()


# ---- reading a request: checked in order, each mistake a refusal ---------------------------------------


async def _read_message(request: Request, serving: Serving) -> tuple[Variant, list[str], WirePayload, int]:
    """The request's wire message, the variant it names, the tasks it asks for, and its top_k."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != CONTENT_TYPE:
        raise EdgeError(415, f"Content-Type must be {CONTENT_TYPE}, got {content_type or 'none'!r}", "content_type")
    k = _top_k(request.query_params.get("top_k"), serving.service.max_classes)
    body = await _read_body(request, serving.max_body_bytes, serving.options.body_timeout)
    payload = decode_payload(body, max_bytes=serving.max_body_bytes)
    variant, tasks = serving.service.check(payload)
    return variant, tasks, payload, k


def _top_k(raw: str | None, max_classes: int) -> int:
    if raw is None:
        return DEFAULT_TOP_K
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_TOP_K:
        raise EdgeError(
            400,
            f"top_k must be a whole number from 1 to {MAX_TOP_K} (each task answers with at most its number of classes), got {raw!r}",
            "top_k",
        )
    return min(int(raw), max_classes)


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused (413) as soon as it is known to pass ``limit`` bytes, or (408) when it takes
    longer than ``timeout`` seconds: a slow or endless body cannot hold a request open."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise EdgeError(400, f"Content-Length {declared!r} is not a number", "content_length")
        if int(declared) > limit:
            raise EdgeError(413, f"body of {int(declared)} bytes is over the limit of {limit} bytes", "too_large", headers=UNREAD_BODY)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():  # also bounds chunked bodies that declare no length
                body += chunk
                if len(body) > limit:
                    raise EdgeError(413, f"body is over the limit of {limit} bytes", "too_large", headers=UNREAD_BODY)
    except TimeoutError:
        raise EdgeError(408, f"the request body did not arrive within {timeout:g} s", "timeout", headers=UNREAD_BODY) from None
    return bytes(body)


# ---- answering errors: refusals through the one mapping, the framework's own, the server's faults ------


async def _refused(request: Request, error: Exception) -> JSONResponse:
    serving = _serving_of(request.app)
    problem = as_problem(error, serving.options.retry_after)
    model_id = getattr(request.state, "model_id", "-")
    serving.metrics.refused(request.scope["route"].path, problem.status, problem.reason, model_id)
    if problem.hold_seconds:
        request.scope[HOLD_KEY] = problem.hold_seconds  # the connection reads nothing more until then
    return error_response(problem.status, problem.message, problem.headers)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    message = {404: f"no such endpoint {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
    endpoint = request.url.path if error.status_code != 404 else "other"
    _serving_of(request.app).metrics.requests.labels(endpoint, str(error.status_code)).inc()
    return error_response(error.status_code, message.get(error.status_code, str(error.detail)), getattr(error, "headers", None))


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(400, f"bad request: {error.errors()[0].get('msg', 'invalid')}")


async def _internal_error(request: Request, error: Exception) -> JSONResponse:  # only the server's own faults land here
    _serving_of(request.app).metrics.requests.labels(request.url.path, "500").inc()
    return error_response(500, f"internal error: {type(error).__name__}")
