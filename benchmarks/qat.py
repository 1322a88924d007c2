"""Benchmark: does quantization-aware device tuning make int8-static faithful? (issue 23)

    python benchmarks/qat.py --work /tmp/dtqat [--json out.json]

For three models, digits and digits-tune as shipped and benchmarks/recipes/other-shape.yaml (three
tasks, 24×24 input, width 48, pooling before layers 0 and 2, a shape no bundled recipe uses):

  before   the checkpoint exported ``--precision int8-static`` as today (post-training calibration)
  QAT      ``train --init CKPT --tune qat`` (the recipe's QAT schedule), exported the same way: ExecuTorch
           and Core ML with the learned ranges, LiteRT calibrated by its converter on the QAT weights
  recal.   the QAT checkpoint with its learned ranges removed, calibrated from scratch (the twin)

Each export runs every target and is verified as ``dtconvert export`` does (1,797 images; the
QAT rows against the 38 dB floor). Per model and target: wire SQNR against that checkpoint's fp32
model, the lowest top-1 agreement over the tasks, accuracy per task; QAT's cost as a fraction of
the parent's own training time (both measured in this run, same machine); whether the QAT
checkpoint's cloud digest equals its parent's and one shared cloud loads both exports.
Then a sweep of the consistency weight on digits (fake-quantized wire SQNR, fp32 accuracy, cost).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dtconvert.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from dtconvert.export import run_export  # noqa: E402
from dtconvert.recipe import load_recipe  # noqa: E402
from dtconvert.train import train  # noqa: E402

MODELS = {
    "digits": (REPO / "recipes" / "digits.yaml", None),
    "digits-tune": (REPO / "recipes" / "digits-tune.yaml", "digits"),
    "other-shape": (REPO / "benchmarks" / "recipes" / "other-shape.yaml", None),
}
SWEEP = (0.0, 100.0, 1000.0, 3000.0)


def _quiet_console():
    from rich.console import Console

    return Console(file=open("/dev/null", "w"), stderr=False)


def trained(work: Path, name: str) -> Path:
    recipe_path, parent = MODELS[name]
    out = work / name
    if not (out / "ckpt.pt").is_file():
        init = None if parent is None else trained(work, parent)
        train(load_recipe(recipe_path), out, init=init, console=_quiet_console(), show_progress=False)
    return out / "ckpt.pt"


def qat(work: Path, name: str, parent: Path, consistency: float | None = None, tag: str = "qat") -> Path:
    recipe = load_recipe(MODELS[name][0])
    if consistency is not None:
        recipe = dataclasses.replace(recipe, qat_consistency=consistency)
    out = work / f"{name}-{tag}"
    if not (out / "ckpt.pt").is_file():
        train(recipe, out, init=parent, tune="qat", console=_quiet_console(), show_progress=False)
    return out / "ckpt.pt"


def without_ranges(ckpt_path: Path) -> Path:
    """The QAT checkpoint as a plain one: same weights, no learned ranges (export calibrates)."""
    out = ckpt_path.parent.parent / f"{ckpt_path.parent.name}-recal" / "ckpt.pt"
    if not out.is_file():
        ckpt = load_checkpoint(ckpt_path)
        ckpt.pop("qat")
        save_checkpoint(out, ckpt)
    return out


def exported(ckpt: Path, out: Path) -> dict:
    if not (out / "manifest.json").is_file():
        run_export(ckpt, ["executorch", "coreml", "tflite"], precision="int8-static", out=out, console=_quiet_console())
    return json.loads((out / "manifest.json").read_text())


def rows(manifest: dict) -> list[dict]:
    """Per device artifact and runtime: wire SQNR, lowest agreement, accuracy per task, gate."""
    verification = manifest["verification"]
    failed = (
        {(c["artifact"], c["runtime"]) for c in verification.get("failed", [])} if isinstance(verification.get("failed"), list) else set()
    )
    out = []
    for artifact, runtimes in verification["metrics"].items():
        for runtime, numbers in runtimes.items():
            if "wire" not in numbers:
                continue
            tasks = numbers["tasks"]
            out.append(
                {
                    "artifact": artifact,
                    "runtime": runtime,
                    "wire_sqnr_db": round(numbers["wire"]["sqnr_db"], 2),
                    "min_agreement": min(t["top1_agreement"] for t in tasks.values()),
                    "accuracy": {k: t["accuracy"] for k, t in tasks.items()},
                    "fp32_accuracy": {k: t["fp32_accuracy"] for k, t in tasks.items()},
                    "passed": (artifact, runtime) not in failed,
                }
            )
    return out


def gate_passed(manifest: dict) -> bool:
    return bool(manifest["verification"]["passed"])


def measure(work: Path) -> dict:
    from dtconvert.cloud import SharedCloud

    result: dict = {"models": {}, "sweep": []}
    for name in MODELS:
        parent = trained(work, name)
        child = qat(work, name, parent)
        parent_ckpt, child_ckpt = load_checkpoint(parent), load_checkpoint(child)
        before = exported(parent, work / f"export-{name}")
        after = exported(child, work / f"export-{name}-qat")
        recal = exported(without_ranges(child), work / f"export-{name}-recal")
        shared = SharedCloud([work / f"export-{name}", work / f"export-{name}-qat"])
        result["models"][name] = {
            "parent_train_seconds": parent_ckpt["metrics"]["train_seconds"],
            "qat_train_seconds": child_ckpt["qat"]["train_seconds"],
            "qat_cost": child_ckpt["qat"]["cost_vs_parent"],
            "qat_epochs": child_ckpt["qat"]["epochs"],
            "fp32_heldout": {"parent": parent_ckpt["metrics"]["heldout"], "qat": child_ckpt["qat"]["heldout"]["fp32"]},
            "cloud_digest_equal": before["model"]["cloud"]["trunk_sha256"] == after["model"]["cloud"]["trunk_sha256"],
            "one_shared_cloud": len(shared.variants) == 2,
            "before": {"passed": gate_passed(before), "rows": rows(before)},
            "qat": {"passed": gate_passed(after), "rows": rows(after)},
            "recalibrated": {"passed": gate_passed(recal), "rows": rows(recal)},
        }
        print(json.dumps({name: result["models"][name]}, indent=1), flush=True)
    parent = trained(work, "digits")
    for consistency in SWEEP:
        child = load_checkpoint(qat(work, "digits", parent, consistency, tag=f"sweep{int(consistency)}"))
        result["sweep"].append(
            {
                "consistency": consistency,
                "wire_sqnr_db_simulated": child["qat"]["heldout"]["wire_sqnr_db"],
                "fp32_heldout": child["qat"]["heldout"]["fp32"],
                "cost": child["qat"]["cost_vs_parent"],
            }
        )
        print(json.dumps(result["sweep"][-1]), flush=True)
    return result


def _gate(row: dict) -> str:
    return "pass" if row["passed"] else "FAIL"


def table(result: dict) -> str:
    lines = [
        "| model | runtime | wire SQNR before → QAT (recal.) dB | agreement (lowest) before → QAT | accuracy, QAT | gate |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        for b, q, r in zip(m["before"]["rows"], m["qat"]["rows"], m["recalibrated"]["rows"], strict=True):
            accuracy = ", ".join(f"{k} {v:.1%}" for k, v in q["accuracy"].items())
            lines.append(
                f"| {name} | {q['runtime']} | {b['wire_sqnr_db']} → {q['wire_sqnr_db']} ({r['wire_sqnr_db']}) | "
                f"{b['min_agreement']:.2%} → {q['min_agreement']:.2%} | {accuracy} | {_gate(b)} / {_gate(q)} |"
            )
    lines += [
        "",
        "| model | fp32 held-out parent → QAT | QAT cost (QAT s / parent s) | cloud digest equal | one shared cloud |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        fp32 = ", ".join(f"{k} {m['fp32_heldout']['parent'][k]:.1%} → {v:.1%}" for k, v in m["fp32_heldout"]["qat"].items())
        lines.append(
            f"| {name} | {fp32} | {m['qat_cost']:.0%} ({m['qat_train_seconds']} / {m['parent_train_seconds']}) | "
            f"{m['cloud_digest_equal']} | {m['one_shared_cloud']} |"
        )
    lines += ["", "| consistency | simulated wire SQNR (dB) | fp32 held-out | cost |", "|---|---|---|---|"]
    for s in result["sweep"]:
        lines.append(f"| {s['consistency']:g} | {s['wire_sqnr_db_simulated']} | {s['fp32_heldout']} | {s['cost']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for checkpoints and exports (kept: a rerun resumes).")
    parser.add_argument("--json", type=Path, help="Write the numbers here.")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = measure(args.work)
    result["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
