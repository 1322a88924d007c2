"""``dtconvert serve --triton URL``: the devices' wire protocol in front of a Triton fleet.

The gateway holds no decoder and no state of its own. It validates every request exactly as the
server does (the same routes, the same :class:`~dtconvert.cloud.Catalogue` checks, the same
answers), then forwards the message's rows to its variant's ensemble on Triton over gRPC
(``dtconvert cloud`` wrote the repository; each row carries its variant's scale and zero point,
so Triton's dynamic batcher mixes variants in the trunk), and answers with the top-k labels of
Triton's logits. Any number of gateways may stand behind a load balancer.

Before it listens, :func:`check_triton` asks Triton for each variant's ensemble and refuses to
start, in one line, unless it is ready and its config names the variant's model id and the
trunk digest the export's manifest records: a gateway never forwards to a cloud it was not
written for. When Triton refuses or cannot be reached, the client gets 502 or 503
(:class:`CloudRefused`), and ``/metrics`` counts what was forwarded and what Triton refused.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from dtconvert.batching import QueueFull, ShuttingDown
from dtconvert.cloud import Catalogue, Variant, softmax
from dtconvert.errors import UserError
from dtconvert.triton import MODEL_IDS_KEY, TRUNK_KEY, ensemble_name, infer_inputs


class CloudRefused(Exception):
    """Triton did not answer a forwarded request: ``unavailable`` (unreachable, overloaded, not
    ready: 503, try again) or refused it (502: the gateway and the repository disagree)."""

    def __init__(self, message: str, unavailable: bool, reason: str) -> None:
        super().__init__(message)
        self.unavailable, self.reason = unavailable, reason


# gRPC status codes that say "not now" rather than "never".
_TRANSIENT = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED", "StatusCode.CANCELLED"}


def grpc_target(url: str) -> str:
    """``host:port`` from ``--triton`` (``grpc://host:port`` or ``host:port``)."""
    target = url.removeprefix("grpc://")
    host, _, port = target.rpartition(":")
    if "://" in target or not host or not port.isdigit():
        raise UserError(f"--triton {url!r}: give Triton's gRPC address as host:port or grpc://host:port")
    return target


def check_triton(catalogue: Catalogue, url: str, timeout: float = 10.0) -> None:
    """Refuse (UserError) unless Triton at ``url`` serves every variant's ensemble, written for it."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    target = grpc_target(url)
    client = grpcclient.InferenceServerClient(target)
    try:
        if not client.is_server_live(client_timeout=timeout):
            raise UserError(f"--triton {url}: Triton is not live")
        for variant in catalogue.variants.values():
            name = ensemble_name(variant)
            if not client.is_model_ready(name, client_timeout=timeout):
                raise UserError(
                    f"--triton {url}: Triton has no ready model {name!r} for {variant.export_dir} (run 'dtconvert cloud' and load it)"
                )
            params = client.get_model_config(name, as_json=True, client_timeout=timeout)["config"].get("parameters", {})
            ids = params.get(MODEL_IDS_KEY, {}).get("string_value", "").split(",")
            trunk = params.get(TRUNK_KEY, {}).get("string_value")
            recorded = (variant.manifest["model"].get("cloud") or {}).get("trunk_sha256")
            if variant.model_id not in ids or recorded is None or trunk != recorded:
                raise UserError(
                    f"--triton {url}: model {name!r} was not written for {variant.export_dir} "
                    f"(model ids {','.join(ids) or 'none'}, trunk {trunk or 'none'}; the export is {variant.model_id}, trunk {recorded})"
                )
    except InferenceServerException as e:
        raise UserError(f"--triton {url}: Triton did not answer ({e.message() or e.status()})") from None
    finally:
        client.close()


class TritonForwarder:
    """In the server's place of the :class:`~dtconvert.batching.MicroBatcher`: the same interface,
    each request forwarded at once (Triton batches). ``on_forward(variant, rows)`` and
    ``on_refused(variant, reason)`` feed the metrics."""

    def __init__(self, catalogue: Catalogue, url: str, max_queue: int | None, timeout: float, on_forward, on_refused) -> None:
        self.catalogue, self.target, self.max_queue, self.timeout = catalogue, grpc_target(url), max_queue, timeout
        self.on_forward, self.on_refused = on_forward, on_refused
        self.client: Any = None  # tritonclient.grpc.aio.InferenceServerClient, made in start() on the server's event loop
        self.pending = 0  # images forwarded and not yet answered
        self.closing = False

    async def start(self) -> None:
        import tritonclient.grpc.aio as grpcaio

        self.client = grpcaio.InferenceServerClient(self.target)

    def check_open(self) -> None:
        if self.closing:
            raise ShuttingDown()

    async def stop(self) -> None:
        self.closing = True
        while self.pending:
            await asyncio.sleep(0.005)
        if self.client is not None:
            await self.client.close()

    async def submit(self, wire: np.ndarray, variant: Variant) -> tuple[list[list[np.ndarray]], dict]:
        """The message's rows through its variant's ensemble; per row, each task's probabilities."""
        if self.max_queue is not None and self.pending + len(wire) > self.max_queue:
            raise QueueFull(self.pending, self.max_queue)
        self.pending += len(wire)
        started = time.perf_counter()
        try:
            logits = await self._infer(wire, variant)
        finally:
            self.pending -= len(wire)
        self.on_forward(variant, len(wire))
        probs = [softmax(x) for x in logits]
        rows = [[p[row] for p in probs] for row in range(len(wire))]
        return rows, {"forward_ms": round((time.perf_counter() - started) * 1000.0, 3), "batch_images": len(wire)}

    async def _infer(self, wire: np.ndarray, variant: Variant) -> list[np.ndarray]:
        import tritonclient.grpc.aio as grpcaio
        from tritonclient.utils import InferenceServerException

        inputs = infer_inputs(grpcaio, wire, variant.scale, variant.zero_point)
        outputs = [grpcaio.InferRequestedOutput(f"OUTPUT__{i}") for i in range(len(variant.tasks))]
        try:
            result = await self.client.infer(ensemble_name(variant), inputs, outputs=outputs, client_timeout=self.timeout)
        except InferenceServerException as e:
            unavailable = str(e.status()) in _TRANSIENT
            reason = "triton_unavailable" if unavailable else "triton_refused"
            self.on_refused(variant, reason)
            what = "is unavailable" if unavailable else "refused the forwarded request"
            raise CloudRefused(f"the Triton cloud {what} ({e.message() or e.status()})", unavailable, reason) from None
        return [result.as_numpy(f"OUTPUT__{i}") for i in range(len(variant.tasks))]
