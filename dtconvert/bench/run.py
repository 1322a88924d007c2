"""``run_bench`` in its steps: load the exports, plan, check agreement, time interleaved, probe memory, report.

For each (thread count, batch size) every runtime is loaded, warmed up, and then timed
round-robin, one call of each per round with the starting runtime rotated every round, so a noisy
neighbour slows all of them alike; ratios are taken within that run.

Thread counts: ``torch.set_num_threads`` for eager PyTorch and TorchScript; ExecuTorch's
process-wide threadpool, resized (``dtconvert.targets.executorch.set_threads``) before any
program is loaded (the pybindings' own advice: reset first, then load); LiteRT's runner takes
its thread count per interpreter.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from dtconvert.bench.machine import load_average, machine_info
from dtconvert.bench.measure import build_call, cosine, measure_memory, summarize, time_interleaved
from dtconvert.bench.plan import Plan, batch_inputs, find_checkpoint, golden_images, plan_runs
from dtconvert.errors import UserError, unloadable

BENCH_FORMAT = "dtconvert-bench"
BENCH_VERSION = 1


def run_bench(
    export_dirs: list[Path],
    threads: list[int],
    batches: list[int],
    runs: int,
    warmup: int = 5,
    checkpoint: Path | None = None,
    memory: bool = True,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict:
    """Benchmark every device artifact of ``export_dirs`` (exports of one checkpoint); return the report."""
    from dtconvert.checkpoint import load_checkpoint

    machine = machine_info()  # load average before the run; the one after is added at the end
    exports = load_exports(export_dirs)
    first_dir, first = exports[0]
    ckpt_path, ckpt_note = find_checkpoint(first, first_dir, checkpoint)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    work = Path(tempfile.mkdtemp(prefix="dtconvert-bench-"))
    try:
        inputs = _write_inputs(first_dir, first, batches, work)
        plans, coreml, calibration = plan_runs(exports, ckpt, ckpt_path, batches, work, log)
        for b in batches:
            if not any(p.batch == b and p.role == "baseline" for p in plans[b]):
                raise UserError(
                    f"{first_dir}: no checkpoint and no reference model in the export, so there is no fp32 baseline to compare with"
                )
        agreement = _agreement(plans, inputs, threads[0])
        timing = Timing(plans, inputs, work, runs, warmup, first["wire"]["bytes_per_image"], agreement, log)
        results, threads_effective = timing.run(threads)
        memory_rows = _memory_rows(plans, work, runs, log) if memory else []
        by_key = {(m["runtime"], m["batch"]): m for m in memory_rows}
        for row in results:
            found = by_key.get((row["runtime"], row["batch"]))
            row["peak_rss_increase_bytes"] = None if found is None else found["peak_rss_increase_bytes"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "format": BENCH_FORMAT,
        "format_version": BENCH_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "model": {"name": first["model"]["name"], "id": first["model"]["id"], "checkpoint": None if ckpt_path is None else str(ckpt_path)},
        "exports": [{"path": str(d), "precision": m["precision"]} for d, m in exports],
        "machine": {**machine, "load_average_1_5_15_after": load_average()},
        "settings": {
            "threads": threads,
            "batches": batches,
            "runs": runs,
            "warmup": warmup,
            "order": "round-robin over the runtimes of one (batch, threads) configuration, the first runtime rotating each round",
            "percentile": "numpy linear interpolation",
            "inputs": "the export's golden inputs, repeated to the batch size",
            "calibration_images": None if calibration is None else len(calibration),
        },
        "threads_effective": threads_effective,
        "wire": {
            "shape": first["wire"]["shape"],
            "dtype": "int8",
            "bytes_per_image": first["wire"]["bytes_per_image"],
            "communication": first["communication"],
        },
        "results": results,
        "memory": memory_rows,
        "memory_measures": next(
            (m["measures"] for m in memory_rows if m["peak_rss_increase_bytes"] is not None),
            "not measured" + (" (--no-memory)" if not memory else ""),
        ),
        "coreml": coreml,
        "notes": [ckpt_note],
    }


def load_exports(export_dirs: list[Path]) -> list[tuple[Path, dict]]:
    """Each export's manifest, checked: one model, every artifact present, golden inputs present."""
    from dtconvert.manifest import load_manifest

    exports = [(Path(d), load_manifest(Path(d))) for d in export_dirs]
    first_dir, first = exports[0]
    for export_dir, manifest in exports[1:]:
        if manifest["model"]["id"] != first["model"]["id"]:
            raise UserError(
                f"{export_dir}: exports model {manifest['model']['id']} but {first_dir} exports {first['model']['id']}; "
                "bench compares the artifacts of one checkpoint"
            )
    for export_dir, manifest in exports:
        for entry in manifest["artifacts"]:
            if not (export_dir / entry["path"]).exists():
                raise UserError(f"{export_dir / entry['path']}: artifact listed in the manifest is missing")
        if not (export_dir / "golden" / "input.npy").is_file():
            raise UserError(f"{export_dir / 'golden' / 'input.npy'}: missing (bench runs the export's golden inputs)")
    return exports


