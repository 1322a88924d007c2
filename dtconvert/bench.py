"""``dtconvert bench``: measured latency, size, wire bytes and memory of an export, side by side.

One process times every device artifact in its own runtime (ExecuTorch's Python runtime with
the XNNPACK delegate for ``.pte``, the LiteRT interpreter with its default XNNPACK delegate for
``.tflite``) against the checkpoint's ``DeviceEncoder`` in eager PyTorch fp32, plus the
TorchScript cloud decoder. For each (thread count, batch size) every runtime is loaded, warmed
up, and then timed round-robin, one call of each per round with the starting runtime rotated
every round, so a noisy neighbour slows all of them alike; ratios are taken within that run.

Batch sizes above 1: the exported device artifacts are fixed at batch 1 (onnx2tf gave wrong
numbers for a dynamic batch). ExecuTorch is re-lowered at that batch from the checkpoint, with
the same quantizer and calibration images as the export, and checked against the shipped
``.pte``; LiteRT's input is resized only if the resized interpreter agrees with batch-1 calls,
otherwise the batch runs as B batch-1 calls. Every row says which it was.

Thread counts: ``torch.set_num_threads`` for eager PyTorch and TorchScript; ExecuTorch's
process-wide threadpool, reset with ``_unsafe_reset_threadpool`` before any program is loaded
(the pybindings' own advice: reset first, then load); ``num_threads`` of LiteRT's interpreter.

Peak memory is measured in a fresh subprocess per runtime and batch that imports only that
runtime: the kernel's resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` just before loading) minus the resident set just before loading.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from dtconvert.errors import UserError, unloadable

BENCH_FORMAT = "dtconvert-bench"
BENCH_VERSION = 1
EAGER = "PyTorch eager fp32"
TORCHSCRIPT_ENCODER = "TorchScript fp32 (export's reference encoder)"
DECODER = "TorchScript cloud decoder"
RUNTIME_LABELS = {"executorch": "ExecuTorch XNNPACK", "tflite": "LiteRT XNNPACK"}
RESIZE_TOLERANCE = 1e-4  # a resized LiteRT interpreter must match batch-1 calls this closely
MEMORY_MEASURES = (
    "peak resident set (VmHWM, reset via /proc/self/clear_refs) while loading and running warm-up + timed "
    "calls at 1 thread, minus the resident set just before loading; fresh process per runtime and batch "
    "with only that runtime imported"
)
MEMORY_MEASURES_FALLBACK = (
    "increase of the process's peak resident set (ru_maxrss) while loading and running warm-up + timed "
    "calls at 1 thread; fresh process per runtime and batch with only that runtime imported "
    "(/proc/self/clear_refs was not writable, so a peak reached while importing can hide part of it)"
)
VERSIONED_TOOLS = ("torch", "executorch", "ai-edge-litert", "tensorflow", "coremltools", "numpy")


# ---- parsing -------------------------------------------------------------------------------


def parse_counts(text: str, flag: str) -> list[int]:
    """``"1,2"`` → ``[1, 2]``: positive integers, comma-separated, duplicates dropped."""
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise UserError(f"{flag} {text!r}: expected comma-separated positive integers, e.g. {flag} 1,2")
        if int(item) not in values:
            values.append(int(item))
    return values


# ---- machine and tools ---------------------------------------------------------------------


def machine_info() -> dict:
    """What the numbers were measured on: CPUs, CPU model, OS, Python and runtime versions."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    tools = {}
    for name in VERSIONED_TOOLS:
        try:
            tools[name] = version(name)
        except PackageNotFoundError:
            pass
    from dtconvert import __version__

    environment = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ}
    return {
        "cpus": os.cpu_count() or 1,
        "usable_cpus": usable,
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "environment": environment,
        "cpu_model": model,
        "system": platform.platform(),
        "python": platform.python_version(),
        "dtconvert": __version__,
        "tools": tools,
    }


# ---- running one configuration -------------------------------------------------------------


@dataclass
class Plan:
    """How one runtime runs one batch size: enough to rebuild it in another process."""

    key: str  # runtime label in the report
    role: str  # "baseline", "device" or "cloud"
    kind: str  # "eager", "torchscript-encoder", "executorch", "litert", "decoder"
    precision: str
    batch: int
    path: str  # the file that runs (a checkpoint for eager)
    how: str  # "one call at batch 8", "re-lowered at batch 8 from the checkpoint", "8 × batch-1 calls", ...
    loop: bool = False  # B batch-1 calls instead of one call
    artifact: str | None = None  # manifest path of the artifact, for device rows
    artifact_bytes: int | None = None
    export_dir: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # decoder: wire_shape, scale, zero_point
    delegation: dict | None = None  # device rows: XNNPACK partitions and ops outside, of the file that runs

    def spec(self) -> dict:
        return {"kind": self.kind, "path": self.path, "batch": self.batch, "loop": self.loop, "extra": self.extra}


