"""Timing what a plan names: building its call, interleaved timing, summaries, and the peak-memory probe.

A call is built from a plain ``spec`` (kind, path, batch, loop, extra) so that the memory probe
can rebuild it in a fresh process: ``python -m dtconvert.bench SPEC INPUTS.npy CALLS`` (see
``dtconvert/bench/__main__.py``). Device artifacts run in the runner their target gives
(:func:`dtconvert.targets.load_target`); the eager encoder and the TorchScript models are not
device runtimes and are loaded here.

Peak memory: the kernel's resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` just before loading) minus the resident set just before loading.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

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
# Kinds of call that are a device runtime: the kind is the runtime's key in dtconvert.targets.RUNTIMES.
DEVICE_KINDS = ("executorch", "litert")


def target_of(kind: str) -> str:
    """The target whose primary runtime is ``kind`` ("litert" → "tflite")."""
    from dtconvert.targets import PRIMARY_RUNTIME

    return next(target for target, runtime in PRIMARY_RUNTIME.items() if runtime == kind)


def build_call(spec: dict, threads: int, inputs: np.ndarray) -> Callable[[], np.ndarray]:
    """Load what ``spec`` names and return a function running one batch of ``inputs``.

    Global thread settings (torch, ExecuTorch's threadpool) are the caller's; LiteRT takes
    ``threads`` per interpreter. ``inputs`` holds at least ``spec['batch']`` preprocessed images
    (or int8 wire tensors for the decoder)."""
    kind, batch = spec["kind"], spec["batch"]
    x = np.ascontiguousarray(inputs[:batch])
    if kind in DEVICE_KINDS:
        return _device_call(spec, threads, x)
    import torch

    if kind == "eager":
        return _eager_call(spec["path"], torch.from_numpy(x.copy()))
    from dtconvert.targets.torchscript import load_decoder

    if kind == "torchscript-encoder":
        reference = load_decoder(Path(spec["path"]))
        tensor = torch.from_numpy(x.copy())

        def run_reference() -> np.ndarray:
            with torch.inference_mode():
                return reference(tensor)[0].numpy()

        return run_reference
    if kind == "decoder":
        decoder = load_decoder(Path(spec["path"]))
        wire = torch.from_numpy(x.copy())
        scale = torch.tensor([spec["extra"]["scale"]], dtype=torch.float32)
        zero_point = torch.tensor([spec["extra"]["zero_point"]], dtype=torch.int32)

        def run_decoder() -> np.ndarray:
            with torch.inference_mode():
                return decoder(wire, scale, zero_point)[0].numpy()

        return run_decoder
    raise ValueError(f"unknown runtime kind {kind!r}")


def _device_call(spec: dict, threads: int, x: np.ndarray) -> Callable[[], np.ndarray]:
    """The target's runner for the artifact: one call at the batch, or (``loop``) one call per image.

    A re-lowered ``.pte`` runs the batch it was lowered at; LiteRT resizes its interpreter to it."""
    from dtconvert.targets import load_target

    target = load_target(target_of(spec["kind"]))
    path = Path(spec["path"])
    if spec["loop"]:
        run = target.runner(path, spec["kind"], threads=threads)
        rows = [x[i : i + 1] for i in range(len(x))]  # sliced once, outside the timed call
        return lambda: np.concatenate([run(row) for row in rows])
    run = target.runner(path, spec["kind"], threads=threads, batch=len(x))
    return lambda: run(x)


def _eager_call(checkpoint: str, tensor) -> Callable[[], np.ndarray]:
    """The checkpoint's fp32 ``DeviceEncoder`` in eager PyTorch: the baseline every ratio divides by."""
    import torch

    from dtconvert.checkpoint import load_checkpoint, model_config_of
    from dtconvert.model import DeviceEncoder

    ckpt = load_checkpoint(checkpoint)
    encoder = DeviceEncoder(model_config_of(ckpt, checkpoint))
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")})
    encoder.eval()
    del ckpt

    def run_eager() -> np.ndarray:
        with torch.inference_mode():
            return encoder(tensor).numpy()

    return run_eager


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


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


# ---- peak memory, in a fresh process ----------------------------------------------------------


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
        from dtconvert.targets.executorch import set_threads

        set_threads(1)
    if spec["kind"] in DEVICE_KINDS:
        from dtconvert.targets import load_target

        load_target(target_of(spec["kind"]))  # dtconvert's target module, not its runtime: imported outside the window
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


def measure_memory(spec: dict, inputs_path: Path, calls: int) -> dict:
    """``probe_memory`` of ``spec`` in a subprocess; a failure is reported, not raised."""
    argv = [sys.executable, "-m", "dtconvert.bench", json.dumps(spec), str(inputs_path), str(calls)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"peak_rss_increase_bytes": None, "peak_rss_bytes": None, "measures": f"probe failed: {tail[:200]}"}
    return json.loads(lines[-1])


def probe_main(argv: list[str]) -> None:
    """The probe process's entry: ``SPEC INPUTS.npy CALLS`` in, one JSON line out."""
    spec, inputs_path, calls = json.loads(argv[0]), argv[1], int(argv[2])
    result = probe_memory(spec, inputs_path, calls)
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