def _write_inputs(first_dir: Path, first: dict, batches: list[int], work: Path) -> dict[int, np.ndarray]:
    """The export's golden images repeated to each batch size (``input_b{B}.npy``, for the memory
    probes) and, for the decoder, their int8 wire from the reference encoder (``wire_b{B}.npy``)."""
    import torch

    from dtconvert.wire import quantize_wire

    images = golden_images(first_dir)
    inputs = {b: batch_inputs(images, b) for b in batches}
    references = [e for e in first["artifacts"] if e["target"] == "reference"]
    reference_encoder = None
    if references:
        from dtconvert.targets.torchscript import load_decoder

        try:
            reference_encoder = load_decoder(first_dir / references[0]["path"])
        except Exception as e:  # noqa: BLE001  torch.jit.load raises anything on bad bytes: reported as a broken export
            raise unloadable(first_dir / references[0]["path"], "TorchScript", e) from None
    has_decoder = any(e["target"] == "torchscript" for e in first["artifacts"])
    scale, zero_point = first["wire"]["scale"], first["wire"]["zero_point"]
    for b in batches:
        np.save(work / f"input_b{b}.npy", inputs[b])
        if has_decoder and reference_encoder is not None:
            with torch.inference_mode():
                wire = reference_encoder(torch.from_numpy(inputs[b]))[0].numpy()
            np.save(work / f"wire_b{b}.npy", quantize_wire(wire, scale, zero_point))
    return inputs


def _uses_executorch(plans: dict[int, list[Plan]]) -> bool:
    return any(p.kind == "executorch" for ps in plans.values() for p in ps)


def _agreement(plans: dict[int, list[Plan]], inputs: dict[int, np.ndarray], threads: int) -> dict[tuple[str, int], float]:
    """Sanity: every runtime computes the same function (cosine against the fp32 baseline at each batch)."""
    import torch

    torch.set_num_threads(threads)
    if _uses_executorch(plans):
        from dtconvert.targets.executorch import set_threads

        set_threads(threads)
    agreement = {}
    for b, batch_plans in plans.items():
        outputs = {plan.key: build_call(plan.spec(), threads, inputs[b])() for plan in batch_plans if plan.role != "cloud"}
        base_key = next(p.key for p in batch_plans if p.role == "baseline")
        for key, out in outputs.items():
            agreement[(key, b)] = cosine(out, outputs[base_key])
        outputs.clear()
        gc.collect()
    return agreement


