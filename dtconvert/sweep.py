"""``dtconvert sweep``: where to split and how hard to compress, measured side by side.

For one recipe, each split configuration (where the token sequence is pooled, the bottleneck
width) is trained on a short schedule and exported to ExecuTorch through the same pipeline as
``dtconvert export``: int8 (pt2e, XNNPACK), and fp32 where the fp32 wire is asked. Each
(configuration, wire) row then gets

* held-out accuracy per task of the fp32 model (PyTorch, unsplit) and end to end through
  ExecuTorch (int8 wire: int8 ``.pte`` → int8 wire with the manifest's scale and zero point →
  TorchScript decoder, as ``dtconvert verify`` measures it; fp32 wire: fp32 ``.pte`` → float wire
  → the checkpoint's decoder in PyTorch);
* wire bytes per image, device parameters and FLOPs (multiply-adds × 2 of convolutions and
  matrix products, counted by ``torch.utils.flop_counter.FlopCounterMode`` at batch 1);
* ExecuTorch XNNPACK latency at each batch size, all rows timed round-robin in one session so
  that they share the machine's noise (batch 1: the exported ``.pte``; larger batches: re-lowered
  from the configuration's checkpoint with the export's quantization, see ``dtconvert.bench``).

It writes ``sweep.json``, ``sweep.csv``, ``sweep.md`` and ``sweep.png`` (accuracy against bytes
per image, marker area ∝ latency) plus every configuration's checkpoint and export under
``configs/``, into a temporary directory renamed onto ``--out`` at the end.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from dtconvert.errors import UserError

SWEEP_FORMAT = "dtconvert-sweep"
SWEEP_VERSION = 1
WIRES = ("int8", "fp32")
FLOPS_COUNTED = (
    "multiply-adds × 2 of convolution, linear and matrix-product ops (torch.utils.flop_counter.FlopCounterMode) "
    "for one image; softmax, LayerNorm, additions and pooling are not counted"
)


@dataclass(frozen=True)
class SplitConfig:
    pool_at: tuple[int, ...]
    bottleneck: int

    @property
    def pool_text(self) -> str:
        return "+".join(str(i) for i in self.pool_at) if self.pool_at else "none"

    @property
    def id(self) -> str:
        return f"pool-{self.pool_text}_b{self.bottleneck}"


# ---- parsing -------------------------------------------------------------------------------


def parse_pool_at(text: str) -> list[tuple[int, ...]]:
    """``"none,1,1+2"`` → ``[(), (1,), (1, 2)]``: configurations separated by commas, each ``none``
    or the recipe's ``pool_at`` layers (0-based device layers whose input is halved) joined by ``+``."""
    configs = []
    for item in text.split(","):
        item = item.strip()
        if item == "none":
            layers: tuple[int, ...] = ()
        else:
            parts = item.split("+")
            if not item or not all(p.strip().isdigit() for p in parts):
                raise UserError(
                    f"--pool-at {text!r}: each configuration is 'none' or layer numbers joined by '+', e.g. --pool-at none,1,1+2"
                )
            layers = tuple(sorted(int(p) for p in parts))
        if layers not in configs:
            configs.append(layers)
    return configs


def parse_bottleneck(text: str) -> list[int]:
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit():
            raise UserError(f"--bottleneck {text!r}: expected comma-separated widths ≥ 0 (0: no bottleneck), e.g. --bottleneck 4,8,16")
        if int(item) not in values:
            values.append(int(item))
    return values


def parse_wire(text: str) -> list[str]:
    values = []
    for item in text.split(","):
        item = item.strip()
        if item not in WIRES:
            raise UserError(f"--wire {text!r}: expected a comma-separated list of {', '.join(WIRES)}")
        if item not in values:
            values.append(item)
    return values


def default_pool_at(pool_at: list[int]) -> list[tuple[int, ...]]:
    """No pooling, then every prefix of the recipe's own pooling layers: one stage at a time."""
    layers = sorted(pool_at)
    return [(), *(tuple(layers[: k + 1]) for k in range(len(layers)))]