def reset_executorch_threads(threads: int) -> int | None:
    """Resize ExecuTorch's process-wide threadpool (XNNPACK runs on it); programs must be loaded after."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    return int(portable_lib._threadpool_get_thread_count())


def build_call(spec: dict, threads: int, inputs: np.ndarray) -> Callable[[], np.ndarray]:
    """Load what ``spec`` names and return a function running one batch of ``inputs``.

    Global thread settings (torch, ExecuTorch's threadpool) are the caller's; LiteRT takes
    ``threads`` per interpreter. ``inputs`` holds at least ``spec['batch']`` preprocessed images
    (or int8 wire tensors for the decoder)."""
    kind, batch, loop = spec["kind"], spec["batch"], spec["loop"]
    x = np.ascontiguousarray(inputs[:batch])
    if kind == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=spec["path"], num_threads=threads)
        index_in = interpreter.get_input_details()[0]["index"]
        if not loop and batch != 1:
            interpreter.resize_tensor_input(index_in, list(x.shape), strict=False)
        interpreter.allocate_tensors()
        index_out = interpreter.get_output_details()[0]["index"]
        if loop:
            rows = [x[i : i + 1] for i in range(batch)]

            def run() -> np.ndarray:
                outs = []
                for row in rows:
                    interpreter.set_tensor(index_in, row)
                    interpreter.invoke()
                    outs.append(interpreter.get_tensor(index_out))
                return np.concatenate(outs)

            return run

        def run_once() -> np.ndarray:
            interpreter.set_tensor(index_in, x)
            interpreter.invoke()
            return interpreter.get_tensor(index_out)

        return run_once

    import torch

    if kind == "executorch":
        from executorch.runtime import Runtime

        from dtconvert.output import quiet_native

        with quiet_native():  # the runtime logs its CPU probing to stderr on first use
            method = Runtime.get().load_program(spec["path"]).load_method("forward")
        tensors = [torch.from_numpy(x[i : i + 1].copy()) for i in range(batch)] if loop else [torch.from_numpy(x.copy())]

        def run_et() -> np.ndarray:
            return np.concatenate([method.execute([t])[0].numpy() for t in tensors])

        return run_et
    if kind == "eager":
        from dtconvert.checkpoint import load_checkpoint, model_config_of
        from dtconvert.model import DeviceEncoder

        ckpt = load_checkpoint(spec["path"])
        encoder = DeviceEncoder(model_config_of(ckpt, spec["path"]))
        encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")})
        encoder.eval()
        del ckpt
        tensor = torch.from_numpy(x.copy())

        def run_eager() -> np.ndarray:
            with torch.inference_mode():
                return encoder(tensor).numpy()

        return run_eager
    if kind == "torchscript-encoder":
        from dtconvert.targets.torchscript import load_decoder

        reference = load_decoder(Path(spec["path"]))
        tensor = torch.from_numpy(x.copy())

        def run_reference() -> np.ndarray:
            with torch.inference_mode():
                return reference(tensor)[0].numpy()

        return run_reference
    if kind == "decoder":
        from dtconvert.targets.torchscript import load_decoder

        decoder = load_decoder(Path(spec["path"]))
        wire = torch.from_numpy(x.copy())
        scale = torch.tensor([spec["extra"]["scale"]], dtype=torch.float32)
        zero_point = torch.tensor([spec["extra"]["zero_point"]], dtype=torch.int32)

        def run_decoder() -> np.ndarray:
            with torch.inference_mode():
                return decoder(wire, scale, zero_point)[0].numpy()

        return run_decoder
    raise ValueError(f"unknown runtime kind {kind!r}")


def time_interleaved(calls: Mapping[str, Callable[[], object]], warmup: int, runs: int) -> dict[str, list[float]]:
    """Seconds per call of each function: ``warmup`` untimed rounds, then ``runs`` timed rounds,
    one call of each function per round, the first function of a round rotating each round."""
    keys = list(calls)
    for _ in range(warmup):
        for key in keys:
            calls[key]()
    seconds: dict[str, list[float]] = {key: [] for key in keys}
    for round_index in range(runs):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            calls[key]()
            seconds[key].append(time.perf_counter() - start)
    return seconds


def summarize(seconds: list[float]) -> dict:
    """Median, p90 (numpy's linear interpolation) and min, in milliseconds."""
    ms = np.asarray(seconds) * 1000.0
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min()), "runs": len(ms)}


# ---- memory --------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field_name}")


