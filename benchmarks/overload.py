"""Benchmark: `dtconvert serve` under overload, driven by wrk (a real load generator) on loopback.

    python benchmarks/overload.py --work /tmp/dtshared [--connections 1024] [--seconds 10] [--json out.json]

Needs `wrk` (Debian: `apt install wrk`). The export is the digits one (trained and exported here
as `dtconvert train` / `dtconvert export` subprocesses unless WORK already has them, the same
layout as benchmarks/shared_cloud.py); every request carries 8 images, as the issue measured.
With one real `dtconvert serve` subprocess at its default settings:

1. Baseline: a 16-connection probe (keep-alive, raw sockets, this process; like dtconvert client
   and the apps it waits Retry-After after a 503 before its next request) alone for --seconds:
   p50/p99 latency; and wrk alone at 16 connections for the same time (its own p99).
2. Overload: wrk at --connections minus 16 connections for --seconds (`--timeout 5s`), and beside
   it the same 16-connection probe, so there are --connections connections in all. wrk counts
   every answer by status (a Lua `response` hook) and its timeouts and socket errors; the probe
   times each request and keeps the status, which gives the p99 of *accepted* (200) requests
   (wrk's own percentiles mix in the 503s, and wrk ignores Retry-After: the server reads nothing
   more from a refused connection for the Retry-After seconds, so wrk's next request on it waits
   that long and its latency includes the wait it was told to make). A thread asks /healthz
   every 200 ms throughout and records failures and the slowest answer.
3. /metrics after the load: the server's counts of /v1/decode answers by status, set against
   wrk's and the probe's. wrk stops at its deadline with up to one request in flight per
   connection, which the server may still answer, so server − clients lies in [0, connections].

Targets (issue 13): 0 client timeouts; only 200 and 503; accepted p99 under overload ≤ 5× the
probe's p99 at 16 connections; /healthz answered throughout; metrics agree as above. The load
generator shares the 2 cores with the server, so absolute rates are a floor; ratios are taken
in one run. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from shared_cloud import EXE, run  # noqa: E402  (benchmarks/ is not a package)

IMAGES_PER_REQUEST = 8
PROBE_CONNECTIONS = 16

WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("DT_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, string.format('"%s": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'DTJSON {"requests": %d, "duration_us": %d, "statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d, "status": %d}, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration, table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def message(export_dir: Path) -> bytes:
    """One request's body: IMAGES_PER_REQUEST images of random int8 wire values for the export."""
    from dtconvert.wire import encode_payload

    manifest = json.loads((export_dir / "manifest.json").read_text())
    wire = manifest["wire"]
    tensor = np.random.default_rng(0).integers(-128, 128, (IMAGES_PER_REQUEST, *wire["shape"][1:]), dtype=np.int8)
    return encode_payload(tensor, float(np.float32(wire["scale"])), wire["zero_point"], manifest["model"]["id"])


def wrk(url: str, connections: int, seconds: int, body_file: Path, script: Path) -> dict:
    threads = min(2, connections)
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s", "-s", str(script),
            url + "/v1/decode"]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "DT_BODY": str(body_file)}, timeout=seconds + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("DTJSON ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    result = json.loads(line.removeprefix("DTJSON "))
    result["statuses"] = {int(k): v for k, v in result["statuses"].items()}
    result["connections"] = connections
    return result


async def _probe_connection(host: str, port: int, request: bytes, deadline: float, samples: list[tuple[int, float]],
                            failures: list[str]) -> None:
    reader = writer = None
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            started = time.perf_counter()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            status = int(head.split(b" ", 2)[1])
            fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:] if h)}
            await asyncio.wait_for(reader.readexactly(int(fields[b"content-length"])), 5)
            samples.append((status, time.perf_counter() - started))
            if fields.get(b"connection") == b"close":
                writer.close()
                writer = None
            if status == 503:  # a polite client, as dtconvert client and the apps are: wait what the server asks
                await asyncio.sleep(min(float(fields.get(b"retry-after", b"1")), 5.0))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError, KeyError) as e:
            failures.append(type(e).__name__)
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


