"""Benchmark: `dtconvert serve` throughput with and without micro-batching, and a bounded load test.

    python benchmarks/serve_load.py [--export DIR] [--requests 1000] [--concurrency 16] [--rounds 2]
                                    [--load-requests 2000] [--json out.json]

Without --export it builds the issue's setup: a `dt-2m` checkpoint with random weights (the
decoder's speed does not depend on the weights' values), exported for ExecuTorch only (the
server needs just the TorchScript decoder and the manifest). Then, on loopback:

1. Throughput: the real server as a subprocess, once with micro-batching (`--max-batch 32`) and
   once with `--max-batch 1`, alternating A, B, A, B for --rounds rounds so machine noise hits
   both alike; each round sends --requests requests from --concurrency keep-alive connections.
   Reports requests/s, p50 and p95 latency, and the ratio batched ÷ unbatched (target ≥ 2×).
2. A bounded load test against the batching server: --load-requests requests at --concurrency;
   counts answers by status, errors and requests that never got an answer (target: zero and
   zero), and checks the server's own /metrics count agrees.
3. The decoder alone, first, in this process before any server starts: the median time of one
   `SharedCloud.decode` call (what the server's worker thread runs) at batch 1 and at --max-batch,
   with the servers' decoder threads: what batching can save per image, and how long the queue
   takes to drain.

The load generator is asyncio on raw sockets (HTTP/1.1 keep-alive) in this process; it shares
the machine's cores with the server, as a phone fleet's traffic would not, so absolute numbers
are a floor. Every request and loop is bounded in count and time; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


async def _one_connection(host: str, port: int, requests: list[bytes], counter: list[int], total: int, latencies: list[float],
                          statuses: dict, failures: list[str], deadline: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while counter[0] < total and time.monotonic() < deadline:
            request = requests[counter[0] % len(requests)]  # several bodies: taken in turn across all connections
            counter[0] += 1
            started = time.perf_counter()
            try:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                status = int(head.split(b" ", 2)[1])
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
                await asyncio.wait_for(reader.readexactly(length), 30)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, StopIteration) as e:
                failures.append(type(e).__name__)
                return
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _load(url: str, body: bytes | list[bytes], total: int, concurrency: int, time_limit: float = 300.0) -> dict:
    host, port = url.removeprefix("http://").split(":")
    bodies = body if isinstance(body, list) else [body]
    request = [(f"POST /v1/decode HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    counter, latencies, statuses, failures = [0], [], {}, []
    deadline = time.monotonic() + time_limit
    started = time.perf_counter()
    await asyncio.gather(*(_one_connection(host, int(port), request, counter, total, latencies, statuses, failures, deadline)
                           for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    answered = sum(statuses.values())
    return {
        "sent": counter[0], "answered": answered, "lost": counter[0] - answered, "statuses": statuses, "failures": failures,
        "seconds": round(seconds, 3), "requests_per_second": round(answered / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2) if latencies else None,
        "p95_ms": round(float(np.percentile(latencies, 95)) * 1000, 2) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2) if latencies else None,
    }


def load(url: str, body: bytes | list[bytes], total: int, concurrency: int) -> dict:
    try:
        import uvloop

        return uvloop.run(_load(url, body, total, concurrency))
    except ImportError:
        return asyncio.run(_load(url, body, total, concurrency))


def wire_message(export_dir: Path) -> bytes:
    """One image's worth of a realistic wire message for the export (random int8 values)."""
    from dtconvert.wire import encode_payload

    manifest = json.loads((export_dir / "manifest.json").read_text())
    wire = manifest["wire"]
    rng = np.random.default_rng(0)
    tensor = rng.integers(-128, 128, (1, *wire["shape"][1:]), dtype=np.int8)
    return encode_payload(tensor, float(np.float32(wire["scale"])), wire["zero_point"], manifest["model"]["id"])


def build_dt2m_export(work: Path) -> Path:
    import subprocess

    from export_sizes import EXE, random_checkpoint, random_images

    random_checkpoint("dt-2m", work / "dt-2m.pt")
    random_images(work / "calib224", 32, 224)
    out = work / "dt-2m-export"
    print("exporting a random-weight dt-2m (ExecuTorch int8 + TorchScript decoder)…", flush=True)
    subprocess.run([EXE, "export", str(work / "dt-2m.pt"), "--target", "executorch", "--calib", str(work / "calib224"),
                    "--out", str(out), "--no-verify"], check=True, capture_output=True)
    return out


