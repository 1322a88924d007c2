"""Benchmark: one shared cloud for two device variants against a server of one variant.

    python benchmarks/shared_cloud.py --work /tmp/dtshared [--requests 2000] [--concurrency 16] [--rounds 3] [--json out.json]

The pair is the real one: `digits` and `digits-tune` (device-tuned from it, the cloud trunk
bit-identical), trained here as `dtconvert train` subprocesses unless WORK already has them,
exported for ExecuTorch (the server needs only the TorchScript decoder and the manifest). Then,
with real `dtconvert serve` subprocesses on loopback:

1. Memory: resident set (VmRSS of the server process) after warm-up and after the load, for a
   server of digits-tune alone, of digits alone, and of both. Target: both ≤ 1.1× one. Beside
   it, the size of each export's TorchScript decoder file (the manifest's `bytes`).
2. Throughput, alternating rounds (one variant, two variants, one, two, …) so machine noise hits
   both alike: --requests requests from --concurrency keep-alive connections; the one-variant
   server gets digits-tune messages, the shared one digits and digits-tune messages in turn.
   Reports requests/s, p50/p95, errors, lost requests, and from /metrics the batches that held
   both variants. Target: shared ≥ 0.9× one-variant, mixed batches observed, 0 errors, 0 lost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_load import load, wire_message  # noqa: E402  (benchmarks/ is not a package)

EXE = str(Path(sys.executable).parent / "dtconvert")


def run(argv: list[str]) -> None:
    print("$ " + " ".join(argv), flush=True)
    subprocess.run(argv, check=True, capture_output=True)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("dtconvert_mixed_batches_total ", "dtconvert_batch_models_count ", "dtconvert_requests_total{")):
            name, value = line.rsplit(" ", 1)
            values[name] = values.get(name, 0.0) + float(value)
    return values


def decoder_file_bytes(export_dir: Path) -> int:
    manifest = json.loads((export_dir / "manifest.json").read_text())
    return next(a["bytes"] for a in manifest["artifacts"] if a["part"] == "cloud" and a["target"] == "torchscript")


def main() -> None:
    from dtconvert.serve import running_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base, tuned = work / "digits" / "ckpt.pt", work / "digits-tune" / "ckpt.pt"
    if not base.is_file():
        run([EXE, "train", "digits", "--out", str(base.parent), "-q"])
    if not tuned.is_file():
        run([EXE, "train", "digits-tune", "--init", str(base), "--out", str(tuned.parent), "-q"])
    exports = {}
    for name, ckpt in (("digits", base), ("digits-tune", tuned)):
        exports[name] = work / f"export-{name}"
        if not (exports[name] / "manifest.json").is_file():
            run([EXE, "export", str(ckpt), "--target", "executorch", "--no-verify", "--out", str(exports[name])])
    bodies = {name: wire_message(d) for name, d in exports.items()}
    decoder_bytes = {name: decoder_file_bytes(d) for name, d in exports.items()}
    print("decoder files: " + ", ".join(f"{name} {size / 1000:.0f} kB" for name, size in decoder_bytes.items()), flush=True)
    servers = {"one variant (digits-tune)": ([exports["digits-tune"]], [bodies["digits-tune"]]),
               "shared (digits + digits-tune)": ([exports["digits"], exports["digits-tune"]], [bodies["digits"], bodies["digits-tune"]])}

    memory = {}
    for label, export_dirs in (("digits-tune alone", [exports["digits-tune"]]), ("digits alone", [exports["digits"]]),
                               ("digits + digits-tune", [exports["digits"], exports["digits-tune"]])):
        with running_server(export_dirs) as server:
            requests = [bodies[d.name.removeprefix("export-")] for d in export_dirs]
            load(server.url, requests, 200, args.concurrency)
            warm = rss_bytes(server.process.pid)
            load(server.url, requests, args.requests, args.concurrency)
            memory[label] = {"after_warm_up": warm, "after_load": rss_bytes(server.process.pid)}
        print(f"{label:<22} RSS after warm-up {memory[label]['after_warm_up'] / 2**20:7.1f} MiB, after {args.requests} requests "
              f"{memory[label]['after_load'] / 2**20:7.1f} MiB", flush=True)

    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    for r in range(args.rounds):
        for name, (export_dirs, requests) in servers.items():
            with running_server(export_dirs) as server:
                load(server.url, requests, 100, args.concurrency)  # warm-up
                before = metrics(server.url)
                result = load(server.url, requests, args.requests, args.concurrency)
                after = metrics(server.url)
                exit_code = server.stop()
            result["mixed_batches"] = after.get("dtconvert_mixed_batches_total", 0) - before.get("dtconvert_mixed_batches_total", 0)
            result["batches"] = after.get("dtconvert_batch_models_count", 0) - before.get("dtconvert_batch_models_count", 0)
            result["server_exit_code"] = exit_code
            rounds[name].append(result)
            print(f"round {r + 1} {name:<30} {result['requests_per_second']:>8.1f} req/s  p50 {result['p50_ms']:.1f} ms  "
                  f"p95 {result['p95_ms']:.1f} ms  statuses {result['statuses']}  lost {result['lost']}  "
                  f"mixed batches {result['mixed_batches']:.0f} of {result['batches']:.0f}", flush=True)

    one, shared = servers
    median = {name: float(np.median([x["requests_per_second"] for x in rounds[name]])) for name in servers}
    ratio = median[shared] / median[one]
    rss_ratio = memory["digits + digits-tune"]["after_warm_up"] / memory["digits-tune alone"]["after_warm_up"]
    clean = all(x["lost"] == 0 and set(x["statuses"]) == {200} and x["answered"] == args.requests for xs in rounds.values() for x in xs)
    mixed = all(x["mixed_batches"] > 0 for x in rounds[shared])
    print(f"\nmemory: shared ÷ one variant after warm-up {rss_ratio:.3f} (target ≤ 1.1) {'ok' if rss_ratio <= 1.1 else 'MISS'}")
    print(f"throughput: shared {median[shared]:.1f} ÷ one variant {median[one]:.1f} req/s = {ratio:.3f} (target ≥ 0.9) "
          f"{'ok' if ratio >= 0.9 else 'MISS'}; mixed batches in every shared round: {mixed}; "
          f"0 errors and 0 lost in every round: {clean}")
    if args.json:
        report = {"machine": {"cpus": os.cpu_count()}, "requests": args.requests, "concurrency": args.concurrency, "memory": memory,
                  "decoder_bytes": decoder_bytes, "rounds": rounds, "median_requests_per_second": median,
                  "throughput_ratio": round(ratio, 3), "rss_ratio": round(rss_ratio, 3)}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
