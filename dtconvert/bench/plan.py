"""What bench runs at each batch size: the fp32 baseline, every device artifact, the cloud decoder.

The exported device artifacts are fixed at batch 1 (onnx2tf gave wrong numbers for a dynamic
batch). Above batch 1, ExecuTorch is re-lowered at that batch from the checkpoint, with the same
quantizer and calibration images as the export, and checked against the shipped ``.pte``;
LiteRT's input is resized only if the resized interpreter agrees with batch-1 calls, otherwise
the batch runs as B batch-1 calls. Every plan says which it was (``how``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dtconvert.bench.measure import build_call
from dtconvert.errors import UserError, unloadable

EAGER = "PyTorch eager fp32"
TORCHSCRIPT_ENCODER = "TorchScript fp32 (export's reference encoder)"
DECODER = "TorchScript cloud decoder"
RESIZE_TOLERANCE = 1e-4  # a resized LiteRT interpreter must match batch-1 calls this closely


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


def spec_of(kind: str, path: Path, batch: int = 1, loop: bool = False) -> dict:
    """The spec of a device artifact's call, outside any plan (checks and comparisons)."""
    return {"kind": kind, "path": str(path), "batch": batch, "loop": loop, "extra": {}}


def batch_inputs(images: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` images, repeating the export's golden inputs when it has fewer."""
    return np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])).astype(images.dtype))


def golden_images(export_dir: Path) -> np.ndarray:
    return np.load(export_dir / "golden" / "input.npy").astype(np.float32)


# ---- the checkpoint and its calibration ------------------------------------------------------


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
    from dtconvert.data import checkpoint_images, folder_images

    calibration = manifest["wire"]["calibration"]
    if calibration.get("source") == "folder":
        return folder_images(Path(calibration["path"]), manifest["device_input"]["preprocessing"])
    images, _ = checkpoint_images(ckpt, "train", int(calibration["images"]))
    return images


def lower_executorch(
    ckpt: dict, precision: str, batch: int, calibration: np.ndarray, path: Path, quantized=None, keep_float: tuple[str, ...] = ()
):
    """Lower the checkpoint's encoder to an XNNPACK ``.pte`` at a fixed ``batch`` exactly as export
    does (the ExecuTorch target's own ``prepare`` and ``lower``; static scales from the same images
    in the same order, traced with a dynamic batch so one calibration serves every batch size; the
    export's ``--keep-float`` modules float). ``quantized`` reuses a module prepared by an earlier
    call; returns the prepared module."""
    import torch

    from dtconvert.checkpoint import build_model
    from dtconvert.targets import executorch as et

    encoder = build_model(ckpt).encoder.eval()
    example = torch.from_numpy(np.ascontiguousarray(np.resize(calibration, (batch, *calibration.shape[1:]))))
    if quantized is None:
        quantized = et.prepare(encoder, example[:1], calibration, precision, any_batch=precision != "fp32", keep_float=keep_float)
    path.write_bytes(et.lower(quantized, example).to_executorch().buffer)
    return quantized


# ---- planning ----------------------------------------------------------------------------------


def plan_runs(
    exports: list[tuple[Path, dict]],
    ckpt: dict | None,
    ckpt_path: Path | None,
    batches: list[int],
    work: Path,
    log: Callable[[str], None],
) -> tuple[dict[int, list[Plan]], list[dict], np.ndarray | None]:
    """What runs at each batch size: baseline, each device artifact, the cloud decoder; plus the
    Core ML rows (not timed here) and the calibration images used to re-lower, if any."""
    first_dir, first = exports[0]
    plans = {b: [_baseline(first_dir, first, ckpt_path, b)] for b in batches}
    coreml = []
    relowering = Relowering(ckpt, work, golden_images(first_dir), log)
    for export_dir, manifest in exports:
        for entry in manifest["artifacts"]:
            if entry["part"] != "device":
                continue
            if entry["target"] == "coreml":
                coreml.append(_coreml_row(export_dir, manifest, entry))
                continue
            for plan in _device_plans(export_dir, manifest, entry, batches, relowering):
                plans[plan.batch].append(plan)
    decoder = next((e for e in first["artifacts"] if e["target"] == "torchscript"), None)
    if decoder is not None and (work / f"wire_b{batches[0]}.npy").is_file():
        for b in batches:
            plans[b].append(_decoder(first_dir, first, decoder, b))
    for b in batches:
        _make_keys_unique(plans[b])
    return plans, coreml, relowering.calibration


def _baseline(first_dir: Path, first: dict, ckpt_path: Path | None, batch: int) -> Plan:
    """Eager fp32 from the checkpoint; without it, the export's traced fp32 reference encoder."""
    if ckpt_path is not None:
        return Plan(EAGER, "baseline", "eager", "fp32", batch, str(ckpt_path), f"one call at batch {batch}")
    reference = next(e for e in first["artifacts"] if e["target"] == "reference")
    path = str(first_dir / reference["path"])
    return Plan(TORCHSCRIPT_ENCODER, "baseline", "torchscript-encoder", "fp32", batch, path, f"one call at batch {batch}")


def _coreml_row(export_dir: Path, manifest: dict, entry: dict) -> dict:
    ops = entry.get("details", {}).get("ops", {})
    return {
        "artifact": entry["path"],
        "export_dir": str(export_dir),
        "precision": entry["precision"],
        "bytes": entry["bytes"],
        "ops": ops,
        "ops_total": int(sum(ops.values())),
        "wire_bytes_per_image": manifest["wire"]["bytes_per_image"],
        "timed": False,
        "note": f"not timed: Core ML predicts only on macOS (this host: {platform.system()}); size and MIL op counts from the manifest",
    }


def _device_plans(export_dir: Path, manifest: dict, entry: dict, batches: list[int], relowering: Relowering) -> list[Plan]:
    """One plan per batch for a delegating artifact; loaded and run once first, so that a broken
    file is reported before any timing starts."""
    from dtconvert.targets import PRIMARY_RUNTIME, RUNTIMES, measure_delegation

    target, path = entry["target"], export_dir / entry["path"]
    kind = PRIMARY_RUNTIME[target]  # the runtime that times the target: its key names the call's kind
    label = f"{RUNTIMES[kind]} {entry['precision']}"
    try:
        shipped = measure_delegation(path, target)
        build_call(spec_of(kind, path), 1, relowering.images)()
    except Exception as e:  # noqa: BLE001  bytes that match the manifest but the runtime cannot read (it raises anything)
        raise unloadable(path, RUNTIMES[kind], e) from None
    plans = []
    for b in batches:
        plan = Plan(
            label,
            "device",
            kind,
            entry["precision"],
            b,
            str(path),
            "one call at batch 1",
            artifact=entry["path"],
            artifact_bytes=entry["bytes"],
            export_dir=str(export_dir),
            notes=[structure_note(kind, shipped)],
            delegation=shipped,
        )
        if b > 1 and kind == "executorch":
            relowering.apply(plan, manifest, path)
        elif b > 1:
            _resize_or_loop(plan, path, batch_inputs(relowering.images, b))
        plans.append(plan)
    return plans


class Relowering:
    """ExecuTorch above batch 1: re-lowered from the checkpoint when it and the export's calibration
    images are at hand (each artifact quantized once, for every batch size), else B batch-1 calls."""

    def __init__(self, ckpt: dict | None, work: Path, images: np.ndarray, log: Callable[[str], None]) -> None:
        self.ckpt, self.work, self.log = ckpt, work, log
        self.images = images  # the first export's golden inputs: every check runs them
        self.calibration: np.ndarray | None = None
        self.problem: str | None = None
        self.quantized: dict = {}  # artifact → its prepared (for int8: quantized) program at any batch

    def apply(self, plan: Plan, manifest: dict, shipped: Path) -> None:
        b, precision = plan.batch, plan.precision
        if self.ckpt is not None and self.calibration is None and self.problem is None and precision != "fp32":
            try:
                self.calibration = calibration_for(self.ckpt, manifest)
            except UserError as e:
                self.problem = str(e)
        if self.ckpt is None or (precision != "fp32" and self.calibration is None):
            why = "no checkpoint" if self.ckpt is None else f"calibration images not available ({self.problem})"
            plan.loop, plan.how = True, f"{b} × batch-1 calls of the shipped .pte ({why})"
            return
        from dtconvert.targets import measure_delegation

        self.log(f"lowering {plan.key} at batch {b} from the checkpoint")
        relowered = self.work / f"et_{len(self.quantized)}_{precision}_b{b}.pte"
        calibration = self.calibration if self.calibration is not None else self.images
        previous = self.quantized.get(str(shipped))
        entry: dict = next((e for e in manifest["artifacts"] if e["path"] == shipped.name), {})
        keep = tuple((entry.get("keep_float") or {}).get("patterns") or ())
        self.quantized[str(shipped)] = lower_executorch(self.ckpt, precision, b, calibration, relowered, previous, keep)
        plan.path = str(relowered)
        plan.how = f"re-lowered at batch {b} from the checkpoint"
        plan.delegation = measure_delegation(relowered, "executorch")
        plan.notes.append(f"at batch {b}: {structure_note('executorch', plan.delegation)}")
        plan.notes.append(_compare_relowered(shipped, relowered, batch_inputs(self.images, b)))


def _resize_or_loop(plan: Plan, path: Path, images: np.ndarray) -> None:
    ok, detail = _litert_resize_works(path, images)
    if ok:
        plan.how = f"input resized to batch {plan.batch} ({detail})"
    else:
        plan.loop, plan.how = True, f"{plan.batch} × batch-1 calls"
        plan.notes.append(f"resizing the interpreter to batch {plan.batch} was not used: {detail}")


def _decoder(export_dir: Path, manifest: dict, decoder: dict, batch: int) -> Plan:
    return Plan(
        DECODER,
        "cloud",
        "decoder",
        "fp32",
        batch,
        str(export_dir / decoder["path"]),
        f"one call at batch {batch}",
        artifact=decoder["path"],
        artifact_bytes=decoder["bytes"],
        export_dir=str(export_dir),
        extra={"scale": manifest["wire"]["scale"], "zero_point": manifest["wire"]["zero_point"]},
    )


def _make_keys_unique(plans: list[Plan]) -> None:
    """One label per runtime and batch, even when two exports hold the same target and precision."""
    seen: dict[str, int] = {}
    for plan in plans:
        seen[plan.key] = seen.get(plan.key, 0) + 1
        if seen[plan.key] > 1:
            assert plan.export_dir is not None  # only device and decoder plans repeat, and they name their export
            plan.key = f"{plan.key} ({Path(plan.export_dir).name})"


def structure_note(kind: str, delegation: dict) -> str:
    """How much of the artifact its runtime's XNNPACK delegate takes: what explains a slow artifact."""
    n = delegation["partitions"]
    unit = "delegate call" if kind == "executorch" else "partition"
    outside = ", ".join(f"{op} {count}" for op, count in delegation["ops_outside_delegate"].items()) or "none"
    return f"{n} XNNPACK {unit}{'s' if n != 1 else ''}; ops outside the delegate: {outside}"


def _compare_relowered(shipped: Path, relowered: Path, images: np.ndarray) -> str:
    """Max abs difference between the re-lowered batch program and batch-1 calls of the shipped .pte."""
    batch = len(images)
    one = build_call(spec_of("executorch", shipped, batch, loop=True), 1, images)()
    many = build_call(spec_of("executorch", relowered, batch), 1, images)()
    return f"re-lowered program vs {batch} batch-1 calls of the shipped .pte: max abs difference {float(np.abs(one - many).max()):.3g}"


def _litert_resize_works(path: Path, images: np.ndarray) -> tuple[bool, str]:
    """Whether LiteRT runs the batch-1 model resized to the batch of ``images`` with the same numbers as batch-1 calls."""
    batch = len(images)
    try:
        resized = build_call(spec_of("litert", path, batch), 1, images)()
    except Exception as e:  # noqa: BLE001  the delegate refuses the new shape (LiteRT raises anything): a reported 'no'
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
    looped = build_call(spec_of("litert", path, batch, loop=True), 1, images)()
    if resized.shape != looped.shape:
        return False, f"resized output shape {list(resized.shape)} instead of {list(looped.shape)}"
    error = float(np.abs(resized - looped).max())
    if error > RESIZE_TOLERANCE:
        return False, f"resized interpreter differs from batch-1 calls by max abs {error:.3g}"
    return True, f"checked against batch-1 calls: max abs {error:.3g}"