def decoder_timings(export_dir: Path, batches: list[int], threads: int | None, calls: int = 200) -> dict[int, dict]:
    """Median ms of one SharedCloud.decode call at each batch size, over `calls` calls after warm-up."""
    import torch

    from dtconvert.cloud import SharedCloud
    from dtconvert.serve import default_threads

    torch.set_num_threads(threads or default_threads())
    cloud = SharedCloud([export_dir])
    variant = next(iter(cloud.variants.values()))
    cloud.warm_up(max(batches))
    timings = {}
    for batch in batches:
        wire = np.random.default_rng(0).integers(-128, 128, (batch, *cloud.token_shape), dtype=np.int8)
        seconds = []
        for _ in range(calls):
            started = time.perf_counter()
            cloud.decode(wire, [variant] * batch)
            seconds.append(time.perf_counter() - started)
        median_ms = float(np.median(seconds)) * 1000
        timings[batch] = {"median_ms": round(median_ms, 3), "per_image_ms": round(median_ms / batch, 3)}
    return timings


def metric_count(url: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('dtconvert_requests_total{') and 'endpoint="/v1/decode"' in line)


def main() -> None:
    from dtconvert.serve import running_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="An export directory (default: a random-weight dt-2m, built here).")
    parser.add_argument("--requests", type=int, default=1000, help="Requests per throughput round.")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, help="Decoder threads for both servers (default: the server's, cores - 1).")
    parser.add_argument("--load-requests", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    export_dir = args.export or build_dt2m_export(Path(tempfile.mkdtemp(prefix="dtconvert-serve-bench-")))
    body = wire_message(export_dir)
    decoder = decoder_timings(export_dir, sorted({1, args.max_batch}), args.threads)
    for batch, t in decoder.items():
        print(f"decoder alone, batch {batch:>3}: {t['median_ms']:.3f} ms per call, {t['per_image_ms']:.3f} ms per image", flush=True)
    threads = ["--threads", str(args.threads)] if args.threads else []
    configs = {"batched": ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), *threads],
               "max-batch 1": ["--max-batch", "1", *threads]}
    rounds: dict[str, list[dict]] = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, flags in configs.items():
            with running_server(export_dir, *flags) as server:
                load(server.url, body, 50, args.concurrency)  # warm-up
                result = load(server.url, body, args.requests, args.concurrency)
            rounds[name].append(result)
            print(f"round {r + 1} {name:<12} {result['requests_per_second']:>8.1f} req/s  p50 {result['p50_ms']:.1f} ms  "
                  f"p95 {result['p95_ms']:.1f} ms  lost {result['lost']}", flush=True)

    def median(name: str, key: str) -> float:
        return float(np.median([x[key] for x in rounds[name]]))

    with running_server(export_dir, *configs["batched"]) as server:
        soak = load(server.url, body, args.load_requests, args.concurrency)
        soak["server_counted"] = metric_count(server.url)
        exit_code = server.stop()
    soak["server_exit_code"] = exit_code

    manifest = json.loads((export_dir / "manifest.json").read_text())
    report = {
        "machine": {"cpus": os.cpu_count()}, "threads": args.threads, "model": manifest["model"]["name"],
        "wire_shape": manifest["wire"]["shape"], "message_bytes": len(body), "concurrency": args.concurrency,
        "decoder_alone": decoder, "rounds": rounds,
        "summary": {name: {k: median(name, k) for k in ("requests_per_second", "p50_ms", "p95_ms")} for name in configs},
        "load_test": soak,
    }
    ratio = report["summary"]["batched"]["requests_per_second"] / report["summary"]["max-batch 1"]["requests_per_second"]
    report["throughput_ratio"] = round(ratio, 2)

    print(f"\n{manifest['model']['name']} decoder, wire {manifest['wire']['shape']} ({len(body)} B/message), "
          f"concurrency {args.concurrency}, {os.cpu_count()} CPUs, decoder threads {args.threads or 'default'}, "
          f"median of {args.rounds} rounds of {args.requests}")
    print(f"{'server':<34} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for name, s in report["summary"].items():
        label = f"--max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g}" if name == "batched" else "--max-batch 1"
        print(f"{label:<34} {s['requests_per_second']:>8.1f} {s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f}")
    print(f"throughput ratio batched ÷ unbatched: {ratio:.2f}× (target ≥ 2×) {'ok' if ratio >= 2 else 'MISS'}")
    ok = soak["lost"] == 0 and set(soak["statuses"]) == {200} and soak["answered"] == args.load_requests
    print(f"load test: {args.load_requests} requests at concurrency {args.concurrency}: {soak['answered']} answered "
          f"{soak['statuses']}, {soak['lost']} lost, failures {soak['failures'] or 'none'}, server counted "
          f"{soak['server_counted']:.0f}, {soak['requests_per_second']} req/s, exit {exit_code} {'ok' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
