"""``run_sweep`` in its steps: check the grid, train and export each configuration, time every row, move into place.

Everything is written into a temporary directory beside ``--out`` (``sweep.json``, the
renderings the caller asks for, every configuration's checkpoint and export under
``configs/``) and renamed onto ``--out`` only at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from dtconvert.checkpoint import replace_dir
from dtconvert.errors import UserError
from dtconvert.sweep.check import validate_sweep
from dtconvert.sweep.configs import FLOPS_COUNTED, train_and_export
from dtconvert.sweep.parse import SplitConfig, default_pool_at
from dtconvert.sweep.timing import time_rows

SWEEP_FORMAT = "dtconvert-sweep"
SWEEP_VERSION = 1


def run_sweep(
    recipe_path: Path,
    pool_ats: list[tuple[int, ...]] | None,
    bottlenecks: list[int] | None,
    wires: list[str],
    epochs: int | None,
    batches: list[int],
    runs: int,
    out: Path,
    warmup: int = 5,
    threads: int = 1,
    calib: str | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
    render: Callable[[dict, Path], None] | None = None,
) -> dict:
    """Train, export and measure every configuration; write the results into ``out``; return the report.

    ``render(report, folder)`` writes the report's human-readable files (``dtconvert.report.sweep``)
    into the folder before it is moved into place, so that ``out`` appears whole or not at all."""
    from dtconvert.bench import machine_info
    from dtconvert.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    pool_ats = pool_ats if pool_ats is not None else default_pool_at(recipe.pool_at)
    bottlenecks = bottlenecks if bottlenecks is not None else [recipe.bottleneck]
    epochs = epochs if epochs is not None else max(1, recipe.epochs // 3)
    configs = [SplitConfig(p, b) for p in pool_ats for b in bottlenecks]
    _check_grid(recipe, configs, out, calib)

    machine = machine_info()  # load average before the run; the one after is added at the end
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        rows, checkpoints = train_and_export(recipe, configs, wires, epochs, calib, staging, log)
        threads_effective = time_rows(rows, checkpoints, batches, runs, warmup, threads, staging, log)
        settings = {
            "epochs": epochs,
            "calibration_images": calib or "128 (export's default)",
            "batches": batches,
            "runs": runs,
            "warmup": warmup,
            "threads": threads,
            "threads_effective": threads_effective,  # what torch and ExecuTorch's threadpool report back
            "pool_at": [SplitConfig(p, 0).pool_text for p in pool_ats],
            "bottleneck": bottlenecks,
            "wire": wires,
            "order": "all rows round-robin at each batch size, the first row rotating each round",
            "flops": FLOPS_COUNTED,
        }
        report = _report(recipe, recipe_path, settings, machine, rows, command)
        problems = validate_sweep(report, staging)
        if problems:
            raise RuntimeError(f"the sweep's own report does not check out: {problems[0]}")
        (staging / "sweep.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if render is not None:
            render(report, staging)
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _check_grid(recipe, configs: list[SplitConfig], out: Path, calib: str | None) -> None:
    """Every configuration must build, and ``--out`` and ``--calib`` make sense, before anything trains."""
    from dtconvert.data import MIN_CALIBRATION_IMAGES

    for c in configs:
        problems = dataclasses.replace(recipe, pool_at=list(c.pool_at), bottleneck=c.bottleneck).model_config().validate()
        if problems:
            raise UserError(f"--pool-at {c.pool_text} --bottleneck {c.bottleneck}: not a valid {recipe.name} model: {'; '.join(problems)}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a directory")
    if calib is not None and not calib.isdigit() and not Path(calib).is_dir():
        raise UserError(f"--calib {calib}: neither an image count nor a folder")
    if calib is not None and calib.isdigit() and int(calib) < MIN_CALIBRATION_IMAGES:
        raise UserError(f"--calib {calib}: at least {MIN_CALIBRATION_IMAGES} calibration images are needed")


def _report(recipe, recipe_path: Path, settings: dict, machine: dict, rows: list[dict], command: str | None) -> dict:
    cfg = recipe.model_config()
    return {
        "format": SWEEP_FORMAT,
        "format_version": SWEEP_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "recipe": {
            "name": recipe.name,
            "path": str(recipe_path),
            "pool_at": list(recipe.pool_at),
            "bottleneck": recipe.bottleneck,
            "epochs": recipe.epochs,
            "device_dim": cfg.device_dim,
            "device_depth": cfg.device_depth,
            "num_patches": cfg.num_patches,
            "tasks": cfg.task_names,
            "source_image_bytes": 64 if recipe.data == "digits" else None,
            "device_input_bytes": cfg.image_size * cfg.image_size * cfg.in_channels,
        },
        "settings": settings,
        "machine": {**machine, "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()]},
        "rows": rows,
        "funnel": funnel(rows, settings["batches"]),
    }


def funnel(rows: list[dict], batches: list[int]) -> list[dict]:
    """Each added pooling stage: throughput gain and accuracy cost against the same configuration
    with that stage removed (same bottleneck, same wire)."""
    steps = []
    for a in rows:
        for b in rows:
            if (a["bottleneck"], a["wire"]) != (b["bottleneck"], b["wire"]) or b["pool_stages"] != a["pool_stages"] + 1:
                continue
            if not set(a["pool_at"]) < set(b["pool_at"]):
                continue
            for batch in batches:
                gain = b["latency"][str(batch)]["images_per_s"] / a["latency"][str(batch)]["images_per_s"]
                steps.append(
                    {
                        "from": a["config"],
                        "to": b["config"],
                        "wire": a["wire"],
                        "batch": batch,
                        "added_stage_before_layer": min(set(b["pool_at"]) - set(a["pool_at"])),
                        "throughput_gain": gain,
                        "device_accuracy_change_points": {
                            t: 100.0 * (b["device_accuracy"][t] - a["device_accuracy"][t]) for t in a["device_accuracy"]
                        },
                        "wire_bytes": [a["wire_bytes_per_image"], b["wire_bytes_per_image"]],
                    }
                )
    return steps
