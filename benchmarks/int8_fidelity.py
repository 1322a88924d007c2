"""Benchmark: fidelity and delegate structure of every precision on three models, and export time.

    python benchmarks/int8_fidelity.py --work /tmp/dtfidelity [--json out.json]

Models (trained here as real `dtconvert train` subprocesses, or reused from WORK):
  digits        the bundled recipe (very confident: ~99.7 % held-out)
  digits-tune   device-tuned from digits, three tasks
  other-shape   benchmarks/recipes/other-shape.yaml: another shape, ~87 % digit accuracy

Each is exported with `dtconvert export --target all` at int8 (the default) and int8-static,
timed, and verified by the export itself on the 360 held-out digits. Printed per artifact and
runtime: wire SQNR against fp32 (dB), the lowest top-1 agreement over the tasks, the XNNPACK
delegate calls or partitions and the ops outside them, and whether every check passed.
Targets (issue 11): the default int8 passes the gate (top-1 ≥ 99.5 % per task) with SQNR ≥ 38 dB
on every runtime and model, runs as one partition; digits exports in ≤ 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).parent / "dtconvert")
MODELS = {"digits": ["digits"], "digits-tune": ["digits-tune", "--init", "{work}/digits/ckpt.pt"],
          "other-shape": [str(ROOT / "benchmarks" / "recipes" / "other-shape.yaml")]}


def run(argv: list[str]) -> subprocess.CompletedProcess:
    print("$ " + " ".join(argv), flush=True)
    return subprocess.run(argv, capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--precisions", default="int8,int8-static")
    args = parser.parse_args()
    work = args.work
    rows, timings = [], {}
    for model, train_args in MODELS.items():
        ckpt = work / model / "ckpt.pt"
        if not ckpt.is_file():
            done = run([EXE, "train", *[a.format(work=work) for a in train_args], "--out", str(ckpt.parent), "-q"])
            if done.returncode != 0:
                sys.exit(done.stderr)
        for precision in args.precisions.split(","):
            out = work / f"export-{model}-{precision}"
            start = time.perf_counter()
            done = run([EXE, "export", str(ckpt), "--target", "all", "--precision", precision, "--out", str(out)])
            timings[f"{model} {precision}"] = round(time.perf_counter() - start, 1)
            if not (out / "manifest.json").is_file():  # a failed verification still writes the export
                sys.exit(done.stderr)
            manifest = json.loads((out / "manifest.json").read_text())
            verification = manifest["verification"]
            failed = {(c["artifact"], c["runtime"]) for c in verification["failed"]}
            heldout = manifest["model"]["heldout_metrics"]
            for entry in (e for e in manifest["artifacts"] if e["part"] == "device"):
                for runtime, numbers in verification["metrics"][entry["path"]].items():
                    # The delegate structure belongs to the runtimes that delegate (not the reference kernels).
                    structure = verification["structure"].get(entry["path"], {}).get("delegation") if "XNNPACK" in runtime else None
                    rows.append({
                        "model": model, "fp32_heldout": heldout, "precision": precision, "target": entry["target"],
                        "scheme": entry["quantization"]["scheme"], "runtime": runtime,
                        "sqnr_db": numbers["wire"]["sqnr_db"],
                        "min_top1_agreement": min(t["top1_agreement"] for t in numbers["tasks"].values()),
                        "partitions": None if structure is None else structure["partitions"],
                        "ops_outside_delegate": None if structure is None else sum(structure["ops_outside_delegate"].values()),
                        "passed": not any(a == entry["path"] and r in (runtime, "-") for a, r in failed),
                    })
    print()
    print("| model (fp32 digit acc.) | precision | runtime | scheme | wire SQNR dB | min top-1 agreement | XNNPACK partitions | all checks |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        parts = "—" if r["partitions"] is None else f"{r['partitions']}" + (f" (+{r['ops_outside_delegate']} outside)" if r["ops_outside_delegate"] else "")
        print(f"| {r['model']} ({r['fp32_heldout'].get('digit', 0):.1%}) | {r['precision']} | {r['runtime']} | {r['scheme']} | "
              f"{r['sqnr_db']:.1f} | {r['min_top1_agreement']:.2%} | {parts} | {'pass' if r['passed'] else '**FAIL**'} |")
    print()
    for key, seconds in timings.items():
        print(f"export --target all, {key}: {seconds} s (verification included)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "export_seconds": timings}, indent=2) + "\n")


if __name__ == "__main__":
    main()
