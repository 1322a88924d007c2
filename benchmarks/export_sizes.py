"""Benchmark: artifact sizes (int8 ÷ fp32), export wall time, and wire bytes, side by side.

    python benchmarks/export_sizes.py [--digits-ckpt runs/digits/ckpt.pt] [--skip-dt2m] [--json out.json]

For `digits` (the trained checkpoint; trained here if not given) and `dt-2m` (random weights,
calibrated on 32 random 224×224 images, since sizes and times do not depend on the weights'
values), runs `dtconvert export --target all --no-verify` at int8, int8-static and fp32 as real subprocesses (and
digits int8 once more with the default verification), then
prints per target: fp32 bytes, int8 bytes and their ratio, against the targets of issue 3
(≤ 0.40 for digits, ≤ 0.30 for dt-2m), the export wall time of each run (target ≤ 60 s for
digits int8 on 2 CPU cores), and the wire tensor against the raw image and the unpooled fp32
token tensor (dt-2m target: ≤ 1/16 of the latter).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).parent / "dtconvert")
RATIO_TARGETS = {"digits": 0.40, "dt-2m": 0.30}


def random_checkpoint(recipe_name: str, path: Path) -> None:
    """A dt-2m checkpoint with random weights: real format, no training data needed."""
    from dtconvert.checkpoint import save_checkpoint
    from dtconvert.model import DeviceTuningModel
    from dtconvert.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / f"{recipe_name}.yaml")
    cfg = recipe.model_config()
    torch.manual_seed(0)
    model = DeviceTuningModel(cfg)
    tasks = [{"name": n, "labels": [f"c{i}" for i in range(c)]} for n, c in cfg.tasks]
    save_checkpoint(path, {
        "model_config": cfg.to_dict(), "state_dict": model.state_dict(), "tasks": tasks,
        "preprocessing": recipe.preprocessing(),
        "data": {"source": {"kind": "imagefolder", "root": "(none: random weights)", "images": 0},
                 "split": {"seed": 0, "heldout_fraction": 0.02, "train": [], "heldout": []}},
        "metrics": {"heldout": {n: 0.0 for n, _ in cfg.tasks}}, "recipe": recipe.to_dict(), "init": None,
    })


def random_images(folder: Path, count: int, size: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def dt2m_inputs(work: Path) -> tuple[Path, Path]:
    """WORK/dt-2m/ckpt.pt (random weights) and WORK/calib224 (32 random 224×224 images), made once."""
    ckpt = work / "dt-2m" / "ckpt.pt"
    if not ckpt.is_file():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        random_checkpoint("dt-2m", ckpt)
    if not (work / "calib224").is_dir():
        random_images(work / "calib224", 32, 224)
    return ckpt, work / "calib224"


def run_logged(argv: list[str]) -> None:
    """Run a command as the user would, echoing it first; stop on failure."""
    print("$ " + " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def export(ckpt: Path, precision: str, out: Path, calib: str | None, verify: bool = False) -> tuple[float, dict]:
    argv = [EXE, "export", str(ckpt), "--target", "all", "--precision", precision, "--out", str(out),
            "--verify" if verify else "--no-verify"]
    if calib:
        argv += ["--calib", calib]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"export failed: {done.stderr}")
    return wall, json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-ckpt", type=Path)
    parser.add_argument("--skip-dt2m", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dtconvert-bench-"))

    models = {}
    digits = args.digits_ckpt
    if digits is None:
        subprocess.run([EXE, "train", "digits", "--out", str(work / "digits"), "-q"], check=True, capture_output=True)
        digits = work / "digits" / "ckpt.pt"
    models["digits"] = (digits, None)
    if not args.skip_dt2m:
        random_checkpoint("dt-2m", work / "dt-2m.pt")
        random_images(work / "calib224", 32, 224)
        models["dt-2m"] = (work / "dt-2m.pt", str(work / "calib224"))

    report = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__}, "models": {}}
    for name, (ckpt, calib) in models.items():
        runs = {p: export(ckpt, p, work / f"{name}-{p}", calib) for p in ("fp32", "int8", "int8-static")}
        verified_seconds = None
        if name == "digits":  # the default `dtconvert export` also verifies; time that too
            verified_seconds, _ = export(ckpt, "int8", work / f"{name}-int8-verified", calib, verify=True)
        sizes = {p: {a["target"]: a["bytes"] for a in m["artifacts"] if a["part"] == "device"} for p, (_, m) in runs.items()}
        comm = runs["int8"][1]["communication"]
        report["models"][name] = {
            "export_seconds": {p: round(w, 1) for p, (w, _) in runs.items()},
            "export_with_verify_seconds": None if verified_seconds is None else round(verified_seconds, 1),
            "bytes": sizes,
            "ratio": {t: round(sizes["int8"][t] / sizes["fp32"][t], 3) for t in sizes["int8"]},
            "ratio_static": {t: round(sizes["int8-static"][t] / sizes["fp32"][t], 3) for t in sizes["int8"]},
            "ratio_target": RATIO_TARGETS[name],
            "communication": comm,
            "wire_over_unpooled_fp32": round(comm["wire_int8_bytes"] / comm["unpooled_fp32_token_bytes"], 4),
        }

    print(f"machine: {report['machine']['cpus']} CPUs, torch {report['machine']['torch']}")
    print(f"{'model':<8} {'target':<11} {'fp32 B':>10} {'int8 B':>10} {'int8/fp32':>10} {'target':>7}      "
          f"{'int8-static B':>13} {'÷ fp32':>7}")
    for name, r in report["models"].items():
        for t, ratio in r["ratio"].items():
            verdict = "ok  " if ratio <= r["ratio_target"] else "MISS"
            print(f"{name:<8} {t:<11} {r['bytes']['fp32'][t]:>10,} {r['bytes']['int8'][t]:>10,} {ratio:>10.3f} "
                  f"{'≤' + str(r['ratio_target']):>7} {verdict} {r['bytes']['int8-static'][t]:>13,} {r['ratio_static'][t]:>7.3f}")
    for name, r in report["models"].items():
        c = r["communication"]
        verified = f" (int8 with verify: {r['export_with_verify_seconds']} s)" if r["export_with_verify_seconds"] else ""
        print(f"{name}: export --target all --no-verify: int8 {r['export_seconds']['int8']} s, "
              f"int8-static {r['export_seconds']['int8-static']} s, fp32 {r['export_seconds']['fp32']} s{verified}; "
              f"wire {c['wire_int8_bytes']:,} B/image vs device input {c['device_input_uint8_bytes']:,} B uint8"
              + (f", source image {c['source_image_uint8_bytes']:,} B" if "source_image_uint8_bytes" in c else "")
              + f", unpooled fp32 tokens {c['unpooled_fp32_token_bytes']:,} B (ratio {r['wire_over_unpooled_fp32']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