# ---- measuring one configuration -----------------------------------------------------------


def device_flops(encoder, cfg) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size))
    return int(counter.get_total_flops())


def _accuracy(logits: dict, labels: np.ndarray, tasks: list[str]) -> dict[str, float]:
    # Rounded as dtconvert verify rounds, so the int8 rows (verify's numbers) and fp32 rows compare exactly.
    return {t: round(float((np.asarray(logits[t]).argmax(-1) == labels[:, i]).mean()), 6) for i, t in enumerate(tasks)}


def _fp32_wire_accuracy(model, pte: Path, images: np.ndarray, labels: np.ndarray, tasks: list[str]) -> dict[str, float]:
    """fp32 ``.pte`` on each held-out image (batch 1, as exported) → float wire → PyTorch decoder."""
    import torch

    from dtconvert.bench import build_call

    wires = [
        build_call({"kind": "executorch", "path": str(pte), "batch": 1, "loop": False, "extra": {}}, 1, images[i : i + 1])()
        for i in range(len(images))
    ]
    with torch.no_grad():
        logits = model.decode(torch.from_numpy(np.concatenate(wires)))
    return _accuracy({t: v.numpy() for t, v in logits.items()}, labels, tasks)


def _silent_console():
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=False)


# ---- the sweep -------------------------------------------------------------------------------


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
) -> dict:
    """Train, export and measure every configuration; write the results into ``out``; return the report."""
    from dtconvert.quantize import MIN_CALIBRATION_IMAGES
    from dtconvert.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    pool_ats = pool_ats if pool_ats is not None else default_pool_at(recipe.pool_at)
    bottlenecks = bottlenecks if bottlenecks is not None else [recipe.bottleneck]
    epochs = epochs if epochs is not None else max(1, recipe.epochs // 3)
    configs = [SplitConfig(p, b) for p in pool_ats for b in bottlenecks]
    for c in configs:  # every configuration must build before anything trains
        problems = dataclasses.replace(recipe, pool_at=list(c.pool_at), bottleneck=c.bottleneck).model_config().validate()
        if problems:
            raise UserError(f"--pool-at {c.pool_text} --bottleneck {c.bottleneck}: not a valid {recipe.name} model: {'; '.join(problems)}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a directory")
    if calib is not None and not calib.isdigit() and not Path(calib).is_dir():
        raise UserError(f"--calib {calib}: neither an image count nor a folder")
    if calib is not None and calib.isdigit() and int(calib) < MIN_CALIBRATION_IMAGES:
        raise UserError(f"--calib {calib}: at least {MIN_CALIBRATION_IMAGES} calibration images are needed")

    from dtconvert.bench import machine_info

    machine = machine_info()  # load average before the run; the one after is added at the end
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        rows, checkpoints = _train_and_export(recipe, configs, wires, epochs, calib, staging, log)
        _time_rows(rows, checkpoints, batches, runs, warmup, threads, staging, log)
        cfg = recipe.model_config()
        report = {
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
            "settings": {
                "epochs": epochs,
                "calibration_images": calib or "128 (export's default)",
                "batches": batches,
                "runs": runs,
                "warmup": warmup,
                "threads": threads,
                "pool_at": [SplitConfig(p, 0).pool_text for p in pool_ats],
                "bottleneck": bottlenecks,
                "wire": wires,
                "order": "all rows round-robin at each batch size, the first row rotating each round",
                "flops": FLOPS_COUNTED,
            },
            "machine": {**machine, "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()]},
            "rows": rows,
            "funnel": funnel(rows, batches),
        }
        problems = validate_sweep(report, staging)
        if problems:
            raise RuntimeError(f"the sweep's own report does not check out: {problems[0]}")
        write_outputs(report, staging)
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _replace_dir(staging: Path, out: Path) -> None:
    from dtconvert.export import _replace_dir as replace

    replace(staging, out)


def _train_and_export(
    recipe, configs: list[SplitConfig], wires: list[str], epochs: int, calib: str | None, staging: Path, log
) -> tuple[list[dict], dict]:
    import torch

    from dtconvert.checkpoint import build_model, load_checkpoint
    from dtconvert.export import run_export
    from dtconvert.quantize import checkpoint_images
    from dtconvert.train import train

    rows, checkpoints = [], {}
    for n, c in enumerate(configs, 1):
        r = dataclasses.replace(recipe, pool_at=list(c.pool_at), bottleneck=c.bottleneck, epochs=epochs)
        folder = staging / "configs" / c.id
        log(f"[{n}/{len(configs)}] pool_at {c.pool_text}, bottleneck {c.bottleneck}: training {epochs} epoch(s)")
        start = time.perf_counter()
        train(r, folder, console=_silent_console(), show_progress=False)
        train_seconds = time.perf_counter() - start
        ckpt_path = folder / "ckpt.pt"
        ckpt = load_checkpoint(ckpt_path)
        checkpoints[c.id] = ckpt
        model = build_model(ckpt, ckpt_path)
        cfg = model.cfg
        tasks = cfg.task_names
        images, labels = checkpoint_images(ckpt, "heldout")
        with torch.no_grad():
            fp32_logits = {t: v.numpy() for t, v in model(torch.from_numpy(images)).items()}
        fp32_accuracy = _accuracy(fp32_logits, labels, tasks)
        params = sum(p.numel() for p in model.encoder.parameters())
        flops = device_flops(model.encoder, cfg)
        tokens, width = cfg.wire_shape
        for wire in wires:
            log(
                f"[{n}/{len(configs)}] pool_at {c.pool_text}, bottleneck {c.bottleneck}: ExecuTorch {wire} export"
                + (" and verification" if wire == "int8" else " and held-out evaluation")
            )
            export_dir, manifest = run_export(
                ckpt_path,
                ["executorch"],
                precision=wire,
                calib=calib,
                out=folder / f"export-{wire}",
                console=_silent_console(),
                verify=wire == "int8",
            )
            pte = next(a for a in manifest["artifacts"] if a["target"] == "executorch")
            if wire == "int8":
                per_task = manifest["verification"]["metrics"][pte["path"]]["ExecuTorch XNNPACK"]["tasks"]
                device_accuracy = {t: float(per_task[t]["accuracy"]) for t in tasks}
                verified = bool(manifest["verification"]["passed"])
                path = "ExecuTorch int8 .pte → int8 wire (manifest scale, zero point) → TorchScript decoder"
            else:
                device_accuracy = _fp32_wire_accuracy(model, export_dir / pte["path"], images, labels, tasks)
                verified = None
                path = "ExecuTorch fp32 .pte → fp32 wire → PyTorch decoder"
            rows.append(
                {
                    "config": c.id,
                    "pool_at": list(c.pool_at),
                    "pool_stages": len(c.pool_at),
                    "bottleneck": c.bottleneck,
                    "wire": wire,
                    "wire_shape": [tokens, width],
                    "wire_bytes_per_image": tokens * width * (1 if wire == "int8" else 4),
                    "device_params": int(params),
                    "device_flops": flops,
                    "device_precision": wire,
                    "pte": str((export_dir / pte["path"]).relative_to(staging)),
                    "pte_bytes": int(pte["bytes"]),
                    "heldout_images": len(images),
                    "fp32_accuracy": fp32_accuracy,
                    "device_accuracy": device_accuracy,
                    "accuracy_change_points": {t: round(100.0 * (device_accuracy[t] - fp32_accuracy[t]), 4) for t in tasks},
                    "device_path": path,
                    "verified": verified,
                    "train_seconds": round(train_seconds, 2),
                    "latency": {},
                }
            )
            log(
                f"[{n}/{len(configs)}]   {wire} wire {tokens}×{width} = {rows[-1]['wire_bytes_per_image']:,} B/image: "
                + ", ".join(f"{t} fp32 {fp32_accuracy[t]:.2%} → ExecuTorch {device_accuracy[t]:.2%}" for t in tasks)
            )
    return rows, checkpoints


def _time_rows(rows: list[dict], checkpoints: dict, batches: list[int], runs: int, warmup: int, threads: int, staging: Path, log) -> None:
    """ExecuTorch latency of every row at every batch, interleaved across rows."""
    import gc

    import torch

    from dtconvert.bench import (
        build_call,
        calibration_for,
        lower_executorch,
        reset_executorch_threads,
        summarize,
        time_interleaved,
    )
    from dtconvert.manifest import load_manifest

    work = Path(tempfile.mkdtemp(prefix="dtconvert-sweep-"))
    try:
        programs: dict[tuple[int, int], tuple[str, str]] = {}  # (row, batch) → (.pte path, how)
        calibration_cache: dict[str, np.ndarray] = {}
        quantized: dict = {}  # row → its int8 program at any batch, calibrated once for every batch size
        for i, row in enumerate(rows):
            for b in batches:
                if b == 1:
                    programs[(i, b)] = (str(staging / row["pte"]), "exported .pte at batch 1")
                    continue
                log(f"lowering {row['config']} ({row['wire']}) at batch {b}")
                ckpt = checkpoints[row["config"]]
                export_dir = staging / Path(row["pte"]).parent
                if row["config"] not in calibration_cache:
                    calibration_cache[row["config"]] = calibration_for(ckpt, load_manifest(export_dir))
                path = work / f"{i}_b{b}.pte"
                quantized[(i, "q")] = lower_executorch(
                    ckpt, row["wire"], b, calibration_cache[row["config"]], path, quantized=quantized.get((i, "q"))
                )
                programs[(i, b)] = (str(path), f"re-lowered at batch {b} from the configuration's checkpoint")
        torch.set_num_threads(threads)
        gc.collect()
        reset_executorch_threads(threads)
        for b in batches:
            log(f"timing batch {b}: {len(rows)} ExecuTorch programs × {runs} runs, interleaved, {threads} thread(s)")
            image_shape = checkpoints[rows[0]["config"]]["preprocessing"]
            size, channels = image_shape["size"], image_shape["channels"]
            inputs = np.random.default_rng(0).standard_normal((b, channels, *size)).astype(np.float32)
            calls = {
                str(i): build_call(
                    {"kind": "executorch", "path": programs[(i, b)][0], "batch": b, "loop": False, "extra": {}}, threads, inputs
                )
                for i in range(len(rows))
            }
            seconds = time_interleaved(calls, warmup, runs)
            calls.clear()
            gc.collect()
            for i, row in enumerate(rows):
                stats = summarize(seconds[str(i)])
                row["latency"][str(b)] = {**stats, "images_per_s": b * 1000.0 / stats["median_ms"], "how": programs[(i, b)][1]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


# ---- checking and writing ----------------------------------------------------------------------


def schema() -> dict:
    from importlib.resources import files

    return json.loads(files("dtconvert").joinpath("sweep.schema.json").read_text(encoding="utf-8"))


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def validate_sweep(report: dict, root: Path | None = None) -> list[str]:
    """Every problem with a sweep report: schema, then each row's numbers against the recipe, each
    other and (given the output directory ``root``) the ``.pte`` files. Empty when sound."""
    from dtconvert.manifest import schema_problem

    problem = schema_problem(report, schema())
    if problem is not None:
        return [f"schema: {problem}"]
    problems = []
    recipe = report["recipe"]
    for row in report["rows"]:
        name = f"{row['config']} ({row['wire']})"
        tokens, width = row["wire_shape"]
        if tokens != recipe["num_patches"] // 2 ** row["pool_stages"] or row["pool_stages"] != len(row["pool_at"]):
            problems.append(f"{name}: wire tokens {tokens} is not {recipe['num_patches']} halved {row['pool_stages']} times")
        if width != (row["bottleneck"] or recipe["device_dim"]):
            problems.append(f"{name}: wire width {width} does not match bottleneck {row['bottleneck']}")
        if row["wire_bytes_per_image"] != tokens * width * (1 if row["wire"] == "int8" else 4):
            problems.append(
                f"{name}: wire_bytes_per_image {row['wire_bytes_per_image']} is not {tokens} × {width} × "
                f"{1 if row['wire'] == 'int8' else 4} bytes"
            )
        for task, change in row["accuracy_change_points"].items():
            want = 100.0 * (row["device_accuracy"][task] - row["fp32_accuracy"][task])
            if abs(change - want) > 1e-3:
                problems.append(f"{name}: accuracy_change_points[{task}] {change} is not 100 × (device − fp32) = {want}")
        for batch in report["settings"]["batches"]:
            lat = row["latency"].get(str(batch))
            if lat is None:
                problems.append(f"{name}: no latency at batch {batch}")
                continue
            if not 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"]:
                problems.append(f"{name}: batch {batch}: expected 0 < min ≤ median ≤ p90")
            if not _close(lat["images_per_s"], batch * 1000.0 / lat["median_ms"]):
                problems.append(f"{name}: batch {batch}: images_per_s {lat['images_per_s']} is not batch / median")
        if root is not None:
            pte = Path(root) / row["pte"]
            size = pte.stat().st_size if pte.is_file() else None
            if size != row["pte_bytes"]:
                problems.append(f"{name}: pte_bytes {row['pte_bytes']} but {pte} has {size}")
    by_id = {(r["config"], r["wire"]): r for r in report["rows"]}
    for step in report["funnel"]:
        a, b = by_id.get((step["from"], step["wire"])), by_id.get((step["to"], step["wire"]))
        if a is None or b is None:
            problems.append(f"funnel {step['from']} → {step['to']}: no such rows")
            continue
        want = b["latency"][str(step["batch"])]["images_per_s"] / a["latency"][str(step["batch"])]["images_per_s"]
        if not _close(step["throughput_gain"], want):
            problems.append(
                f"funnel {step['from']} → {step['to']} batch {step['batch']}: throughput_gain {step['throughput_gain']} "
                f"is not the ratio of the rows' throughputs ({want:.6g})"
            )
    return problems


def _fmt_acc(row: dict, key: str) -> str:
    return " / ".join(f"{v:.2%}" for v in row[key].values())


def markdown_table(report: dict) -> str:
    tasks = report["recipe"]["tasks"]
    batches = report["settings"]["batches"]
    head = (
        [
            "pool_at",
            "bottleneck",
            "wire",
            "wire shape",
            "B/image",
            "device params",
            "device MFLOPs",
            f"fp32 acc ({' / '.join(tasks)})",
            f"ExecuTorch acc ({' / '.join(tasks)})",
            "Δ points",
        ]
        + [f"ET ms b{b} (p90)" for b in batches]
        + [f"img/s b{b}" for b in batches if b > 1]
        + ["verify"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = [
            "+".join(map(str, row["pool_at"])) or "none",
            str(row["bottleneck"]),
            row["wire"],
            f"{row['wire_shape'][0]}×{row['wire_shape'][1]}",
            f"{row['wire_bytes_per_image']:,}",
            f"{row['device_params']:,}",
            f"{row['device_flops'] / 1e6:.2f}",
            _fmt_acc(row, "fp32_accuracy"),
            _fmt_acc(row, "device_accuracy"),
            " / ".join(f"{v:+.2f}" for v in row["accuracy_change_points"].values()),
        ]
        cells += [f"{row['latency'][str(b)]['median_ms']:.3f} ({row['latency'][str(b)]['p90_ms']:.3f})" for b in batches]
        cells += [f"{row['latency'][str(b)]['images_per_s']:,.0f}" for b in batches if b > 1]
        cells.append({True: "pass", False: "FAIL", None: "—"}[row["verified"]])
        lines.append("| " + " | ".join(cells) + " |")
    if report["funnel"]:
        lines += [
            "",
            "Funnel: each added 2× pooling stage, same bottleneck and wire (ExecuTorch XNNPACK throughput).",
            "",
            "| from → to | wire | batch | throughput gain | Δ ExecuTorch acc (points) | wire B/image |",
            "|---|---|---|---|---|---|",
        ]
        for s in report["funnel"]:
            change = " / ".join(f"{v:+.2f}" for v in s["device_accuracy_change_points"].values())
            lines.append(
                f"| {s['from']} → {s['to']} | {s['wire']} | {s['batch']} | {s['throughput_gain']:.2f}× | {change} | "
                f"{s['wire_bytes'][0]:,} → {s['wire_bytes'][1]:,} |"
            )
    return "\n".join(lines) + "\n"


def write_csv(report: dict, path: Path) -> None:
    tasks = report["recipe"]["tasks"]
    batches = report["settings"]["batches"]
    fields = (
        [
            "config",
            "pool_at",
            "pool_stages",
            "bottleneck",
            "wire",
            "wire_tokens",
            "wire_width",
            "wire_bytes_per_image",
            "device_params",
            "device_flops",
            "pte_bytes",
        ]
        + [f"fp32_accuracy_{t}" for t in tasks]
        + [f"device_accuracy_{t}" for t in tasks]
        + [f"accuracy_change_points_{t}" for t in tasks]
        + [f"{k}_b{b}" for b in batches for k in ("median_ms", "p90_ms", "images_per_s")]
        + ["verified", "train_seconds"]
    )
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in report["rows"]:
            record = {
                "config": row["config"],
                "pool_at": "+".join(map(str, row["pool_at"])) or "none",
                "pool_stages": row["pool_stages"],
                "bottleneck": row["bottleneck"],
                "wire": row["wire"],
                "wire_tokens": row["wire_shape"][0],
                "wire_width": row["wire_shape"][1],
                "wire_bytes_per_image": row["wire_bytes_per_image"],
                "device_params": row["device_params"],
                "device_flops": row["device_flops"],
                "pte_bytes": row["pte_bytes"],
                "verified": "" if row["verified"] is None else row["verified"],
                "train_seconds": row["train_seconds"],
            }
            for t in tasks:
                record[f"fp32_accuracy_{t}"] = row["fp32_accuracy"][t]
                record[f"device_accuracy_{t}"] = row["device_accuracy"][t]
                record[f"accuracy_change_points_{t}"] = round(row["accuracy_change_points"][t], 4)
            for b in batches:
                lat = row["latency"][str(b)]
                record.update(
                    {
                        f"median_ms_b{b}": round(lat["median_ms"], 5),
                        f"p90_ms_b{b}": round(lat["p90_ms"], 5),
                        f"images_per_s_b{b}": round(lat["images_per_s"], 2),
                    }
                )
            writer.writerow(record)


def plot_sweep(report: dict, path: Path) -> None:
    """Left: accuracy of the first task through ExecuTorch against wire bytes per image, marker area ∝
    batch-1 latency. Right: ExecuTorch throughput against pooling stages at each batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows, batches = report["rows"], report["settings"]["batches"]
    task = report["recipe"]["tasks"][0]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 6.2), gridspec_kw={"width_ratios": [1.35, 1]})
    colors = plt.get_cmap("viridis")
    max_stages = max(r["pool_stages"] for r in rows) or 1
    latencies = [r["latency"][str(batches[0])]["median_ms"] for r in rows]
    scale = 600.0 / max(latencies)
    points = []
    for row, latency in zip(rows, latencies, strict=True):
        x, y = row["wire_bytes_per_image"], 100 * row["device_accuracy"][task]
        ax.scatter(
            x,
            y,
            s=40 + latency * scale,
            color=colors(row["pool_stages"] / max_stages * 0.9),
            marker="o" if row["wire"] == "int8" else "s",
            alpha=0.7,
            edgecolors="black",
            linewidths=0.6,
        )
        points.append((x, y, f"{'+'.join(map(str, row['pool_at'])) or 'none'} b{row['bottleneck']} {row['wire']} {latency:.2f} ms"))
    source = report["recipe"].get("source_image_bytes")
    if source:
        ax.axvline(source, color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            f"raw {source} B image",
            (source, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3, -3),
            textcoords="offset points",
            rotation=90,
            ha="right",
            va="top",
            fontsize=7,
            color="grey",
        )
    ax.set_xscale("log")
    xs = [x for x, _, _ in points]
    ax.set_xlim(min(xs) / 1.4, max(xs) * 3.5)  # room for the labels of the widest wire
    ax.set_xlabel("wire bytes per image (log)")
    ax.set_ylabel(f"held-out {task} accuracy through ExecuTorch, %")
    ax.set_title(f"accuracy vs bytes · marker area ∝ ExecuTorch latency at batch {batches[0]} (labels: ms)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    handles = [
        Line2D([], [], marker="o", linestyle="", color="grey", label="int8 wire (int8 .pte)"),
        Line2D([], [], marker="s", linestyle="", color="grey", label="fp32 wire (fp32 .pte)"),
    ]
    handles += [
        Line2D([], [], marker="o", linestyle="", color=colors(k / max_stages * 0.9), label=f"{k} pooling stage{'s' if k != 1 else ''}")
        for k in sorted({r["pool_stages"] for r in rows})
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    for bottleneck, wire in sorted({(r["bottleneck"], r["wire"]) for r in rows}):
        # Four line styles: batch sizes past the fourth get no line (the table and CSV still have them).
        for b, style in zip(batches, ("-", "--", ":", "-."), strict=False):
            series = sorted(
                (r["pool_stages"], r["latency"][str(b)]["images_per_s"]) for r in rows if (r["bottleneck"], r["wire"]) == (bottleneck, wire)
            )
            ax2.plot(
                [s for s, _ in series],
                [v for _, v in series],
                style,
                marker="o" if wire == "int8" else "s",
                label=f"b{bottleneck} {wire}, batch {b}",
            )
    ax2.set_xlabel("pooling stages (each halves the tokens)")
    ax2.set_ylabel("ExecuTorch XNNPACK images/s (median)")
    ax2.set_yscale("log")
    ax2.set_xticks(sorted({r["pool_stages"] for r in rows}))
    ax2.set_title(f"funnel: throughput per pooling stage ({report['settings']['threads']} thread)", fontsize=10)
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    machine, epochs = report["machine"], report["settings"]["epochs"]
    fig.suptitle(
        f"dtconvert sweep {report['recipe']['name']}: {epochs} epoch{'s' if epochs != 1 else ''} per configuration · "
        f"{machine['usable_cpus']} CPUs, {machine['cpu_model']}",
        fontsize=10,
    )
    fig.tight_layout()
    _place_labels(fig, ax, points)  # last: the label search needs the final scales and layout
    fig.savefig(path, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def _place_labels(fig, ax, points: list[tuple[float, float, str]]) -> None:
    """Label each point beside it, trying a few offsets until the label overlaps no earlier one
    (points of equal bytes and similar accuracy are common in a sweep)."""
    from matplotlib.transforms import Bbox

    offsets = [
        (9, 3, "left"),
        (-9, 3, "right"),
        (9, -11, "left"),
        (-9, -11, "right"),
        (9, 13, "left"),
        (-9, 13, "right"),
        (9, -21, "left"),
        (-9, -21, "right"),
    ]
    fig.canvas.draw()
    taken: list[Bbox] = []
    for x, y, text in points:
        for dx, dy, ha in offsets:
            label = ax.annotate(text, (x, y), fontsize=6.5, xytext=(dx, dy), textcoords="offset points", ha=ha)
            box = label.get_window_extent(fig.canvas.get_renderer())
            if not any(box.overlaps(other) for other in taken):
                break
            label.remove()
        else:
            label = ax.annotate(text, (x, y), fontsize=6.5, xytext=offsets[0][:2], textcoords="offset points")
            box = label.get_window_extent(fig.canvas.get_renderer())
        taken.append(box)


def write_outputs(report: dict, folder: Path) -> None:
    (folder / "sweep.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_csv(report, folder / "sweep.csv")
    (folder / "sweep.md").write_text(
        f"# dtconvert sweep {report['recipe']['name']}\n\n"
        + (f"`{report['command']}`\n\n" if report.get("command") else "")
        + markdown_table(report),
        encoding="utf-8",
    )
    plot_sweep(report, folder / "sweep.png")
