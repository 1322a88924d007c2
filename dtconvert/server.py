"""``dtconvert serve``: the cloud half over HTTP (FastAPI on uvicorn), the HTTP edge.

The server loads one or more exports into a :class:`~dtconvert.cloud.SharedCloud` (one trunk,
every device variant tuned from it) and answers ``POST /v1/decode`` with each task's top-k labels
for a wire-format message (docs/wire-format.md); the message's model id picks the variant. The
decode worker (:mod:`dtconvert.batching`) batches concurrent requests of any variants.

The edge faces the internet, so it holds under overload and hostile clients:

* every byte of a request is validated; a client's mistake gets a 4xx with
  ``{"error": ..., "status": ...}``, never a 500;
* admission control: when the images waiting for the decoder would exceed ``max_queue``, a
  request is answered at once with 503 and ``Retry-After``, so latency stays bounded;
* connections: at most ``max_connections`` (503 with ``Retry-After`` beyond), a connection that
  sends no complete request head within ``header_timeout`` is closed, an idle keep-alive one after
  ``keep_alive``, and a body not received within ``body_timeout`` gets 408;
* optional TLS (uvicorn's own) and a bearer token on ``/v1/*`` (``/healthz`` and ``/metrics``
  stay open), compared in constant time;
* ``/openapi.json`` describes every endpoint, body, media type and status truthfully (checked by
  schemathesis in the tests). See docs/serving.md.
"""

from __future__ import annotations

import hmac
import random
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
from fastapi import Request  # resolved at module level: FastAPI reads the handlers' annotations

from dtconvert.batching import MicroBatcher
from dtconvert.cloud import RequestError, SharedCloud, Variant
from dtconvert.errors import UserError
from dtconvert.wire import CONTENT_TYPE, WireFormatError, WirePayload, decode_payload

DEFAULT_TOP_K = 3
# Latency buckets (seconds) for the Prometheus histogram: sub-millisecond to a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MIN_TOKEN_CHARS = 16


@dataclass
class ServeOptions:
    """How the server batches, admits and guards; the CLI's flags."""

    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_body_bytes: int | None = None  # default: header + max(4, max_batch) images
    max_queue: int | None = None  # images waiting for the decoder; default QUEUE_BATCHES × max_batch
    max_connections: int = 2048
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keep_alive: float = 5.0
    retry_after: int = 1  # seconds a 503 asks the client to wait
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def queue_limit(self) -> int:
        return self.max_queue if self.max_queue is not None else QUEUE_BATCHES * self.max_batch


# Eight batches' worth of images may wait: enough that clients sending several images per message
# at once are not refused (16 clients × 8 images fill four batches), little enough that an
# accepted request waits only a few decoder calls (the digits decoder drains 256 images in about
# 20 ms on 2 cores). Beyond it more waiting would add latency, never throughput.
QUEUE_BATCHES = 8
# An answer given before the body was read whole: the connection cannot carry another request.
UNREAD_BODY = {"Connection": "close"}
# The ASGI scope key by which a handler asks the connection to read nothing more for N seconds.
HOLD_KEY = "dtconvert.hold_seconds"


def read_token(path: Path) -> str:
    """The bearer token from ``--token-file`` (one line; whitespace around it is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--token-file {path}: no such file")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--token-file {path}: cannot read it ({e})") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
        raise UserError(
            f"--token-file {path}: the token must be one line of at least {MIN_TOKEN_CHARS} printable characters "
            "without spaces (e.g. 'openssl rand -hex 32 > token')"
        )
    return token


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """Check ``--tls-cert``/``--tls-key`` load together before the server starts (one line, exit 2 if not)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UserError("--tls-cert and --tls-key go together: pass both (PEM files) or neither")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError, ValueError) as e:
        raise UserError(f"--tls-cert {cert} / --tls-key {key}: not a matching PEM certificate and key ({e})") from None
    return context


# ---- OpenAPI: what the endpoints accept and answer ------------------------------------------------

_ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}