def probe_memory(spec: dict, inputs_path: str, calls: int) -> dict:
    """Run in a fresh process (``python -m dtconvert.bench``): load, run ``calls`` times, report memory."""
    import resource

    inputs = np.load(inputs_path)
    if spec["kind"] != "litert":
        import torch

        torch.set_num_threads(1)
    if spec["kind"] == "executorch":
        reset_executorch_threads(1)
    gc.collect()
    try:
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        exact = True
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        exact = False
    run = build_call(spec, 1, inputs)
    for _ in range(calls):
        run()
    peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_rss_increase_bytes": max(0, peak - before) * 1024,
        "peak_rss_bytes": peak * 1024,
        "measures": MEMORY_MEASURES if exact else MEMORY_MEASURES_FALLBACK,
    }


def measure_memory(plan: Plan, inputs_path: Path, calls: int) -> dict:
    """``probe_memory`` in a subprocess; a failure is reported, not raised."""
    argv = [sys.executable, "-m", "dtconvert.bench", json.dumps(plan.spec()), str(inputs_path), str(calls)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"peak_rss_increase_bytes": None, "peak_rss_bytes": None, "measures": f"probe failed: {tail[:200]}"}
    return json.loads(lines[-1])


# ---- the export, the checkpoint, batch > 1 --------------------------------------------------


def find_checkpoint(manifest: dict, export_dir: Path, given: Path | None) -> tuple[Path | None, str]:
    """The checkpoint the export came from: ``given`` (its sha256 must match the manifest), or the
    file the manifest names, looked for beside the export; returns (path or None, a note)."""
    from dtconvert.checkpoint import sha256_file

    recorded = manifest["model"]["checkpoint"]
    if given is not None:
        if not given.is_file():
            raise UserError(f"{given}: no such checkpoint file")
        if sha256_file(given) != recorded["sha256"]:
            raise UserError(
                f"{given}: is not the checkpoint {export_dir} was exported from (its sha256 differs from the manifest's model.checkpoint)"
            )
        return given, f"checkpoint {given} (given; sha256 matches the manifest)"
    name = recorded["file"]
    model = manifest["model"]["name"]  # `dtconvert demo` keeps OUT/digits/ckpt.pt beside OUT/export/digits
    candidates = [
        export_dir / name,
        export_dir.parent / name,
        Path.cwd() / name,
        export_dir.parent / model / name,
        export_dir.parent.parent / model / name,
    ]
    for candidate in candidates:
        if candidate.is_file() and sha256_file(candidate) == recorded["sha256"]:
            return candidate, f"checkpoint {candidate} (found beside the export; sha256 matches the manifest)"
    return None, (
        f"the checkpoint {name} (sha256 {recorded['sha256'][:16]}…) was not found beside the export; pass --checkpoint: "
        "the eager baseline is the export's TorchScript reference encoder instead, and ExecuTorch runs batches "
        "above 1 as B × batch-1 calls"
    )


def calibration_for(ckpt: dict, manifest: dict) -> np.ndarray:
    """The export's own calibration images, found again from what the manifest recorded."""
    from dtconvert.quantize import checkpoint_images, folder_images

    calibration = manifest["wire"]["calibration"]
    if calibration.get("source") == "folder":
        return folder_images(Path(calibration["path"]), manifest["device_input"]["preprocessing"])
    images, _ = checkpoint_images(ckpt, "train", int(calibration["images"]))
    return images


def lower_executorch(ckpt: dict, precision: str, batch: int, calibration: np.ndarray, path: Path, quantized=None):
    """Lower the checkpoint's encoder to an XNNPACK ``.pte`` at a fixed ``batch`` exactly as export
    does (the ExecuTorch target's own ``prepare`` and ``lower``; static scales from the same images
    in the same order, traced with a dynamic batch so one calibration serves every batch size).
    ``quantized`` reuses a module prepared by an earlier call; returns the prepared module."""
    import torch

    from dtconvert.checkpoint import build_model
    from dtconvert.targets import executorch as et

    encoder = build_model(ckpt).encoder.eval()
    example = torch.from_numpy(np.ascontiguousarray(np.resize(calibration, (batch, *calibration.shape[1:]))))
    if quantized is None:
        quantized = et.prepare(encoder, example[:1], calibration, precision, any_batch=precision != "fp32")
    path.write_bytes(et.lower(quantized, example).to_executorch().buffer)
    return quantized


