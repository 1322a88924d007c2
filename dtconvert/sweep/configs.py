"""Each split configuration trained, exported to ExecuTorch and measured: accuracy, bytes, parameters, FLOPs.

Held-out accuracy per task of the fp32 model (PyTorch, unsplit) and end to end through ExecuTorch:
int8 wire: int8 ``.pte`` → int8 wire with the manifest's scale and zero point → TorchScript
decoder, as ``dtconvert verify`` measures it (read from the export's own verification); fp32
wire: fp32 ``.pte`` (in the runner the ExecuTorch target gives) → float wire → the checkpoint's
decoder in PyTorch.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dtconvert.sweep.parse import SplitConfig

FLOPS_COUNTED = (
    "multiply-adds × 2 of convolution, linear and matrix-product ops (torch.utils.flop_counter.FlopCounterMode) "
    "for one image; softmax, LayerNorm, additions and pooling are not counted"
)


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

    from dtconvert.targets import load_target, looped

    run = looped(load_target("executorch").runner(pte))
    with torch.no_grad():
        logits = model.decode(torch.from_numpy(run(images)))
    return _accuracy({t: v.numpy() for t, v in logits.items()}, labels, tasks)


def _silent_console():
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=False)


def train_and_export(
    recipe, configs: list[SplitConfig], wires: list[str], epochs: int, calib: str | None, staging: Path, log: Callable[[str], None]
) -> tuple[list[dict], dict]:
    """One row per (configuration, wire) and each configuration's checkpoint, by configuration id."""
    rows, checkpoints = [], {}
    for n, c in enumerate(configs, 1):
        step = f"[{n}/{len(configs)}] pool_at {c.pool_text}, bottleneck {c.bottleneck}"
        folder = staging / "configs" / c.id
        log(f"{step}: training {epochs} epoch(s)")
        trained = _train(dataclasses.replace(recipe, pool_at=list(c.pool_at), bottleneck=c.bottleneck, epochs=epochs), folder)
        checkpoints[c.id] = trained["ckpt"]
        for wire in wires:
            log(f"{step}: ExecuTorch {wire} export" + (" and verification" if wire == "int8" else " and held-out evaluation"))
            rows.append(_export_row(c, wire, trained, calib, folder, staging))
            tokens, width = rows[-1]["wire_shape"]
            log(
                f"{step}:   {wire} wire {tokens}×{width} = {rows[-1]['wire_bytes_per_image']:,} B/image: "
                + ", ".join(
                    f"{t} fp32 {rows[-1]['fp32_accuracy'][t]:.2%} → ExecuTorch {rows[-1]['device_accuracy'][t]:.2%}"
                    for t in trained["tasks"]
                )
            )
    return rows, checkpoints


def _train(recipe, folder: Path) -> dict:
    """Train one configuration and measure what does not depend on the wire: fp32 accuracy,
    device parameters and FLOPs."""
    import torch

    from dtconvert.checkpoint import build_model, load_checkpoint
    from dtconvert.data import checkpoint_images
    from dtconvert.train import train

    start = time.perf_counter()
    train(recipe, folder, console=_silent_console(), show_progress=False)
    train_seconds = time.perf_counter() - start
    ckpt_path = folder / "ckpt.pt"
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt, ckpt_path)
    tasks = model.cfg.task_names
    images, labels = checkpoint_images(ckpt, "heldout")
    with torch.no_grad():
        fp32_logits = {t: v.numpy() for t, v in model(torch.from_numpy(images)).items()}
    return {
        "ckpt": ckpt,
        "ckpt_path": ckpt_path,
        "model": model,
        "tasks": tasks,
        "images": images,
        "labels": labels,
        "fp32_accuracy": _accuracy(fp32_logits, labels, tasks),
        "params": sum(p.numel() for p in model.encoder.parameters()),
        "flops": device_flops(model.encoder, model.cfg),
        "train_seconds": train_seconds,
    }


def _export_row(c: SplitConfig, wire: str, trained: dict, calib: str | None, folder: Path, staging: Path) -> dict:
    """Export the configuration's encoder to ExecuTorch at the wire's precision and measure it end to end."""
    from dtconvert.export import run_export
    from dtconvert.targets import PRIMARY_RUNTIME, runtime_label

    tasks, fp32_accuracy = trained["tasks"], trained["fp32_accuracy"]
    export_dir, manifest = run_export(
        trained["ckpt_path"],
        ["executorch"],
        precision=wire,
        calib=calib,
        out=folder / f"export-{wire}",
        console=_silent_console(),
        verify=wire == "int8",
    )
    pte = next(a for a in manifest["artifacts"] if a["target"] == "executorch")
    if wire == "int8":
        per_task = manifest["verification"]["metrics"][pte["path"]][runtime_label(PRIMARY_RUNTIME["executorch"])]["tasks"]
        device_accuracy = {t: float(per_task[t]["accuracy"]) for t in tasks}
        verified: bool | None = bool(manifest["verification"]["passed"])
        path = "ExecuTorch int8 .pte → int8 wire (manifest scale, zero point) → TorchScript decoder"
    else:
        device_accuracy = _fp32_wire_accuracy(trained["model"], export_dir / pte["path"], trained["images"], trained["labels"], tasks)
        verified = None
        path = "ExecuTorch fp32 .pte → fp32 wire → PyTorch decoder"
    tokens, width = trained["model"].cfg.wire_shape
    return {
        "config": c.id,
        "pool_at": list(c.pool_at),
        "pool_stages": len(c.pool_at),
        "bottleneck": c.bottleneck,
        "wire": wire,
        "wire_shape": [tokens, width],
        "wire_bytes_per_image": tokens * width * (1 if wire == "int8" else 4),
        "device_params": int(trained["params"]),
        "device_flops": trained["flops"],
        "device_precision": wire,
        "pte": str((export_dir / pte["path"]).relative_to(staging)),
        "pte_bytes": int(pte["bytes"]),
        "heldout_images": len(trained["images"]),
        "fp32_accuracy": fp32_accuracy,
        "device_accuracy": device_accuracy,
        "accuracy_change_points": {t: round(100.0 * (device_accuracy[t] - fp32_accuracy[t]), 4) for t in tasks},
        "device_path": path,
        "verified": verified,
        "train_seconds": round(trained["train_seconds"], 2),
        "latency": {},
    }
