"""Benchmark: `dtconvert bench` on int8 and fp32 exports of one checkpoint, as in docs/performance.md.

    python benchmarks/bench_exports.py --model dt-2m  --work /tmp/dtbench [--threads 1,2 --batch 1,8 --runs 30]
    python benchmarks/bench_exports.py --model digits --work /tmp/dtbench [--digits-ckpt runs/digits/ckpt.pt]

dt-2m has no trained checkpoint: it gets random weights in the real checkpoint format and 32
random 224×224 calibration images (latency does not depend on the weights' values). digits uses
the given checkpoint, or trains one. Each precision (default: int8, int8-static and fp32) is
exported with `dtconvert export --target all --no-verify` into WORK, then one `dtconvert bench`
run times every artifact of the exports interleaved, writing WORK/bench-<model>.json and .png
(copy them into docs/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_sizes import dt2m_inputs
from export_sizes import run_logged as run

EXE = str(Path(sys.executable).parent / "dtconvert")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("dt-2m", "digits"), required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--digits-ckpt", type=Path)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--runs", default="30")
    parser.add_argument("--precisions", default="int8,int8-static,fp32")
    parser.add_argument("--skip-export", action="store_true", help="Reuse the exports already in WORK.")
    parser.add_argument("--skip-bench", action="store_true", help="Only export.")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    calib: list[str] = []
    if args.model == "dt-2m":
        ckpt, calib224 = dt2m_inputs(work)
        calib = ["--calib", str(calib224)]
    else:
        ckpt = args.digits_ckpt or work / "digits" / "ckpt.pt"
        if not ckpt.is_file():
            run([EXE, "train", "digits", "--out", str(ckpt.parent), "-q"])

    precisions = args.precisions.split(",")
    exports = [work / f"export-{args.model}-{p}" for p in precisions]
    if not args.skip_export:
        for export_dir, precision in zip(exports, precisions, strict=True):
            run([EXE, "export", str(ckpt), "--target", "all", "--precision", precision, "--no-verify", *calib, "--out", str(export_dir)])
    if args.skip_bench:
        return
    run([EXE, "bench", *map(str, exports), "--checkpoint", str(ckpt), "--threads", args.threads, "--batch", args.batch,
         "--runs", args.runs, "--json", str(work / f"bench-{args.model}.json"), "--plot", str(work / f"bench-{args.model}.png")])


if __name__ == "__main__":
    main()