def probe(url: str, body: bytes, seconds: float) -> dict:
    """PROBE_CONNECTIONS keep-alive connections sending `body` back to back for `seconds`."""
    host, port = url.removeprefix("http://").split(":")
    request = (f"POST /v1/decode HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    samples: list[tuple[int, float]] = []
    failures: list[str] = []

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_probe_connection(host, int(port), request, deadline, samples, failures)
                               for _ in range(PROBE_CONNECTIONS)))

    asyncio.run(main())
    accepted = [s for status, s in samples if status == 200]
    statuses: dict[int, int] = {}
    for status, _ in samples:
        statuses[status] = statuses.get(status, 0) + 1

    def pct(q: float) -> float | None:
        return round(float(np.percentile(accepted, q)) * 1000, 2) if accepted else None

    return {"statuses": statuses, "failures": failures, "accepted": len(accepted), "p50_ms": pct(50), "p99_ms": pct(99)}


class HealthWatch(threading.Thread):
    """Asks /healthz every 200 ms until stopped; keeps failures and the slowest answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop_event = url, threading.Event()
        self.answers, self.failures, self.slowest_ms = 0, [], 0.0

    def run(self) -> None:
        while not self.stop_event.wait(0.2):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=5) as answer:
                    ok = answer.status == 200 and json.loads(answer.read())["status"] == "ok"
                self.answers += ok
                if not ok:
                    self.failures.append("not ok")
            except OSError as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            self.slowest_ms = max(self.slowest_ms, (time.perf_counter() - started) * 1000)


def decode_counts(url: str) -> dict[int, int]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    counts: dict[int, int] = {}
    for line in text.splitlines():
        if line.startswith('dtconvert_requests_total{endpoint="/v1/decode"'):
            name, value = line.rsplit(" ", 1)
            status = int(name.split('status="', 1)[1].split('"', 1)[0])
            counts[status] = counts.get(status, 0) + int(float(value))
    return counts


def rejected_by_reason(url: str) -> dict[str, int]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {line.split('reason="', 1)[1].split('"', 1)[0]: int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines() if line.startswith("dtconvert_request_errors_total{")}


def main() -> None:
    from dtconvert.serve import running_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the digits checkpoint and export (reused).")
    parser.add_argument("--connections", type=int, default=1024)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--serve-flags", default="", help="Extra flags for dtconvert serve (default: none, its defaults).")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("error: wrk is not installed (Debian: apt install wrk)")
    if args.connections <= PROBE_CONNECTIONS:
        raise SystemExit(f"error: --connections must exceed the probe's {PROBE_CONNECTIONS}")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    ckpt, export_dir = work / "digits" / "ckpt.pt", work / "export-digits"
    if not ckpt.is_file():
        run([EXE, "train", "digits", "--out", str(ckpt.parent), "-q"])
    if not (export_dir / "manifest.json").is_file():
        run([EXE, "export", str(ckpt), "--target", "executorch", "--no-verify", "--out", str(export_dir)])

    body = message(export_dir)
    scratch = Path(tempfile.mkdtemp(prefix="dtconvert-overload-"))
    body_file, script = scratch / "body.bin", scratch / "post.lua"
    body_file.write_bytes(body)
    script.write_text(WRK_SCRIPT)
    report: dict = {"machine": {"cpus": os.cpu_count()}, "images_per_request": IMAGES_PER_REQUEST, "message_bytes": len(body),
                    "connections": args.connections, "seconds": args.seconds}
    with running_server(export_dir, *args.serve_flags.split()) as server:
        report["server_announce"] = "".join(server.output).strip()
        probe(server.url, body, 2)  # warm-up
        report["baseline_probe"] = probe(server.url, body, args.seconds)
        report["baseline_wrk"] = wrk(server.url, PROBE_CONNECTIONS, args.seconds, body_file, script)
        before = decode_counts(server.url)
        watch = HealthWatch(server.url)
        watch.start()
        flood: dict = {}
        flooder = threading.Thread(target=lambda: flood.update(
            wrk(server.url, args.connections - PROBE_CONNECTIONS, args.seconds, body_file, script)))
        flooder.start()
        time.sleep(0.5)  # let wrk open its connections first: the probe then sees the overload throughout
        overload_probe = probe(server.url, body, args.seconds - 1)
        flooder.join()
        time.sleep(1.0)  # requests in flight when wrk stopped are answered and counted
        watch.stop_event.set()
        watch.join()
        after = decode_counts(server.url)
        report["rejected_by_reason"] = rejected_by_reason(server.url)
        report["server_exit_code"] = server.stop()
    shutil.rmtree(scratch)

    report["overload_wrk"], report["overload_probe"] = flood, overload_probe
    report["healthz"] = {"answers": watch.answers, "failures": watch.failures, "slowest_ms": round(watch.slowest_ms, 1)}
    server_counts = {s: after.get(s, 0) - before.get(s, 0) for s in set(after) | set(before)}
    client_counts = {s: flood["statuses"].get(s, 0) + overload_probe["statuses"].get(s, 0)
                     for s in set(flood["statuses"]) | set(overload_probe["statuses"])}
    report["counts"] = {"server": server_counts, "clients": client_counts}
    in_flight = sum(server_counts.values()) - sum(client_counts.values())
    ratio = overload_probe["p99_ms"] / report["baseline_probe"]["p99_ms"] if overload_probe["p99_ms"] else float("inf")
    checks = {
        "0 client timeouts": flood["errors"]["timeout"] == 0 and not [f for f in overload_probe["failures"] if "Timeout" in f],
        "only 200 and 503": set(client_counts) <= {200, 503} and set(server_counts) <= {200, 503},
        "accepted p99 ≤ 5× p99 at 16": ratio <= 5,
        "/healthz throughout": not watch.failures and watch.answers >= args.seconds * 4,
        "/metrics matches the clients": 0 <= in_flight <= args.connections
                                        and all(server_counts.get(s, 0) >= client_counts.get(s, 0) for s in client_counts),
    }
    report["accepted_p99_ratio"] = round(ratio, 2)
    report["checks"] = checks

    base, over = report["baseline_probe"], overload_probe
    print(f"\ndigits export, {IMAGES_PER_REQUEST} images ({len(body)} B) per request, {os.cpu_count()} CPUs, "
          f"server at its defaults, {args.seconds} s per phase")
    w16 = report["baseline_wrk"]
    print(f"16 connections   probe: {sum(base['statuses'].values())} answered {base['statuses']}, p50 {base['p50_ms']} ms, "
          f"p99 {base['p99_ms']} ms; wrk: {w16['requests']} requests, {w16['statuses']}, p99 {w16['p99_ms']:.1f} ms")
    print(f"{args.connections} connections wrk ({args.connections - PROBE_CONNECTIONS}): {flood['requests']} requests "
          f"{flood['statuses']}, errors {flood['errors']}, p99 (all answers) {flood['p99_ms']:.1f} ms, max {flood['max_ms']:.1f} ms")
    print(f"                 probe (16): {over['statuses']}, accepted p99 {over['p99_ms']} ms "
          f"= {ratio:.2f}× the p99 at 16 (target ≤ 5×), failures {over['failures'] or 'none'}")
    print(f"/healthz: {watch.answers} answers, failures {watch.failures or 'none'}, slowest {watch.slowest_ms:.0f} ms")
    print(f"/v1/decode answers — server {dict(sorted(server_counts.items()))}, clients {dict(sorted(client_counts.items()))}, "
          f"in flight at wrk's stop {in_flight}; rejected by reason {report['rejected_by_reason']}")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'MISS'} {name}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
