"""Benchmark: the shared cloud of digits + digits-tune three ways: dtconvert serve, Triton, and the gateway.

    python benchmarks/triton_cloud.py --work /tmp/dtshared [--requests 2000] [--concurrency 16] [--json out.json]

The pair is benchmarks/shared_cloud.py's (trained and exported there, or here into the same WORK).
``dtconvert cloud --backend python`` writes the Triton repository, and a real ``tritonserver``
2.51 from the nvidia-pytriton wheel (:mod:`dtconvert.triton.server`) serves it on loopback.
Then, one after the other on the same machine, --requests requests from --concurrency
concurrent clients, the two variants alternating, one image per request:

(a) ``dtconvert serve`` of both exports: wire messages over HTTP keep-alive connections;
(b) Triton direct: the same rows through each variant's ensemble with tritonclient's asyncio gRPC
    client (one channel, --concurrency requests in flight), as a Triton-native client would;
(c) the gateway, ``dtconvert serve --triton`` in front of that Triton: wire messages over HTTP,
    as (a).

Reports requests/s, p50 and p99 latency, errors and lost requests per setup, and Triton's own
trunk statistics (batches and the rows they held) for (b) and (c). Target: 0 errors and 0 lost
in every setup. All three share the machine's cores with their clients: on 2 cores the numbers
say what each costs per request here, not what a fleet would do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_load import load, wire_message  # noqa: E402  (benchmarks/ is not a package)
from shared_cloud import EXE, run  # noqa: E402


def exports_in(work: Path) -> list[Path]:
    """digits and digits-tune exported into WORK (trained first when missing), as shared_cloud.py does."""
    base, tuned = work / "digits" / "ckpt.pt", work / "digits-tune" / "ckpt.pt"
    if not base.is_file():
        run([EXE, "train", "digits", "--out", str(base.parent), "-q"])
    if not tuned.is_file():
        run([EXE, "train", "digits-tune", "--init", str(base), "--out", str(tuned.parent), "-q"])
    out = []
    for name, ckpt in (("digits", base), ("digits-tune", tuned)):
        export = work / f"export-{name}"
        if not (export / "manifest.json").is_file():
            run([EXE, "export", str(ckpt), "--target", "executorch", "--no-verify", "--out", str(export)])
        out.append(export)
    return out


async def _triton_load(target: str, jobs: list[tuple[str, list]], total: int, concurrency: int) -> dict:
    import tritonclient.grpc.aio as grpcaio

    client = grpcaio.InferenceServerClient(target)
    counter, latencies, failures = [0], [], []

    async def worker() -> None:
        while counter[0] < total:
            name, inputs = jobs[counter[0] % len(jobs)]
            counter[0] += 1
            started = time.perf_counter()
            try:
                await client.infer(name, inputs, client_timeout=30)
            except Exception as e:  # noqa: BLE001  counted, reported
                failures.append(type(e).__name__)
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    await client.close()
    answered = len(latencies)
    return {"sent": counter[0], "answered": answered, "lost": counter[0] - answered - len(failures), "statuses": {200: answered},
            "failures": failures, "seconds": round(seconds, 3), "requests_per_second": round(answered / seconds, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2), "p95_ms": round(float(np.percentile(latencies, 95)) * 1000, 2),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2)}  # fmt: skip


def triton_jobs(export_dirs: list[Path]) -> list[tuple[str, list]]:
    """One image per request for each variant's ensemble: the rows wire_message sends, as Triton inputs."""
    import tritonclient.grpc.aio as grpcaio

    from dtconvert.cloud import Catalogue
    from dtconvert.triton import ensemble_name, infer_inputs
    from dtconvert.wire import decode_payload

    catalogue = Catalogue(export_dirs)
    jobs = []
    for export in export_dirs:
        payload = decode_payload(wire_message(export))
        variant = catalogue.variant(payload.model_id)
        jobs.append((ensemble_name(variant), infer_inputs(grpcaio, payload.tensor, variant.scale, variant.zero_point)))
    return jobs


def trunk_stats(http: str) -> dict:
    stats = json.loads(urllib.request.urlopen(f"http://{http}/v2/models/cloud_trunk/stats", timeout=10).read())["model_stats"][0]
    return {"executions": int(stats["execution_count"]), "rows": int(stats["inference_count"])}


def main() -> None:
    from dtconvert.serve import running_server
    from dtconvert.triton.server import TritonServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    exports = exports_in(args.work)
    repo = args.work / "triton-cloud"
    run([EXE, "cloud", *map(str, exports), "--out", str(repo), "--backend", "python"])
    bodies = [wire_message(d) for d in exports]
    results: dict[str, dict] = {}

    def report(name: str, result: dict, before: dict | None = None, after: dict | None = None) -> None:
        if before is not None and after is not None:
            result["trunk"] = {k: after[k] - before[k] for k in before}
        results[name] = result
        trunk = result.get("trunk")
        batches = f"  trunk: {trunk['rows']} rows in {trunk['executions']} batches" if trunk else ""
        print(f"{name:<34} {result['requests_per_second']:>8.1f} req/s  p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  "
              f"answered {result['answered']}  failures {len(result['failures'])}  lost {result['lost']}{batches}", flush=True)

    with running_server(exports) as server:
        load(server.url, bodies, 200, args.concurrency)  # warm-up
        report("(a) dtconvert serve", load(server.url, bodies, args.requests, args.concurrency))
    with TritonServer(repo / "triton") as triton:
        jobs = triton_jobs(exports)
        asyncio.run(_triton_load(triton.grpc, jobs, 200, args.concurrency))  # warm-up
        before = trunk_stats(triton.http)
        result = asyncio.run(_triton_load(triton.grpc, jobs, args.requests, args.concurrency))
        report("(b) Triton direct (gRPC)", result, before, trunk_stats(triton.http))
        with running_server(exports, "--triton", triton.grpc) as gateway:
            load(gateway.url, bodies, 200, args.concurrency)  # warm-up
            before = trunk_stats(triton.http)
            result = load(gateway.url, bodies, args.requests, args.concurrency)
            report("(c) gateway -> Triton", result, before, trunk_stats(triton.http))
    clean = all(r["lost"] == 0 and not r["failures"] and set(r["statuses"]) == {200} and r["answered"] == args.requests
                for r in results.values())
    print(f"\n0 errors and 0 lost in every setup: {clean}")
    if args.json:
        machine = {"cpus": os.cpu_count()}
        args.json.write_text(json.dumps({"machine": machine, "requests": args.requests, "concurrency": args.concurrency,
                                         "results": results}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
