"""The server's Prometheus metrics: answers by endpoint and status, refusals, batch shapes, latency."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dtconvert.cloud import Variant

# Latency buckets (seconds) for the Prometheus histogram: sub-millisecond to a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ENDPOINTS = {"/v1/decode", "/v1/model", "/v1/models", "/healthz", "/metrics"}
MEDIA_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """One server's counters, in a registry of its own (several servers may share a process)."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        self.requests = Counter(
            "dtconvert_requests_total", "HTTP requests answered, by endpoint and status.", ["endpoint", "status"], registry=registry
        )
        self.decodes = Counter(
            "dtconvert_decode_requests_total",
            '/v1/decode requests answered, by model id and status (model_id "-" when the message named none that could be read).',
            ["model_id", "status"],
            registry=registry,
        )
        self.errors = Counter("dtconvert_request_errors_total", "Rejected /v1/decode requests, by reason.", ["reason"], registry=registry)
        self.batch_images = Histogram(
            "dtconvert_batch_images",
            "Images per decoder call (micro-batch size).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.batch_models = Histogram(
            "dtconvert_batch_models",
            "Device variants (model ids) per decoder call: above 1, a mixed batch.",
            buckets=(1, 2, 3, 4, 8, 16),
            registry=registry,
        )
        self.batch_rows = Counter("dtconvert_batch_rows_total", "Images decoded, by model id.", ["model_id"], registry=registry)
        self.mixed_batches = Counter(
            "dtconvert_mixed_batches_total", "Decoder calls whose batch held rows of more than one model id.", registry=registry
        )
        self.latency = Histogram(
            "dtconvert_decode_request_seconds",
            "Time from the request's arrival to its answer, /v1/decode.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.forwarded = Counter(
            "dtconvert_triton_forwarded_rows_total",
            "Images forwarded to Triton and answered (--triton), by model id.",
            ["model_id"],
            registry=registry,
        )
        self.triton_refused = Counter(
            "dtconvert_triton_refused_total",
            "Forwarded requests Triton did not answer (--triton), by model id and reason (triton_refused: 502, triton_unavailable: 503).",
            ["model_id", "reason"],
            registry=registry,
        )
        self.in_flight = Gauge("dtconvert_requests_in_flight", "/v1/decode requests being handled.", registry=registry)
        self.queued = Gauge("dtconvert_queued_images", "Images accepted and waiting for (or in) the decoder.", registry=registry)

    def on_batch(self, owners: list[Variant]) -> None:
        """A decoder call's rows, by the variant each belongs to."""
        self.batch_images.observe(len(owners))
        ids = [v.model_id for v in owners]
        distinct = set(ids)
        self.batch_models.observe(len(distinct))
        if len(distinct) > 1:
            self.mixed_batches.inc()
        for model_id in distinct:
            self.batch_rows.labels(model_id).inc(ids.count(model_id))

    def decoded(self, model_id: str, seconds: float) -> None:
        self.requests.labels("/v1/decode", "200").inc()
        self.decodes.labels(model_id, "200").inc()
        self.latency.observe(seconds)

    def refused(self, endpoint: str, status: int, reason: str, model_id: str) -> None:
        """A request answered with an error; on /v1/decode also by reason and model id ("-": none served)."""
        self.requests.labels(endpoint, str(status)).inc()
        if endpoint == "/v1/decode":
            self.errors.labels(reason).inc()
            self.decodes.labels(model_id, str(status)).inc()

    def refused_connection(self, path: str) -> None:
        """A connection past --max-connections, answered 503 before any route saw it."""
        self.requests.labels(path if path in ENDPOINTS else "other", "503").inc()
        if path == "/v1/decode":
            self.errors.labels("connections").inc()

    def exposition(self, queued_images: int) -> str:
        self.queued.set(queued_images)
        return generate_latest(self.registry).decode()
