"""``dtconvert export --precision auto``: the default int8, and float only where the gate needs it.

Export the default int8 and verify it. While the gate fails, keep float the point that
``verify --explain`` names first below the floor (on most runtimes) and export again, until the
gate passes or ``max_float`` modules are kept. Every attempt is a complete, verified export; the
last one stays in ``--out``. What each kept module cost is measured on the artifacts themselves:
bytes from the manifests, latency by timing each artifact in its primary runtime, the all-int8
attempt and the last one side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from dtconvert.errors import UserError
from dtconvert.export import run_export

DEFAULT_MAX_FLOAT = 3
TIMED_RUNS = 50


@dataclass
class Attempt:
    keep_float: tuple[str, ...]
    passed: bool
    culprit: str | None
    bytes: dict[str, int]  # artifact target → bytes
    latency_ms: dict[str, float]  # artifact target → median ms per image, primary runtime


@dataclass
class AutoResult:
    export_dir: Path
    manifest: dict
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def kept(self) -> tuple[str, ...]:
        return self.attempts[-1].keep_float


def median_latency_ms(path: Path, target: str, images: np.ndarray) -> float:
    """Median milliseconds per batch-1 call of the artifact in its target's primary runtime."""
    from dtconvert.targets import PRIMARY_RUNTIME, RunnerUnavailable, load_target

    loaded = load_target(target)
    runtime = PRIMARY_RUNTIME[target] if PRIMARY_RUNTIME[target] in loaded.runtimes() else loaded.runtimes()[0]
    try:
        run = loaded.runner(path, runtime)
    except RunnerUnavailable:
        return float("nan")
    x = np.ascontiguousarray(images[:1])
    for _ in range(5):
        run(x)
    times = []
    for i in range(TIMED_RUNS):
        x = np.ascontiguousarray(images[i % len(images) : i % len(images) + 1])
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def _measure(export_dir: Path, manifest: dict) -> tuple[dict[str, int], dict[str, float]]:
    """Bytes and median batch-1 latency of each device artifact, on the export's golden inputs."""
    images = np.load(export_dir / "golden" / "input.npy")
    sizes, latency = {}, {}
    for entry in (e for e in manifest["artifacts"] if e["part"] == "device"):
        sizes[entry["target"]] = int(entry["bytes"])
        latency[entry["target"]] = median_latency_ms(export_dir / entry["path"], entry["target"], images)
    return sizes, latency


def run_auto(
    checkpoint: Path,
    targets: list[str],
    calib: str | None = None,
    out: Path | None = None,
    max_float: int = DEFAULT_MAX_FLOAT,
    console: Console | None = None,
) -> AutoResult:
    """Export at int8, keeping float what the gate needs, at most ``max_float`` modules."""
    if max_float < 0:
        raise UserError(f"--max-float must be 0 or more, got {max_float}")
    from dtconvert.output import progress_console

    console = console or progress_console()
    keep: list[str] = []
    result: AutoResult | None = None
    while True:
        export_dir, manifest = run_export(
            checkpoint, targets, precision="int8", calib=calib, out=out, console=console, keep_float=tuple(keep)
        )
        verification = manifest["verification"]
        explanation = verification.get("explanation") or {}
        culprit = None if verification["passed"] else explanation.get("culprit")
        sizes, latency = _measure(export_dir, manifest)
        if result is None:
            result = AutoResult(export_dir, manifest)
        result.export_dir, result.manifest = export_dir, manifest
        result.attempts.append(Attempt(tuple(keep), verification["passed"], culprit, sizes, latency))
        state = "passed" if verification["passed"] else f"failed; first below the floor: {culprit}"
        console.print(f"auto: int8 keeping float [{', '.join(keep) or 'nothing'}]: gate {state}", highlight=False)
        if verification["passed"] or culprit is None or culprit == "wire" or culprit in keep or len(keep) >= max_float:
            return result
        keep.append(culprit)


def export_checkpoint(
    checkpoint: Path,
    targets: list[str],
    precision: str,
    calib: str | None,
    out: Path | None,
    verify: bool,
    keep_float: tuple[str, ...],
    max_float: int,
    arm64: list[str] | None = None,
) -> tuple[Path, dict, AutoResult | None]:
    """``dtconvert export``: one export at ``precision``, or the search ``--precision auto`` makes."""
    if precision != "auto":
        export_dir, manifest = run_export(
            checkpoint, targets, precision=precision, calib=calib, out=out, verify=verify, keep_float=keep_float, arm64=arm64
        )
        return export_dir, manifest, None
    if keep_float or not verify or arm64:
        raise UserError(
            "--precision auto chooses what stays float and needs the gate: no --keep-float, no --no-verify, "
            "no --arch (verify its export with 'dtconvert verify EXPORT --arch arm64')"
        )
    result = run_auto(checkpoint, targets, calib=calib, out=out, max_float=max_float)
    return result.export_dir, result.manifest, result