def _error(description: str, headers: dict | None = None) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}}}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
_SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error", "status"],
        "additionalProperties": False,
        "properties": {
            "error": {"type": "string", "description": "one sentence naming the field and the problem"},
            "status": {"type": "integer"},
        },
    },
    "Prediction": {
        "type": "object",
        "required": ["label", "index", "score"],
        "properties": {
            "label": {"type": "string"},
            "index": {"type": "integer", "minimum": 0},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
    },
    "Decoded": {
        "type": "object",
        "required": ["model_id", "tasks", "predictions", "timing"],
        "properties": {
            "model_id": {"type": "string"},
            "tasks": {"type": "array", "items": {"type": "string"}},
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                },
            },
            "timing": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "model_id", "model_ids"],
        "properties": {
            "status": {"const": "ok"},
            "model_id": {"type": "string"},
            "model_ids": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Models": {
        "type": "object",
        "required": ["models"],
        "properties": {
            "models": {
                "type": "array",
                "items": {"type": "object", "required": ["id", "name", "tasks", "wire_shape", "scale", "zero_point"]},
            }
        },
    },
    "Model": {"type": "object", "required": ["schema_version", "model", "precision", "device_input", "wire", "tasks", "wire_format"]},
}


def _json(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _openapi(app, secured: bool) -> dict:
    """FastAPI's document, with the wire-format body and every answer the server gives spelled out."""
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(_SCHEMAS)
    if secured:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    paths = document["paths"]
    unauthorized = {"401": _error("missing or wrong bearer token", _WWW_AUTHENTICATE)} if secured else {}
    overloaded = {"503": _error("at capacity or shutting down; retry after Retry-After seconds", _RETRY_AFTER)}
    paths["/v1/decode"]["post"].update(
        {
            "parameters": [
                {
                    "name": "top_k",
                    "in": "query",
                    "required": False,
                    "description": "labels per task (capped at its classes)",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": DEFAULT_TOP_K},
                }
            ],
            "requestBody": {
                "required": True,
                "description": "one wire-format message (docs/wire-format.md)",
                "content": {CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            },
            "responses": {
                "200": _json("Decoded", "top-k labels per image and task"),
                "400": _error("not a valid wire message, or a bad top_k"),
                **unauthorized,
                "408": _error("the body did not arrive in time"),
                "413": _error("body larger than the limit"),
                "415": _error(f"Content-Type is not {CONTENT_TYPE}"),
                "422": _error("a valid message that fits no served model: model id, shape, scale, zero point or task"),
                **overloaded,
            },
        }
    )
    paths["/v1/model"]["get"].update(
        {
            "parameters": [
                {
                    "name": "id",
                    "in": "query",
                    "required": False,
                    "description": "a served model id (required with several)",
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "200": _json("Model", "the public part of the variant's manifest"),
                **unauthorized,
                "404": _error("no such model id here"),
                "409": _error("several models served: name one with id"),
            },
        }
    )
    paths["/v1/models"]["get"]["responses"] = {"200": _json("Models", "every served device variant"), **unauthorized}
    paths["/healthz"]["get"]["responses"] = {"200": _json("Health", "the decoder is loaded")}
    paths["/metrics"]["get"]["responses"] = {
        "200": {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}
    }
    if secured:
        for path in ("/v1/decode", "/v1/model", "/v1/models"):
            for operation in paths[path].values():
                operation["security"] = [{"bearer": []}]
    for operations in paths.values():
        for operation in operations.values():
            operation["responses"].setdefault(
                "405", _error("method not allowed here (see the Allow header)", {"Allow": {"schema": {"type": "string"}}})
            )
    return document


# ---- the HTTP app ------------------------------------------------------------------------------------


def create_app(service: SharedCloud, options: ServeOptions | None = None):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    options = options or ServeOptions()
    max_body_bytes = options.max_body_bytes or default_max_body(service, options.max_batch)
    max_queue = options.queue_limit()
    token = options.token.encode() if options.token else None
    registry = CollectorRegistry()
    requests_total = Counter(
        "dtconvert_requests_total", "HTTP requests answered, by endpoint and status.", ["endpoint", "status"], registry=registry
    )
    decode_total = Counter(
        "dtconvert_decode_requests_total",
        '/v1/decode requests answered, by model id and status (model_id "-" when the message named none that could be read).',
        ["model_id", "status"],
        registry=registry,
    )
    errors_total = Counter("dtconvert_request_errors_total", "Rejected /v1/decode requests, by reason.", ["reason"], registry=registry)
    batch_images = Histogram(
        "dtconvert_batch_images",
        "Images per decoder call (micro-batch size).",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        registry=registry,
    )
    batch_models = Histogram(
        "dtconvert_batch_models",
        "Device variants (model ids) per decoder call: above 1, a mixed batch.",
        buckets=(1, 2, 3, 4, 8, 16),
        registry=registry,
    )
    batch_rows = Counter("dtconvert_batch_rows_total", "Images decoded, by model id.", ["model_id"], registry=registry)
    mixed_batches = Counter(
        "dtconvert_mixed_batches_total", "Decoder calls whose batch held rows of more than one model id.", registry=registry
    )
    latency = Histogram(
        "dtconvert_decode_request_seconds",
        "Time from the request's arrival to its answer, /v1/decode.",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    in_flight = Gauge("dtconvert_requests_in_flight", "/v1/decode requests being handled.", registry=registry)
    queued = Gauge("dtconvert_queued_images", "Images accepted and waiting for (or in) the decoder.", registry=registry)
    state: dict = {"batcher": None, "draining": False}

    def on_batch(owners: list[Variant]) -> None:
        batch_images.observe(len(owners))
        ids = [v.model_id for v in owners]
        distinct = set(ids)
        batch_models.observe(len(distinct))
        if len(distinct) > 1:
            mixed_batches.inc()
        for model_id in distinct:
            batch_rows.labels(model_id).inc(ids.count(model_id))

    @asynccontextmanager
    async def lifespan(app):
        batcher = MicroBatcher(service, options.max_batch, options.max_wait_ms, on_batch=on_batch)
        await batcher.start()
        state["batcher"] = batcher
        yield
        state["draining"] = True
        await batcher.stop()

    app = FastAPI(
        title="dtconvert cloud decoder",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="The shared cloud half of a Device Tuning model: int8 wire tensors in, top-k labels per task out.",
    )

    def openapi() -> dict:
        if app.openapi_schema is None:  # built once, on the first request for it
            app.openapi_schema = _openapi(app, token is not None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to replace the document

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    def refused(endpoint: str, e: RequestError) -> JSONResponse:
        requests_total.labels(endpoint, str(e.status)).inc()
        return error(e.status, e.message, e.headers)

    def authorize(request: Request) -> None:
        """Constant-time bearer token check on /v1/* when the server has a token."""
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            raise RequestError(
                401,
                "this server needs 'Authorization: Bearer <token>' (missing or wrong token)",
                "unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def count_rejected(path: str) -> None:
        requests_total.labels(path if path in _ENDPOINTS else "other", "503").inc()
        if path == "/v1/decode":
            errors_total.labels("connections").inc()

    app.state.count_rejected = count_rejected

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no such endpoint {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
        requests_total.labels(request.url.path if exc.status_code != 404 else "other", str(exc.status_code)).inc()
        return error(exc.status_code, message.get(exc.status_code, str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error(400, f"bad request: {exc.errors()[0].get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # only the server's own faults land here
        requests_total.labels(request.url.path, "500").inc()
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/healthz")
    async def healthz():
        requests_total.labels("/healthz", "200").inc()
        # model_id: the first variant, as a one-variant server has always answered; model_ids: all of them.
        return JSONResponse({"status": "ok", "model_id": service.model_ids[0], "model_ids": service.model_ids})

    @app.get("/v1/model")
    async def model(request: Request):
        try:
            authorize(request)
        except RequestError as e:
            return refused("/v1/model", e)
        wanted = request.query_params.get("id")
        if wanted is None and len(service.variants) > 1:
            requests_total.labels("/v1/model", "409").inc()
            return error(
                409,
                f"this server serves {len(service.variants)} models ({', '.join(service.model_ids)}): "
                "GET /v1/models, or /v1/model?id=MODEL_ID",
            )
        if wanted is not None and wanted not in service.variants:
            requests_total.labels("/v1/model", "404").inc()
            return error(404, f"model id {wanted!r} is not served here (serving {', '.join(service.model_ids)})")
        requests_total.labels("/v1/model", "200").inc()
        return JSONResponse(service.variants[wanted or service.model_ids[0]].public())

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            authorize(request)
        except RequestError as e:
            return refused("/v1/models", e)
        requests_total.labels("/v1/models", "200").inc()
        return JSONResponse({"models": [v.summary() for v in service.variants.values()]})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        queued.set(state["batcher"].pending if state["batcher"] is not None else 0)
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/decode")
    async def decode(request: Request):
        arrived = time.perf_counter()
        in_flight.inc()
        model_id = "-"
        try:
            authorize(request)
            variant, tasks, payload, k = await _parse(request)
            model_id = variant.model_id
            batcher = state["batcher"]
            if batcher.pending + len(payload.tensor) > max_queue:  # admission control: answer now rather than late
                request.scope[HOLD_KEY] = options.retry_after  # and read nothing more from this client until then
                raise RequestError(
                    503,
                    f"the server is at capacity ({batcher.pending} images waiting for the decoder, "
                    f"limit {max_queue}); retry after {options.retry_after} s",
                    "overloaded",
                    headers={"Retry-After": str(options.retry_after)},
                )
            probs, timing = await batcher.submit(payload.tensor, variant)
            predictions = [service.top_k(variant, row, tasks, k) for row in probs]
            timing["server_ms"] = round((time.perf_counter() - arrived) * 1000.0, 3)
            requests_total.labels("/v1/decode", "200").inc()
            decode_total.labels(model_id, "200").inc()
            latency.observe(time.perf_counter() - arrived)
            # A Response, not a dict: skips FastAPI's per-request jsonable_encoder walk.
            return JSONResponse({"model_id": model_id, "tasks": tasks, "predictions": predictions, "timing": timing})
        except RequestError as e:
            errors_total.labels(e.reason).inc()
            decode_total.labels(model_id if model_id in service.variants else "-", str(e.status)).inc()
            return refused("/v1/decode", e)
        finally:
            in_flight.dec()

    async def _parse(request: Request) -> tuple[Variant, list[str], WirePayload, int]:
        import asyncio

        if state["draining"]:
            raise RequestError(
                503,
                "the server is shutting down; retry on another instance",
                "shutting_down",
                headers={"Retry-After": str(options.retry_after)},
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != CONTENT_TYPE:
            raise RequestError(415, f"Content-Type must be {CONTENT_TYPE}, got {content_type or 'none'!r}", "content_type")
        k = _top_k(request.query_params.get("top_k"), service.max_classes)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, f"Content-Length {declared!r} is not a number", "content_length")
            if int(declared) > max_body_bytes:
                raise RequestError(
                    413, f"body of {int(declared)} bytes is over the limit of {max_body_bytes} bytes", "too_large", headers=UNREAD_BODY
                )
        body = bytearray()
        try:
            async with asyncio.timeout(options.body_timeout):  # a slow body cannot hold a request open
                async for chunk in request.stream():  # also bounds chunked bodies that declare no length
                    body += chunk
                    if len(body) > max_body_bytes:
                        raise RequestError(413, f"body is over the limit of {max_body_bytes} bytes", "too_large", headers=UNREAD_BODY)
        except TimeoutError:
            raise RequestError(
                408, f"the request body did not arrive within {options.body_timeout:g} s", "timeout", headers=UNREAD_BODY
            ) from None
        try:
            payload = decode_payload(bytes(body), max_bytes=max_body_bytes)
        except WireFormatError as e:
            raise RequestError(400, f"invalid wire message: {e}", "wire_format") from None
        variant, tasks = service.check(payload)
        return variant, tasks, payload, k

    return app


_ENDPOINTS = {"/v1/decode", "/v1/model", "/v1/models", "/healthz", "/metrics"}


def _top_k(raw: str | None, max_classes: int) -> int:
    if raw is None:
        return DEFAULT_TOP_K
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise RequestError(
            400, f"top_k must be a whole number from 1 to 1000 (each task answers with at most its number of classes), got {raw!r}", "top_k"
        )
    return min(int(raw), max_classes)


def default_threads() -> int:
    """One decoder thread per core but one: the event loop that parses requests needs a core too.
    (With two threads on two busy cores, torch's parallel regions wait on a descheduled thread:
    decode time of the digits decoder went from 0.5 ms to 13 ms median.)"""
    import os

    return max(1, (os.cpu_count() or 1) - 1)


def default_max_body(service: SharedCloud, max_batch: int) -> int:
    """Room for a batch of ``max_batch`` images plus the header, at least 4 images' worth."""
    return service.header_bytes + service.max_bytes_per_image * max(4, max_batch)


# ---- the connection layer -------------------------------------------------------------------------


def _guarded_protocol(header_timeout: float):
    """uvicorn's httptools protocol, closing a connection whose request head does not arrive in
    time (uvicorn itself times out only idle keep-alive connections, after a response)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedProtocol(HttpToolsProtocol):
        _head_timer = None

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._head_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()  # a connection that never sends a request

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            hold = getattr(self, "scope", {}).get(HOLD_KEY)
            super().on_response_complete()
            if hold and not self.transport.is_closing():
                # A client refused with Retry-After that comes straight back (a load generator, a
                # retry loop without back-off) waits the Retry-After anyway: its next request is not
                # read until then. Without this, answering 503s as fast as a flood sends them takes
                # the event loop (and the GIL) from the decoder, and accepted requests starve.
                # Spread over [hold / 2, hold): refused together, a flood's connections would
                # otherwise all come back in the same instant; a client that does wait Retry-After
                # finds its connection read again by then.
                self.flow.pause_reading()
                self.loop.call_later(hold * (0.5 + 0.5 * random.random()), self._end_hold)

        def _end_hold(self) -> None:
            if not self.transport.is_closing():
                self.flow.resume_reading()

    return GuardedProtocol


def _install_connection_limit_answer(app, retry_after: int) -> None:
    """Past ``limit_concurrency`` uvicorn answers a plain-text 503 without Retry-After; make it the
    API's JSON error with Retry-After, and count it (uvicorn 0.54 looks the function up by name)."""
    import json

    from uvicorn.protocols.http import httptools_impl

    body = json.dumps({"error": f"the server has too many connections open; retry after {retry_after} s", "status": 503}).encode()

    async def too_many_connections(scope, receive, send) -> None:
        app.state.count_rejected(scope.get("path", ""))
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    httptools_impl.service_unavailable = too_many_connections


# ---- running it ---------------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so a taken port is one clear sentence (exit 2)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def make_server(service: SharedCloud, sock: socket.socket, options: ServeOptions, graceful_seconds: float = 30.0, own_logging: bool = True):
    """A uvicorn server for the app. ``own_logging=False`` leaves logging alone (an embedded
    server): uvicorn's default config binds handlers to the sys.stderr of the moment, which a
    caller such as a test runner may close later."""
    import uvicorn

    app = create_app(service, options)
    _install_connection_limit_answer(app, options.retry_after)
    logging: dict[str, Any] = {} if own_logging else {"log_config": None}
    tls: dict[str, Any] = {"ssl_certfile": str(options.tls_cert), "ssl_keyfile": str(options.tls_key)} if options.tls_cert else {}
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=graceful_seconds,  # type: ignore[arg-type]  # uvicorn says int; asyncio takes float
        loop="auto",
        http=_guarded_protocol(options.header_timeout),
        lifespan="on",
        limit_concurrency=options.max_connections,
        timeout_keep_alive=options.keep_alive,  # type: ignore[arg-type]  # uvicorn says int; loop.call_later takes float
        server_header=False,
        **tls,
        **logging,
    )
    return uvicorn.Server(config)


def _allow_open_files(connections: int) -> None:
    """Raise the soft open-file limit (often 1024) toward the hard one, so that --max-connections
    is the limit that holds rather than accept() failing with EMFILE first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256  # the exports' files, the runtime's own descriptors
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if ceiling > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


def serve(export_dirs: list[Path], host: str, port: int, options: ServeOptions, threads: int | None, announce=print) -> None:
    tls_context(options.tls_cert, options.tls_key)  # bad TLS files: one line before anything loads
    torch.set_num_threads(threads or default_threads())
    service = SharedCloud(export_dirs)
    _allow_open_files(options.max_connections)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    server = make_server(service, sock, options)
    limit = options.max_body_bytes or default_max_body(service, options.max_batch)
    url_host = f"[{host}]" if ":" in host else host
    scheme = "https" if options.tls_cert else "http"
    served = "; ".join(f"{v.manifest['model']['name']} ({v.model_id}, tasks {', '.join(v.tasks)})" for v in service.variants.values())
    shared = f", one shared trunk for {len(service.variants)} variants" if len(service.variants) > 1 else ""
    announce(
        f"serving {served}{shared} "
        f"on {scheme}://{url_host}:{actual}  max-batch {options.max_batch}, max-wait {options.max_wait_ms:g} ms, "
        f"queue {options.queue_limit()} images, {options.max_connections} connections, body limit {limit} B, "
        f"{'bearer token required on /v1/*, ' if options.token else ''}"
        f"{torch.get_num_threads()} decoder threads; Ctrl-C stops after answering requests in flight"
    )
    # uvicorn answers SIGTERM and Ctrl-C with a graceful shutdown (no new connections, requests in
    # flight answered), then re-raises the signal; after that shutdown, exit 0 rather than die of it.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    announce("stopped: requests in flight were answered")


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


class BackgroundServer:
    """The real server on a loopback port in a thread of this process (``dtconvert demo``)."""

    def __init__(self, export_dirs: list[Path], host: str = "127.0.0.1", options: ServeOptions | None = None) -> None:
        import threading

        torch.set_num_threads(default_threads())
        self.service = SharedCloud(export_dirs)
        self.sock = bind(host, 0)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = make_server(self.service, self.sock, options or ServeOptions(), own_logging=False)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the decoder server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


__all__ = ["BackgroundServer", "ServeOptions", "create_app", "make_server", "read_token", "serve", "tls_context"]