def _batch_inputs(images: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` images, repeating the export's golden inputs when it has fewer."""
    return np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])).astype(images.dtype))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


# ---- the benchmark ---------------------------------------------------------------------------


def _load_exports(export_dirs: list[Path]) -> list[tuple[Path, dict]]:
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
    import torch

    from dtconvert.checkpoint import load_checkpoint
    from dtconvert.quantize import quantize_wire

    machine = machine_info()  # load average before the run; the one after is added at the end
    exports = _load_exports(export_dirs)
    first_dir, first = exports[0]
    ckpt_path, ckpt_note = find_checkpoint(first, first_dir, checkpoint)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    images = np.load(first_dir / "golden" / "input.npy").astype(np.float32)
    wire_bytes = first["wire"]["bytes_per_image"]
    notes = [ckpt_note]
    work = Path(tempfile.mkdtemp(prefix="dtconvert-bench-"))
    try:
        # Inputs: the export's golden images, repeated to each batch size; the decoder gets their int8 wire.
        references = [e for e in first["artifacts"] if e["target"] == "reference"]
        inputs = {b: _batch_inputs(images, b) for b in batches}
        reference_encoder = None
        if references:
            from dtconvert.targets.torchscript import load_decoder

            try:
                reference_encoder = load_decoder(first_dir / references[0]["path"])
            except Exception as e:  # noqa: BLE001  torch.jit.load raises anything on bad bytes: reported as a broken export
                raise unloadable(first_dir / references[0]["path"], "TorchScript", e) from None
        decoder_entry = next((e for e in first["artifacts"] if e["target"] == "torchscript"), None)
        scale, zero_point = first["wire"]["scale"], first["wire"]["zero_point"]
        for b in batches:
            np.save(work / f"input_b{b}.npy", inputs[b])
            if decoder_entry is not None and reference_encoder is not None:
                with torch.inference_mode():
                    wire = reference_encoder(torch.from_numpy(inputs[b]))[0].numpy()
                np.save(work / f"wire_b{b}.npy", quantize_wire(wire, scale, zero_point))

        plans, coreml, calibration = _plan(exports, ckpt, ckpt_path, batches, work, notes, log)
        for b in batches:
            if not any(p.batch == b and p.role == "baseline" for p in plans[b]):
                raise UserError(
                    f"{first_dir}: no checkpoint and no reference model in the export, so there is no fp32 baseline to compare with"
                )

        # Sanity: every runtime computes the same function (cosine against fp32 at each batch).
        torch.set_num_threads(threads[0])
        if any(p.kind == "executorch" for ps in plans.values() for p in ps):
            reset_executorch_threads(threads[0])
        agreement = {}
        for b in batches:
            outputs = {}
            for plan in plans[b]:
                if plan.role == "cloud":
                    continue
                outputs[plan.key] = build_call(plan.spec(), threads[0], inputs[b])()
            base_key = next(p.key for p in plans[b] if p.role == "baseline")
            for key, out in outputs.items():
                agreement[(key, b)] = cosine(out, outputs[base_key])
            outputs.clear()
            gc.collect()

        results = []
        threads_effective = {}
        for t in threads:
            torch.set_num_threads(t)
            effective: dict[str, int | None] = {"torch": torch.get_num_threads(), "litert": t}
            if any(p.kind == "executorch" for ps in plans.values() for p in ps):
                gc.collect()  # no program may outlive the threadpool it was loaded on
                effective["executorch"] = reset_executorch_threads(t)
            threads_effective[str(t)] = effective
            for b in batches:
                log(f"timing batch {b}, {t} thread(s): {len(plans[b])} runtimes × {runs} runs, interleaved")
                calls = {}
                for plan in plans[b]:
                    data = np.load(work / f"wire_b{b}.npy") if plan.role == "cloud" else inputs[b]
                    calls[plan.key] = build_call(plan.spec(), t, data)
                seconds = time_interleaved(calls, warmup, runs)
                calls.clear()
                gc.collect()
                stats = {key: summarize(values) for key, values in seconds.items()}
                base = stats[next(p.key for p in plans[b] if p.role == "baseline")]
                for plan in plans[b]:
                    s = stats[plan.key]
                    results.append(
                        {
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
                            "ratio_to_eager_fp32": None if plan.role == "cloud" else s["median_ms"] / base["median_ms"],
                            "artifact_bytes": plan.artifact_bytes,
                            "delegate_partitions": None if plan.delegation is None else plan.delegation["partitions"],
                            "ops_outside_delegate": None
                            if plan.delegation is None
                            else sum(plan.delegation["ops_outside_delegate"].values()),
                            "wire_bytes_per_image": None if plan.role == "cloud" else wire_bytes,
                            "cosine_vs_fp32": None if plan.role == "cloud" else round(agreement[(plan.key, b)], 6),
                            "notes": plan.notes,
                        }
                    )
        memory_rows = []
        if memory:
            calls_per_probe = max(3, min(runs, 10))
            for b in batches:
                for plan in plans[b]:
                    if plan.role == "cloud":
                        continue
                    log(f"peak memory: {plan.key}, batch {b} (fresh process)")
                    measured = measure_memory(plan, work / f"input_b{b}.npy", calls_per_probe)
                    memory_rows.append({"runtime": plan.key, "batch": b, "threads": 1, **measured})
        by_key = {(m["runtime"], m["batch"]): m for m in memory_rows}
        for row in results:
            found = by_key.get((row["runtime"], row["batch"]))
            row["peak_rss_increase_bytes"] = None if found is None else found["peak_rss_increase_bytes"]
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)

    return {
        "format": BENCH_FORMAT,
        "format_version": BENCH_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "model": {"name": first["model"]["name"], "id": first["model"]["id"], "checkpoint": None if ckpt_path is None else str(ckpt_path)},
        "exports": [{"path": str(d), "precision": m["precision"]} for d, m in exports],
        "machine": {**machine, "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()]},
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
        "wire": {"shape": first["wire"]["shape"], "dtype": "int8", "bytes_per_image": wire_bytes, "communication": first["communication"]},
        "results": results,
        "memory": memory_rows,
        "memory_measures": next(
            (m["measures"] for m in memory_rows if m["peak_rss_increase_bytes"] is not None),
            "not measured" + (" (--no-memory)" if not memory else ""),
        ),
        "coreml": coreml,
        "notes": notes,
    }


def _threads_note(kind: str, threads: int, effective: dict) -> str:
    if kind in ("eager", "torchscript-encoder", "decoder"):
        return f"torch.set_num_threads({threads}); torch.get_num_threads() = {effective['torch']}"
    if kind == "executorch":
        return f"ExecuTorch threadpool reset to {threads} before loading; it reports {effective['executorch']}"
    return f"Interpreter(num_threads={threads})"


def _plan(
    exports, ckpt, ckpt_path, batches, work: Path, notes: list[str], log
) -> tuple[dict[int, list[Plan]], list[dict], np.ndarray | None]:
    """What runs at each batch size: baseline, each device artifact, the cloud decoder; plus Core ML rows."""
    from dtconvert.verify import measure_delegation

    first_dir, first = exports[0]
    plans: dict[int, list[Plan]] = {b: [] for b in batches}
    calibration = None
    calibration_problem = None
    quantized: dict = {}  # artifact → its prepared (for int8: quantized) program at any batch, calibrated once
    images = np.load(first_dir / "golden" / "input.npy").astype(np.float32)
    for b in batches:
        if ckpt_path is not None:
            plans[b].append(Plan(EAGER, "baseline", "eager", "fp32", b, str(ckpt_path), f"one call at batch {b}"))
        else:
            reference = next(e for e in first["artifacts"] if e["target"] == "reference")
            plans[b].append(
                Plan(
                    TORCHSCRIPT_ENCODER,
                    "baseline",
                    "torchscript-encoder",
                    "fp32",
                    b,
                    str(first_dir / reference["path"]),
                    f"one call at batch {b}",
                )
            )
    coreml = []
    for export_dir, manifest in exports:
        for entry in manifest["artifacts"]:
            if entry["part"] != "device":
                continue
            path = export_dir / entry["path"]
            if entry["target"] == "coreml":
                ops = entry.get("details", {}).get("ops", {})
                coreml.append(
                    {
                        "artifact": entry["path"],
                        "export_dir": str(export_dir),
                        "precision": entry["precision"],
                        "bytes": entry["bytes"],
                        "ops": ops,
                        "ops_total": int(sum(ops.values())),
                        "wire_bytes_per_image": manifest["wire"]["bytes_per_image"],
                        "timed": False,
                        "note": f"not timed: Core ML predicts only on macOS (this host: {platform.system()}); "
                        "size and MIL op counts from the manifest",
                    }
                )
                continue
            label = f"{RUNTIME_LABELS[entry['target']]} {entry['precision']}"
            try:
                shipped = measure_delegation(path, entry["target"])
                build_call(
                    {
                        "kind": "executorch" if entry["target"] == "executorch" else "litert",
                        "path": str(path),
                        "batch": 1,
                        "loop": False,
                        "extra": {},
                    },
                    1,
                    images,
                )()
            except Exception as e:  # noqa: BLE001  bytes that match the manifest but the runtime cannot read (it raises anything)
                raise unloadable(path, RUNTIME_LABELS[entry["target"]], e) from None
            structure = _structure_note(entry["target"], shipped)
            for b in batches:
                plan = Plan(
                    label,
                    "device",
                    "executorch" if entry["target"] == "executorch" else "litert",
                    entry["precision"],
                    b,
                    str(path),
                    "one call at batch 1",
                    artifact=entry["path"],
                    artifact_bytes=entry["bytes"],
                    export_dir=str(export_dir),
                    notes=[structure],
                    delegation=shipped,
                )
                if b > 1 and entry["target"] == "executorch":
                    if ckpt is not None and calibration is None and calibration_problem is None and entry["precision"] != "fp32":
                        try:
                            calibration = calibration_for(ckpt, manifest)
                        except UserError as e:
                            calibration_problem = str(e)
                    if ckpt is None or (entry["precision"] != "fp32" and calibration is None):
                        why = "no checkpoint" if ckpt is None else f"calibration images not available ({calibration_problem})"
                        plan.loop, plan.how = True, f"{b} × batch-1 calls of the shipped .pte ({why})"
                    else:
                        log(f"lowering {label} at batch {b} from the checkpoint")
                        relowered = work / f"et_{len(quantized)}_{entry['precision']}_b{b}.pte"
                        quantized[str(path)] = lower_executorch(
                            ckpt,
                            entry["precision"],
                            b,
                            calibration if calibration is not None else images,
                            relowered,
                            quantized=quantized.get(str(path)),
                        )
                        plan.path = str(relowered)
                        plan.how = f"re-lowered at batch {b} from the checkpoint"
                        plan.delegation = measure_delegation(relowered, "executorch")
                        plan.notes.append(f"at batch {b}: {_structure_note('executorch', plan.delegation)}")
                        plan.notes.append(_compare_relowered(path, relowered, b, first_dir))
                elif b > 1:
                    ok, detail = _litert_resize_works(path, b, first_dir)
                    if ok:
                        plan.how = f"input resized to batch {b} ({detail})"
                    else:
                        plan.loop, plan.how = True, f"{b} × batch-1 calls"
                        plan.notes.append(f"resizing the interpreter to batch {b} was not used: {detail}")
                plans[b].append(plan)
    for export_dir, manifest in exports[:1]:
        decoder = next((e for e in manifest["artifacts"] if e["target"] == "torchscript"), None)
        if decoder is not None and (work / f"wire_b{batches[0]}.npy").is_file():
            for b in batches:
                plans[b].append(
                    Plan(
                        DECODER,
                        "cloud",
                        "decoder",
                        "fp32",
                        b,
                        str(export_dir / decoder["path"]),
                        f"one call at batch {b}",
                        artifact=decoder["path"],
                        artifact_bytes=decoder["bytes"],
                        export_dir=str(export_dir),
                        extra={"scale": manifest["wire"]["scale"], "zero_point": manifest["wire"]["zero_point"]},
                    )
                )
    for b in batches:  # one label per runtime and batch, even when two exports hold the same target and precision
        seen: dict[str, int] = {}
        for plan in plans[b]:
            seen[plan.key] = seen.get(plan.key, 0) + 1
            if seen[plan.key] > 1:
                assert plan.export_dir is not None  # only device and decoder plans repeat, and they name their export
                plan.key = f"{plan.key} ({Path(plan.export_dir).name})"
    return plans, coreml, calibration


def _structure_note(target: str, delegation: dict) -> str:
    """How much of the artifact its runtime's XNNPACK delegate takes: what explains a slow artifact."""
    n = delegation["partitions"]
    unit = "delegate call" if target == "executorch" else "partition"
    outside = ", ".join(f"{op} {count}" for op, count in delegation["ops_outside_delegate"].items()) or "none"
    return f"{n} XNNPACK {unit}{'s' if n != 1 else ''}; ops outside the delegate: {outside}"


def _compare_relowered(shipped: Path, relowered: Path, batch: int, export_dir: Path) -> str:
    """Max abs difference between the re-lowered batch program and batch-1 calls of the shipped .pte."""
    images = _batch_inputs(np.load(export_dir / "golden" / "input.npy").astype(np.float32), batch)
    one = build_call({"kind": "executorch", "path": str(shipped), "batch": batch, "loop": True, "extra": {}}, 1, images)()
    many = build_call({"kind": "executorch", "path": str(relowered), "batch": batch, "loop": False, "extra": {}}, 1, images)()
    return f"re-lowered program vs {batch} batch-1 calls of the shipped .pte: max abs difference {float(np.abs(one - many).max()):.3g}"


def _litert_resize_works(path: Path, batch: int, export_dir: Path) -> tuple[bool, str]:
    """Whether LiteRT runs the batch-1 model resized to ``batch`` with the same numbers as batch-1 calls."""
    images = _batch_inputs(np.load(export_dir / "golden" / "input.npy").astype(np.float32), batch)
    try:
        resized = build_call({"kind": "litert", "path": str(path), "batch": batch, "loop": False, "extra": {}}, 1, images)()
    except Exception as e:  # noqa: BLE001  the delegate refuses the new shape (LiteRT raises anything): a reported 'no'
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
    looped = build_call({"kind": "litert", "path": str(path), "batch": batch, "loop": True, "extra": {}}, 1, images)()
    if resized.shape != looped.shape:
        return False, f"resized output shape {list(resized.shape)} instead of {list(looped.shape)}"
    error = float(np.abs(resized - looped).max())
    if error > RESIZE_TOLERANCE:
        return False, f"resized interpreter differs from batch-1 calls by max abs {error:.3g}"
    return True, f"checked against batch-1 calls: max abs {error:.3g}"


# ---- checking a report -----------------------------------------------------------------------


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
    problems = []
    baselines = {(r["batch"], r["threads"]): r for r in report["results"] if r["role"] == "baseline"}
    for r in report["results"]:
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
        if r.get("role") != "cloud" and r.get("wire_bytes_per_image") != wire_bytes:
            problems.append(
                f"{r.get('runtime', r['artifact'])}: wire_bytes_per_image {r.get('wire_bytes_per_image')} "
                f"differs from the report's {wire_bytes}"
            )
        manifest = manifests.get(r["export_dir"])
        if manifest is None:
            continue
        if r.get("role") != "cloud" and manifest["wire"]["bytes_per_image"] != r["wire_bytes_per_image"]:
            problems.append(
                f"{r['artifact']}: wire_bytes_per_image {r['wire_bytes_per_image']} "
                f"differs from the manifest's {manifest['wire']['bytes_per_image']}"
            )
        entry = next((e for e in manifest["artifacts"] if e["path"] == r["artifact"]), None)
        size_key = "artifact_bytes" if "artifact_bytes" in r else "bytes"
        if entry is None:
            problems.append(f"{r['artifact']}: not in {r['export_dir']}/manifest.json")
            continue
        on_disk = _size_on_disk(Path(r["export_dir"]) / r["artifact"])
        if r[size_key] != entry["bytes"] or r[size_key] != on_disk:
            problems.append(f"{r['artifact']}: {size_key} {r[size_key]} but the manifest says {entry['bytes']} and the file has {on_disk}")
    return problems


def _size_on_disk(path: Path) -> int | None:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.is_file() else None


# ---- presenting ------------------------------------------------------------------------------


def markdown_tables(report: dict) -> str:
    """The report as markdown tables (latency per configuration; Core ML; memory)."""
    lines = [
        "| runtime | batch | threads | how | median ms | p90 ms | img/s | × eager fp32 "
        "| XNNPACK partitions | artifact B | wire B/img | peak RSS Δ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        ratio = "—" if r["ratio_to_eager_fp32"] is None else f"{r['ratio_to_eager_fp32']:.3f}"
        size = "—" if r["artifact_bytes"] is None else f"{r['artifact_bytes']:,}"
        wire = "—" if r["wire_bytes_per_image"] is None else f"{r['wire_bytes_per_image']:,}"
        rss = "—" if r.get("peak_rss_increase_bytes") is None else f"{r['peak_rss_increase_bytes'] / 2**20:.1f} MiB"
        lines.append(
            f"| {r['runtime']} | {r['batch']} | {r['threads']} | {r['how']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{r['images_per_s']:.0f} | {ratio} | {_partitions(r)} | {size} | {wire} | {rss} |"
        )
    if report["coreml"]:
        lines += ["", "| Core ML artifact | precision | bytes | MIL ops | wire B/img | note |", "|---|---|---|---|---|---|"]
        for c in report["coreml"]:
            top = ", ".join(f"{k} {v}" for k, v in sorted(c["ops"].items(), key=lambda kv: -kv[1])[:6])
            lines.append(
                f"| {c['artifact']} | {c['precision']} | {c['bytes']:,} | {c['ops_total']} ({top}, …) "
                f"| {c['wire_bytes_per_image']:,} | {c['note']} |"
            )
    return "\n".join(lines) + "\n"


def _partitions(row: dict) -> str:
    """'1' for a whole-graph delegate; '33 (+178 outside)' when ops run outside it; '—' where none applies."""
    if row.get("delegate_partitions") is None:
        return "—"
    outside = row["ops_outside_delegate"]
    return f"{row['delegate_partitions']}" + (f" (+{outside} outside)" if outside else "")


def rich_table(report: dict):
    """The terminal table: one row per runtime, batch and thread count (how each ran: ``how_lines``)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"dtconvert bench: {report['model']['name']} ({report['settings']['runs']} runs, interleaved)"))
    for column in (
        "runtime",
        "batch",
        "threads",
        "median ms",
        "p90 ms",
        "img/s",
        "× eager",
        "partitions",
        "artifact B",
        "wire B/img",
        "peak RSS Δ",
    ):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for r in report["results"]:
        table.add_row(
            escape(r["runtime"]),
            str(r["batch"]),
            str(r["threads"]),
            f"{r['median_ms']:.3f}",
            f"{r['p90_ms']:.3f}",
            f"{r['images_per_s']:,.0f}",
            "—" if r["ratio_to_eager_fp32"] is None else f"{r['ratio_to_eager_fp32']:.3f}",
            _partitions(r),
            "—" if r["artifact_bytes"] is None else f"{r['artifact_bytes']:,}",
            "—" if r["wire_bytes_per_image"] is None else f"{r['wire_bytes_per_image']:,}",
            "—" if r.get("peak_rss_increase_bytes") is None else f"{r['peak_rss_increase_bytes'] / 2**20:.1f} MiB",
        )
    for c in report["coreml"]:
        table.add_row(
            escape(f"Core ML {c['precision']} (not run)"),
            "—",
            "—",
            "—",
            "—",
            "—",
            "—",
            "—",
            f"{c['bytes']:,}",
            f"{c['wire_bytes_per_image']:,}",
            "—",
        )
    return table


def how_lines(report: dict) -> list[str]:
    """One line per runtime: how it ran at each batch size above 1 and its notes; then Core ML."""
    lines = []
    for runtime in dict.fromkeys(r["runtime"] for r in report["results"]):
        rows = [r for r in report["results"] if r["runtime"] == runtime]
        parts = [f"batch {r['batch']}: {r['how']}" for r in rows if r["batch"] > 1 and r["threads"] == rows[0]["threads"]]
        parts += list(dict.fromkeys(n for r in rows for n in r["notes"]))
        if parts:
            lines.append(f"{runtime}: " + "; ".join(parts))
    for c in report["coreml"]:
        lines.append(f"{c['artifact']}: {c['ops_total']} MIL ops; {c['note']}")
    return lines


def plot_report(report: dict, path: Path) -> None:
    """Median latency per image (p90 as the whisker) per runtime, one panel per thread count; each
    bar's foot gives its ratio to eager fp32 at the same batch and threads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads, batches = report["settings"]["threads"], report["settings"]["batches"]
    runtimes = list(dict.fromkeys(r["runtime"] for r in report["results"]))
    per_image = [r["median_ms"] / r["batch"] for r in report["results"]]
    bottom, top = min(per_image) / 4, max(r["p90_ms"] / r["batch"] for r in report["results"]) * 1.5
    fig, axes = plt.subplots(1, len(threads), figsize=(6.5 * len(threads), 4.8), squeeze=False)
    width = 0.8 / len(runtimes)
    colors = plt.get_cmap("tab10")
    for ax, t in zip(axes[0], threads, strict=True):
        for i, runtime in enumerate(runtimes):
            rows = [
                (j, r)
                for j, b in enumerate(batches)
                for r in report["results"]
                if r["runtime"] == runtime and r["batch"] == b and r["threads"] == t
            ]
            xs = [j + (i - (len(runtimes) - 1) / 2) * width for j, _ in rows]
            ys = [r["median_ms"] / r["batch"] for _, r in rows]
            errs = [(r["p90_ms"] - r["median_ms"]) / r["batch"] for _, r in rows]
            ax.bar(
                xs,
                ys,
                width,
                yerr=[[0] * len(errs), errs],
                capsize=2,
                color=colors(i % 10),
                label=runtime + (" (cloud)" if runtime == DECODER else ""),
            )
            for x, (_, r) in zip(xs, rows, strict=True):
                if r["ratio_to_eager_fp32"] is not None:  # at the foot of the bar, clear of the whiskers
                    ax.text(
                        x,
                        bottom * 1.15,
                        f"{r['ratio_to_eager_fp32']:.2f}×",
                        ha="center",
                        va="bottom",
                        rotation=90,
                        fontsize=7,
                        color="white",
                        fontweight="bold",
                    )
        ax.set_yscale("log")
        ax.set_ylim(bottom, top)
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        ax.set_ylabel("median latency per image, ms (whisker: p90)")
        ax.grid(axis="y", which="both", alpha=0.3)
    machine = report["machine"]
    fig.suptitle(
        f"dtconvert bench: {report['model']['name']} · {machine['usable_cpus']} CPUs, {machine['cpu_model']} · "
        f"{report['settings']['runs']} interleaved runs · bar labels: latency ÷ eager fp32 (same batch, threads)",
        fontsize=10,
    )
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _save_figure(fig, path: Path) -> None:
    from dtconvert.checkpoint import atomic_write

    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight"))


def write_json(report: dict, path: Path) -> None:
    from dtconvert.checkpoint import atomic_write

    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8"))


def _probe_main(argv: list[str]) -> None:
    spec, inputs_path, calls = json.loads(argv[0]), argv[1], int(argv[2])
    result = probe_memory(spec, inputs_path, calls)
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":  # the peak-memory probe: python -m dtconvert.bench SPEC INPUTS.npy CALLS
    _probe_main(sys.argv[1:])
