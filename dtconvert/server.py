"""``dtconvert serve``: the cloud half over HTTP (FastAPI on uvicorn).

The server loads one or more exports into a :class:`~dtconvert.cloud.SharedCloud` (one trunk,
every device variant tuned from it) and answers ``POST /v1/decode`` with each task's top-k
labels for a wire-format message (docs/wire-format.md); the message's model id picks the
variant. Concurrent requests, of any variants, are decoded as one batch (up to ``max_batch``
images, waiting at most ``max_wait_ms`` for more to arrive) by a single decode worker. Every byte
of a request is validated; a client's mistake gets a 4xx with ``{"error": ..., "status": ...}``,
never a 500. See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fastapi import Request  # resolved at module level: FastAPI reads the handlers' annotations

from dtconvert.cloud import RequestError, SharedCloud, Variant
from dtconvert.errors import UserError
from dtconvert.wire import CONTENT_TYPE, WireFormatError, WirePayload, decode_payload

DEFAULT_TOP_K = 3
# Latency buckets (seconds) for the Prometheus histogram: sub-millisecond to a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# ---- micro-batching ---------------------------------------------------------------------------------


@dataclass
class _Job:
    wire: np.ndarray
    variant: Variant
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Decodes concurrent requests together: up to ``max_batch`` images, waiting at most
    ``max_wait_ms`` after the first one for more, whatever variant each belongs to. One worker
    thread runs the decoder, so requests that arrive while it is busy form the next batch.
    ``on_batch(owners)`` sees every batch's rows by variant (for the metrics)."""

    def __init__(self, service: SharedCloud, max_batch: int, max_wait_ms: float, on_batch=None) -> None:
        self.service, self.max_batch, self.max_wait = service, max_batch, max_wait_ms / 1000.0
        self.on_batch = on_batch or (lambda owners: None)
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dtconvert-decode")
        self.task: asyncio.Task | None = None
        self._carry: _Job | None = None

    async def start(self) -> None:
        """Warm the decoder up in the worker thread that will run it, then start taking jobs."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.service.warm_up, self.max_batch)
        self.task = loop.create_task(self._run())

    async def stop(self) -> None:
        """Finish every queued job, then stop the worker."""
        while not self.queue.empty() or self._carry is not None:
            await asyncio.sleep(0.005)
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, wire: np.ndarray, variant: Variant) -> tuple[list[list[np.ndarray]], dict]:
        job = _Job(wire, variant, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _collect(self) -> list[_Job]:
        first = self._carry or await self.queue.get()
        self._carry = None
        jobs, images = [first], len(first.wire)
        deadline = time.perf_counter() + self.max_wait
        while images < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if images + len(job.wire) > self.max_batch:
                self._carry = job  # starts the next batch; a batch never exceeds max_batch
                break
            jobs.append(job)
            images += len(job.wire)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            wire = np.concatenate([j.wire for j in jobs])  # a writable copy: request bodies are read-only
            owners = [j.variant for j in jobs for _ in range(len(j.wire))]
            started = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.executor, self.service.decode, wire, owners)
            except Exception as e:  # the decoder itself failed: the server's fault, a 500
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            decode_ms = (time.perf_counter() - started) * 1000.0
            self.on_batch(owners)
            row = 0
            for j in jobs:
                n = len(j.wire)
                timing = {"queue_ms": round((started - j.queued) * 1000.0, 3), "decode_ms": round(decode_ms, 3), "batch_images": len(wire),
                          "batch_models": len(set(map(id, owners)))}
                if not j.future.done():  # the client may have gone away
                    j.future.set_result((probs[row : row + n], timing))
                row += n


# ---- the HTTP app ------------------------------------------------------------------------------------


def create_app(service: SharedCloud, max_batch: int = 32, max_wait_ms: float = 2.0, max_body_bytes: int | None = None):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if max_body_bytes is None:
        max_body_bytes = default_max_body(service, max_batch)
    registry = CollectorRegistry()
    requests_total = Counter("dtconvert_requests_total", "HTTP requests answered, by endpoint and status.", ["endpoint", "status"], registry=registry)
    decode_total = Counter("dtconvert_decode_requests_total", "/v1/decode requests answered, by model id and status "
                           "(model_id \"-\" when the message named none that could be read).", ["model_id", "status"], registry=registry)
    errors_total = Counter("dtconvert_request_errors_total", "Rejected /v1/decode requests, by reason.", ["reason"], registry=registry)
    batch_images = Histogram("dtconvert_batch_images", "Images per decoder call (micro-batch size).",
                             buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry)
    batch_models = Histogram("dtconvert_batch_models", "Device variants (model ids) per decoder call: above 1, a mixed batch.",
                             buckets=(1, 2, 3, 4, 8, 16), registry=registry)
    batch_rows = Counter("dtconvert_batch_rows_total", "Images decoded, by model id.", ["model_id"], registry=registry)
    mixed_batches = Counter("dtconvert_mixed_batches_total", "Decoder calls whose batch held rows of more than one model id.", registry=registry)
    latency = Histogram("dtconvert_decode_request_seconds", "Time from the request's arrival to its answer, /v1/decode.",
                        buckets=LATENCY_BUCKETS, registry=registry)
    in_flight = Gauge("dtconvert_requests_in_flight", "/v1/decode requests being handled.", registry=registry)
    state = {"batcher": None, "draining": False}

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
        batcher = MicroBatcher(service, max_batch, max_wait_ms, on_batch=on_batch)
        await batcher.start()
        state["batcher"] = batcher
        yield
        state["draining"] = True
        await batcher.stop()

    app = FastAPI(title="dtconvert cloud decoder", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no such endpoint {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
        requests_total.labels(request.url.path if exc.status_code != 404 else "other", str(exc.status_code)).inc()
        return error(exc.status_code, message.get(exc.status_code, str(exc.detail)))

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
        return {"status": "ok", "model_id": service.model_ids[0], "model_ids": service.model_ids}

    @app.get("/v1/model")
    async def model(request: Request):
        wanted = request.query_params.get("id")
        if wanted is None and len(service.variants) > 1:
            requests_total.labels("/v1/model", "409").inc()
            return error(409, f"this server serves {len(service.variants)} models ({', '.join(service.model_ids)}): "
                              "GET /v1/models, or /v1/model?id=MODEL_ID")
        if wanted is not None and wanted not in service.variants:
            requests_total.labels("/v1/model", "404").inc()
            return error(404, f"model id {wanted!r} is not served here (serving {', '.join(service.model_ids)})")
        requests_total.labels("/v1/model", "200").inc()
        return service.variants[wanted or service.model_ids[0]].public()

    @app.get("/v1/models")
    async def models():
        requests_total.labels("/v1/models", "200").inc()
        return {"models": [v.summary() for v in service.variants.values()]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/decode")
    async def decode(request: Request):
        arrived = time.perf_counter()
        in_flight.inc()
        model_id = "-"
        try:
            variant, tasks, payload, k = await _parse(request)
            model_id = variant.model_id
            probs, timing = await state["batcher"].submit(payload.tensor, variant)
            predictions = [service.top_k(variant, row, tasks, k) for row in probs]
            timing["server_ms"] = round((time.perf_counter() - arrived) * 1000.0, 3)
            requests_total.labels("/v1/decode", "200").inc()
            decode_total.labels(model_id, "200").inc()
            latency.observe(time.perf_counter() - arrived)
            # A Response, not a dict: skips FastAPI's per-request jsonable_encoder walk.
            return JSONResponse({"model_id": model_id, "tasks": tasks, "predictions": predictions, "timing": timing})
        except RequestError as e:
            errors_total.labels(e.reason).inc()
            requests_total.labels("/v1/decode", str(e.status)).inc()
            decode_total.labels(model_id if model_id in service.variants else "-", str(e.status)).inc()
            return error(e.status, e.message)
        finally:
            in_flight.dec()

    async def _parse(request: Request) -> tuple[Variant, list[str], WirePayload, int]:
        if state["draining"]:
            raise RequestError(503, "the server is shutting down; retry on another instance", "shutting_down")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != CONTENT_TYPE:
            raise RequestError(415, f"Content-Type must be {CONTENT_TYPE}, got {content_type or 'none'!r}", "content_type")
        k = _top_k(request.query_params.get("top_k"), service.max_classes)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, f"Content-Length {declared!r} is not a number", "content_length")
            if int(declared) > max_body_bytes:
                raise RequestError(413, f"body of {int(declared)} bytes is over the limit of {max_body_bytes} bytes", "too_large")
        body = bytearray()
        async for chunk in request.stream():  # also bounds chunked bodies that declare no length
            body += chunk
            if len(body) > max_body_bytes:
                raise RequestError(413, f"body is over the limit of {max_body_bytes} bytes", "too_large")
        try:
            payload = decode_payload(bytes(body), max_bytes=max_body_bytes)
        except WireFormatError as e:
            raise RequestError(400, f"invalid wire message: {e}", "wire_format") from None
        variant, tasks = service.check(payload)
        return variant, tasks, payload, k

    return app


def _top_k(raw: str | None, max_classes: int) -> int:
    if raw is None:
        return DEFAULT_TOP_K
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise RequestError(400, f"top_k must be a whole number from 1 to 1000 (each task answers with at most its number of classes), got {raw!r}", "top_k")
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
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(service: SharedCloud, sock: socket.socket, max_batch: int, max_wait_ms: float,
                max_body_bytes: int | None, graceful_seconds: float = 30.0, own_logging: bool = True):
    """A uvicorn server for the app. ``own_logging=False`` leaves logging alone (an embedded
    server): uvicorn's default config binds handlers to the sys.stderr of the moment, which a
    caller such as a test runner may close later."""
    import uvicorn

    app = create_app(service, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes)
    logging = {} if own_logging else {"log_config": None}
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=graceful_seconds,
                            loop="auto", http="auto", lifespan="on", limit_concurrency=None, server_header=False, **logging)
    return uvicorn.Server(config)


def serve(export_dirs: list[Path], host: str, port: int, max_batch: int, max_wait_ms: float, max_body_bytes: int | None,
          threads: int | None, announce=print) -> None:
    torch.set_num_threads(threads or default_threads())
    service = SharedCloud(export_dirs)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    server = make_server(service, sock, max_batch, max_wait_ms, max_body_bytes)
    limit = max_body_bytes or default_max_body(service, max_batch)
    url_host = f"[{host}]" if ":" in host else host
    served = "; ".join(f"{v.manifest['model']['name']} ({v.model_id}, tasks {', '.join(v.tasks)})" for v in service.variants.values())
    shared = f", one shared trunk for {len(service.variants)} variants" if len(service.variants) > 1 else ""
    announce(f"serving {served}{shared} "
             f"on http://{url_host}:{actual}  max-batch {max_batch}, max-wait {max_wait_ms:g} ms, body limit {limit} B, "
             f"{torch.get_num_threads()} decoder threads; Ctrl-C stops after answering requests in flight")
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

    def __init__(self, export_dirs: list[Path], host: str = "127.0.0.1", max_batch: int = 32, max_wait_ms: float = 2.0) -> None:
        import threading

        torch.set_num_threads(default_threads())
        self.service = SharedCloud(export_dirs)
        self.sock = bind(host, 0)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = make_server(self.service, self.sock, max_batch, max_wait_ms, None, own_logging=False)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "BackgroundServer":
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
