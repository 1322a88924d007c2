"""Benchmark: what `--keep-float` costs, in bytes and latency per runtime, on the dt-2m-shaped encoder.

    python benchmarks/keep_float_cost.py --work /tmp/dtkeep [--keep layers.1.ffn --threads 1 --runs 50]

dt-2m gets random weights in the real checkpoint format and 32 random 224×224 calibration images
(bytes and latency do not depend on the weights' values). It is exported twice with
`dtconvert export --target all --no-verify`: the default int8, and int8 with `--keep-float KEEP`
(default: one MLP, `layers.1.ffn`, 2 × 65,536 weights). One `dtconvert bench` run then times
every artifact of both exports interleaved, and this script prints, per runtime, the bytes and
median batch-1 latency of each and their ratio (kept ÷ all-int8), from WORK/bench-keep-float.json.
Core ML does not run on Linux: its bytes are reported, its latency is not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_sizes import dt2m_inputs
from export_sizes import run_logged as run

EXE = str(Path(sys.executable).parent / "dtconvert")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--keep", default="layers.1.ffn")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--runs", default="50")
    parser.add_argument("--skip-export", action="store_true", help="Reuse the exports already in WORK.")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    ckpt, calib224 = dt2m_inputs(work)
    plain, kept = work / "export-int8", work / "export-int8-keep"
    if not args.skip_export:
        common = ["--target", "all", "--no-verify", "--calib", str(calib224)]
        run([EXE, "export", str(ckpt), *common, "--out", str(plain)])
        run([EXE, "export", str(ckpt), *common, "--keep-float", args.keep, "--out", str(kept)])
    report = work / "bench-keep-float.json"
    run([EXE, "bench", str(plain), str(kept), "--checkpoint", str(ckpt), "--threads", args.threads, "--batch", "1",
         "--runs", args.runs, "--no-memory", "--json", str(report)])

    results = json.loads(report.read_text())["results"]
    rows = {}
    for r in results:
        if r["role"] == "device" and r["export_dir"] is not None:
            rows[(r["kind"], r["runtime"].split(" int8")[0], Path(r["export_dir"]).name)] = r
    print(f"\n--keep-float {args.keep} on dt-2m (random weights), batch 1, {args.threads} thread(s), median of {args.runs} runs")
    print("| runtime | all-int8 bytes | kept bytes | bytes ratio | all-int8 ms | kept ms | latency ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (kind, runtime, export), r in sorted(rows.items()):
        if export != plain.name:
            continue
        other = rows.get((kind, runtime, kept.name))
        if other is None:
            continue
        print(f"| {runtime} | {r['artifact_bytes']:,} | {other['artifact_bytes']:,} | {other['artifact_bytes'] / r['artifact_bytes']:.3f} "
              f"| {r['median_ms']:.3f} | {other['median_ms']:.3f} | {other['median_ms'] / r['median_ms']:.3f} |")
    for export in (plain, kept):
        manifest = json.loads((export / "manifest.json").read_text())
        sizes = {a["target"]: a["bytes"] for a in manifest["artifacts"] if a["part"] == "device"}
        print(f"{export.name}: " + ", ".join(f"{t} {b:,} B" for t, b in sizes.items()))


if __name__ == "__main__":
    main()
