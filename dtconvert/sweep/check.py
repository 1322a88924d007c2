"""Checking a sweep report: its JSON schema, each row against the recipe and itself, the funnel, the files."""

from __future__ import annotations

import json
from pathlib import Path


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
    for row in report["rows"]:
        problems += _row_problems(row, report["recipe"], report["settings"]["batches"], root)
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


def _row_problems(row: dict, recipe: dict, batches: list[int], root: Path | None) -> list[str]:
    """The wire shape against pooling and bottleneck, bytes against the shape, accuracy changes
    against the accuracies, throughput against the median, and the ``.pte`` size against its file."""
    problems = []
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
    for batch in batches:
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
    return problems
