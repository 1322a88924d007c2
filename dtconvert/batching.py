"""The decode worker: micro-batching of concurrent requests, with a bounded queue.

Concurrent requests, of any device variants, are decoded together: up to ``max_batch`` images,
waiting at most ``max_wait_ms`` after the first one for more. One worker thread runs the decoder,
so requests that arrive while it is busy form the next batch. ``pending`` counts the images
accepted and not yet answered; a request that would take it past ``max_queue`` is refused at once
(:class:`QueueFull`), so latency stays bounded under overload instead of growing with the backlog.
Once stopping, the batcher finishes what it holds and refuses new work (:class:`ShuttingDown`).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from dtconvert.cloud import SharedCloud, Variant


class QueueFull(Exception):
    """A request's images would put more than the queue's bound waiting for the decoder."""

    def __init__(self, pending: int, limit: int) -> None:
        super().__init__(f"the server is at capacity ({pending} images waiting for the decoder, limit {limit})")
        self.pending, self.limit = pending, limit


class ShuttingDown(Exception):
    """The batcher is finishing the jobs it holds and takes no new ones."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down; retry on another instance")


@dataclass
class _Job:
    wire: np.ndarray
    variant: Variant
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """``max_queue``: most images waiting (None: no bound); ``on_batch(owners)`` sees every batch's
    rows by variant (for the metrics)."""

    def __init__(self, service: SharedCloud, max_batch: int, max_wait_ms: float, max_queue: int | None = None, on_batch=None) -> None:
        self.service, self.max_batch, self.max_wait, self.max_queue = service, max_batch, max_wait_ms / 1000.0, max_queue
        self.on_batch = on_batch or (lambda owners: None)
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dtconvert-decode")
        self.task: asyncio.Task | None = None
        self._carry: _Job | None = None
        self.pending = 0  # images accepted and not yet answered (queued, or in the decoder)
        self.closing = False

    async def start(self) -> None:
        """Warm the decoder up in the worker thread that will run it, then start taking jobs."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.service.warm_up, self.max_batch)
        self.task = loop.create_task(self._run())

    def check_open(self) -> None:
        """Raise ShuttingDown once stopping (a request asks first, before it reads its body)."""
        if self.closing:
            raise ShuttingDown()

    async def stop(self) -> None:
        """Finish every queued job, then stop the worker."""
        self.closing = True
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
        """Queue one message's rows for ``variant``; its rows' probabilities and timing come back.
        Raises QueueFull at once, rather than answering late, when the queue cannot take them."""
        if self.max_queue is not None and self.pending + len(wire) > self.max_queue:
            raise QueueFull(self.pending, self.max_queue)
        job = _Job(wire, variant, asyncio.get_running_loop().create_future())
        self.pending += len(wire)
        try:
            await self.queue.put(job)
            return await job.future
        finally:
            self.pending -= len(wire)

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
                except TimeoutError:
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
            except Exception as e:  # noqa: BLE001  the decoder itself failed, with whatever torch raised: the server's fault, a 500
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            decode_ms = (time.perf_counter() - started) * 1000.0
            self.on_batch(owners)
            row = 0
            for j in jobs:
                n = len(j.wire)
                timing = {
                    "queue_ms": round((started - j.queued) * 1000.0, 3),
                    "decode_ms": round(decode_ms, 3),
                    "batch_images": len(wire),
                    "batch_models": len(set(map(id, owners))),
                }
                if not j.future.done():  # the client may have gone away
                    j.future.set_result((probs[row : row + n], timing))
                row += n
