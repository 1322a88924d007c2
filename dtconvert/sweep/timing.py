"""ExecuTorch XNNPACK latency of every sweep row at every batch size, all rows timed round-robin together.

Batch 1 runs the exported ``.pte``; a larger batch re-lowers the configuration's checkpoint at
that batch with the export's quantization and calibration images (as ``dtconvert bench`` does).
The ``.pte`` runs in the runner the ExecuTorch target gives, on its process-wide threadpool.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def time_rows(
    rows: list[dict], checkpoints: dict, batches: list[int], runs: int, warmup: int, threads: int, staging: Path, log: Callable[[str], None]
) -> dict[str, int | None]:
    """Add ``latency[str(batch)]`` (median, p90, min, runs, images/s, how) to every row; return the
    thread counts torch and ExecuTorch's threadpool report back once set to ``threads``."""
    import torch

    from dtconvert.targets.executorch import set_threads

    work = Path(tempfile.mkdtemp(prefix="dtconvert-sweep-"))
    try:
        programs = _programs(rows, checkpoints, batches, staging, work, log)
        torch.set_num_threads(threads)
        gc.collect()
        # Before any program is loaded: programs keep the pool they were loaded on.
        effective = {"torch": torch.get_num_threads(), "executorch": set_threads(threads)}
        preprocessing = checkpoints[rows[0]["config"]]["preprocessing"]
        for b in batches:
            log(f"timing batch {b}: {len(rows)} ExecuTorch programs × {runs} runs, interleaved, {threads} thread(s)")
            _time_batch(rows, programs, b, preprocessing, runs, warmup)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return effective


def _programs(
    rows: list[dict], checkpoints: dict, batches: list[int], staging: Path, work: Path, log: Callable[[str], None]
) -> dict[tuple[int, int], tuple[str, str]]:
    """(row, batch) → (the ``.pte`` that runs, how it was made)."""
    from dtconvert.bench import calibration_for, lower_executorch
    from dtconvert.manifest import load_manifest

    programs: dict[tuple[int, int], tuple[str, str]] = {}
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
            quantized[i] = lower_executorch(ckpt, row["wire"], b, calibration_cache[row["config"]], path, quantized=quantized.get(i))
            programs[(i, b)] = (str(path), f"re-lowered at batch {b} from the configuration's checkpoint")
    return programs


def _time_batch(rows: list[dict], programs: dict, b: int, preprocessing: dict, runs: int, warmup: int) -> None:
    from dtconvert.bench import summarize, time_interleaved
    from dtconvert.targets import load_target

    size, channels = preprocessing["size"], preprocessing["channels"]
    inputs = np.random.default_rng(0).standard_normal((b, channels, *size)).astype(np.float32)
    target = load_target("executorch")
    calls = {}
    for i in range(len(rows)):
        # A re-lowered program is fixed at its own batch: the runner (batch 1, nothing to resize) takes it whole.
        run = target.runner(Path(programs[(i, b)][0]))
        calls[str(i)] = lambda run=run: run(inputs)
    seconds = time_interleaved(calls, warmup, runs)
    calls.clear()
    gc.collect()
    for i, row in enumerate(rows):
        stats = summarize(seconds[str(i)])
        row["latency"][str(b)] = {**stats, "images_per_s": b * 1000.0 / stats["median_ms"], "how": programs[(i, b)][1]}
