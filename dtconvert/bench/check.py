"""Checking a bench report: its JSON schema, its numbers against each other and against the exports on disk."""

from __future__ import annotations

import json
from pathlib import Path


def schema() -> dict:
    from importlib.resources import files

    return json.loads(files("dtconvert").joinpath("bench.schema.json").read_text(encoding="utf-8"))


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def validate_report(report: dict, check_files: bool = True) -> list[str]:
    """Every problem with a bench report: schema, then the numbers against each other and against the
    exports on disk (artifact bytes = manifest = file size; wire bytes = manifest). Empty when sound."""
    from dtconvert.manifest import schema_problem

    problem = schema_problem(report, schema())
    if problem is not None:
        return [f"schema: {problem}"]
    problems = _timing_problems(report["results"])
    manifests: dict[str, dict] = {}
    for export in report["exports"]:
        path = Path(export["path"]) / "manifest.json"
        if check_files:
            if not path.is_file():
                problems.append(f"{path}: missing, cannot check bytes")
                continue
            manifests[export["path"]] = json.loads(path.read_text())
    wire_bytes = report["wire"]["bytes_per_image"]
    if report["wire"]["shape"][1] * report["wire"]["shape"][2] != wire_bytes:
        problems.append(f"wire: bytes_per_image {wire_bytes} is not tokens × width of {report['wire']['shape']}")
    for c in report["coreml"]:
        if c["ops_total"] != sum(c["ops"].values()):
            problems.append(f"{c['artifact']}: ops_total {c['ops_total']} is not the sum of its op counts ({sum(c['ops'].values())})")
    rows = [*(r for r in report["results"] if r["artifact"] is not None), *report["coreml"]]
    for r in rows:
        problems += _artifact_problems(r, wire_bytes, manifests.get(r["export_dir"]))
    return problems


def _timing_problems(results: list[dict]) -> list[str]:
    """Percentiles in order, images/s = batch / median, each ratio = its median / the baseline's."""
    problems = []
    baselines = {(r["batch"], r["threads"]): r for r in results if r["role"] == "baseline"}
    for r in results:
        name = f"{r['runtime']} batch {r['batch']} threads {r['threads']}"
        if not 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]:
            problems.append(f"{name}: expected 0 < min ≤ median ≤ p90, got {r['min_ms']}, {r['median_ms']}, {r['p90_ms']}")
        if not _close(r["images_per_s"], r["batch"] * 1000.0 / r["median_ms"], 1e-6):
            problems.append(f"{name}: images_per_s {r['images_per_s']} is not batch / median")
        base = baselines.get((r["batch"], r["threads"]))
        if base is None:
            problems.append(f"{name}: no eager fp32 baseline at the same batch and threads")
        elif r["role"] != "cloud":
            want = r["median_ms"] / base["median_ms"]
            if r["ratio_to_eager_fp32"] is None or not _close(r["ratio_to_eager_fp32"], want, 1e-6):
                problems.append(
                    f"{name}: ratio_to_eager_fp32 {r['ratio_to_eager_fp32']} is not its median / the baseline's median ({want:.6g})"
                )
    return problems


def _artifact_problems(r: dict, wire_bytes: int, manifest: dict | None) -> list[str]:
    """A row's wire bytes against the report's and the manifest's; its artifact's bytes against the
    manifest entry and the file on disk (``manifest`` None: files not checked)."""
    problems = []
    if r.get("role") != "cloud" and r.get("wire_bytes_per_image") != wire_bytes:
        problems.append(
            f"{r.get('runtime', r['artifact'])}: wire_bytes_per_image {r.get('wire_bytes_per_image')} "
            f"differs from the report's {wire_bytes}"
        )
    if manifest is None:
        return problems
    if r.get("role") != "cloud" and manifest["wire"]["bytes_per_image"] != r["wire_bytes_per_image"]:
        problems.append(
            f"{r['artifact']}: wire_bytes_per_image {r['wire_bytes_per_image']} "
            f"differs from the manifest's {manifest['wire']['bytes_per_image']}"
        )
    entry = next((e for e in manifest["artifacts"] if e["path"] == r["artifact"]), None)
    size_key = "artifact_bytes" if "artifact_bytes" in r else "bytes"
    if entry is None:
        problems.append(f"{r['artifact']}: not in {r['export_dir']}/manifest.json")
        return problems
    on_disk = _size_on_disk(Path(r["export_dir"]) / r["artifact"])
    if r[size_key] != entry["bytes"] or r[size_key] != on_disk:
        problems.append(f"{r['artifact']}: {size_key} {r[size_key]} but the manifest says {entry['bytes']} and the file has {on_disk}")
    return problems


def _size_on_disk(path: Path) -> int | None:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.is_file() else None