class Timing:
    """Every plan of each (thread count, batch) timed interleaved; one result row per plan."""

    def __init__(self, plans, inputs, work: Path, runs: int, warmup: int, wire_bytes: int, agreement: dict, log) -> None:
        self.plans, self.inputs, self.work, self.runs, self.warmup = plans, inputs, work, runs, warmup
        self.wire_bytes, self.agreement, self.log = wire_bytes, agreement, log

    def run(self, threads: list[int]) -> tuple[list[dict], dict[str, dict]]:
        """Result rows, and per thread count the thread settings each runtime reports back."""
        import torch

        results, threads_effective = [], {}
        for t in threads:
            torch.set_num_threads(t)
            effective: dict[str, int | None] = {"torch": torch.get_num_threads(), "litert": t}
            if _uses_executorch(self.plans):
                from dtconvert.targets.executorch import set_threads

                gc.collect()  # no program may outlive the threadpool it was loaded on
                effective["executorch"] = set_threads(t)
            threads_effective[str(t)] = effective
            for b, batch_plans in self.plans.items():
                results += self._time_batch(batch_plans, b, t, effective)
        return results, threads_effective

    def _time_batch(self, plans: list[Plan], b: int, t: int, effective: dict) -> list[dict]:
        self.log(f"timing batch {b}, {t} thread(s): {len(plans)} runtimes × {self.runs} runs, interleaved")
        calls = {}
        for plan in plans:
            data = np.load(self.work / f"wire_b{b}.npy") if plan.role == "cloud" else self.inputs[b]
            calls[plan.key] = build_call(plan.spec(), t, data)
        seconds = time_interleaved(calls, self.warmup, self.runs)
        calls.clear()
        gc.collect()
        stats = {key: summarize(values) for key, values in seconds.items()}
        base = stats[next(p.key for p in plans if p.role == "baseline")]
        return [self._row(plan, b, t, stats[plan.key], base, effective) for plan in plans]

    def _row(self, plan: Plan, b: int, t: int, s: dict, base: dict, effective: dict) -> dict:
        device = plan.role != "cloud"
        delegation = plan.delegation
        return {
            "runtime": plan.key,
            "role": plan.role,
            "kind": plan.kind,
            "precision": plan.precision,
            "artifact": plan.artifact,
            "export_dir": plan.export_dir,
            "batch": b,
            "threads": t,
            "threads_set": _threads_note(plan.kind, t, effective),
            "how": plan.how,
            **s,
            "images_per_s": b * 1000.0 / s["median_ms"],
            "ratio_to_eager_fp32": s["median_ms"] / base["median_ms"] if device else None,
            "artifact_bytes": plan.artifact_bytes,
            "delegate_partitions": None if delegation is None else delegation["partitions"],
            "ops_outside_delegate": None if delegation is None else sum(delegation["ops_outside_delegate"].values()),
            "wire_bytes_per_image": self.wire_bytes if device else None,
            "cosine_vs_fp32": round(self.agreement[(plan.key, b)], 6) if device else None,
            "notes": plan.notes,
        }


def _threads_note(kind: str, threads: int, effective: dict) -> str:
    if kind in ("eager", "torchscript-encoder", "decoder"):
        return f"torch.set_num_threads({threads}); torch.get_num_threads() = {effective['torch']}"
    if kind == "executorch":
        return f"ExecuTorch threadpool reset to {threads} before loading; it reports {effective['executorch']}"
    return f"Interpreter(num_threads={threads})"


def _memory_rows(plans: dict[int, list[Plan]], work: Path, runs: int, log: Callable[[str], None]) -> list[dict]:
    """Peak memory of every device and baseline plan, each in a fresh process, at 1 thread."""
    calls_per_probe = max(3, min(runs, 10))
    rows = []
    for b, batch_plans in plans.items():
        for plan in batch_plans:
            if plan.role == "cloud":
                continue
            log(f"peak memory: {plan.key}, batch {b} (fresh process)")
            measured = measure_memory(plan.spec(), work / f"input_b{b}.npy", calls_per_probe)
            rows.append({"runtime": plan.key, "batch": b, "threads": 1, **measured})
    return rows


def write_json(report: dict, path: Path) -> None:
    """The report as JSON, written atomically (the schema: ``dtconvert/bench.schema.json``)."""
    from dtconvert.checkpoint import atomic_write

    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8"))
