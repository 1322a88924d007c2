"""``dtconvert verify --explain``: where inside the device encoder an artifact parts from fp32.

For each point of the device encoder (the patch stem; in each layer the pooling, attention, MLP
and the layer's output; the bottleneck; the int8 wire as sent), the SQNR of that point's output
against the fp32 model on the same images, per runtime as far as the runtime lets one look
inside. Each target says how far (``look_inside``):

* **pt2e program** (ExecuTorch's): the quantized PyTorch module that ExecuTorch lowers, rebuilt
  with the artifact's precision and ``--keep-float`` and run in torch, every point. Static scales
  are calibrated on the verification images (the export's are not in it).
* **ExecuTorch XNNPACK**: the wire only; the encoder is one delegate call, and ExecuTorch 1.5's
  intermediate-output capture stops at a delegate's boundary.
* **LiteRT reference kernels**: every point, from the shipped .tflite with every tensor kept,
  found by the graph's structure (LayerNorms and residual adds); **LiteRT XNNPACK**: the wire.
* **MIL reference**: every point of the shipped Core ML program in dtconvert's interpreter, ops
  tied to modules by the parameters they read.

The fp32 encoder is rebuilt from the export's own TorchScript reference. The explanation names,
per runtime, the first point below the floor (:data:`POINT_MARGIN_DB` under the artifact's wire
SQNR floor: 34 dB for the default int8), the point most runtimes that see inside name first, and
what to try.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from dtconvert.metrics import sqnr_db
from dtconvert.tolerances import INT8_WIRE, bounds_row

WIRE = "wire"
EXPLAIN_IMAGES = 128  # enough for a stable SQNR per point; the numpy MIL interpreter is slow
PT2E = "pt2e program"
# A point's floor sits this far under the wire's (34 dB for the default int8). Inside the encoder
# a healthy int8 program is noisier than at its output (torch's reference int8 kernels more than
# XNNPACK's): a healthy digits model measured 43.4–148.8 dB at every point in the pt2e program, the
# MIL reference and LiteRT's reference kernels, while the planted outlier channel
# (tests/test_explain.py) measured 0.3, 20.0 and 3.2 dB at its layer (docs/verify.md). The wire
# point compares the int8 bytes sent with those the fp32 encoder would send.
POINT_MARGIN_DB = 10.0


@dataclass(frozen=True)
class Point:
    name: str  # a module of the device encoder ("layers.1.ffn"), or "wire"
    kind: str  # what computes there


@dataclass
class View:
    """One runtime's outputs at the points it can see, and the SQNR of each against fp32."""

    artifact: str
    runtime: str
    floor: float
    sqnr: dict[str, float | None] = field(default_factory=dict)  # None: exact
    sees: str = "every point"
    inside: bool = True  # sees the points inside the encoder, not only its output

    def below(self, point: Point) -> bool:
        value = self.sqnr.get(point.name)
        return value is not None and value < self.floor  # absent: not seen; None: exact

    def first_below(self, points: list[Point]) -> Point | None:
        return next((p for p in points if self.below(p)), None)


@dataclass
class Explanation:
    points: list[Point]
    views: list[View]
    images: int
    qat: bool = False  # the device artifacts carry a QAT checkpoint's learned ranges (no --keep-float for them)

    def culprit(self) -> Point | None:
        """The point named first below the floor by most views (ties: the earliest point)."""
        inside = [v for v in self.views if v.inside] or self.views
        named = [p for v in inside if (p := v.first_below(self.points)) is not None]
        if not named:
            return None
        order = {p.name: i for i, p in enumerate(self.points)}
        return min(set(named), key=lambda p: (-named.count(p), order[p.name]))

    def advice(self) -> str:
        point = self.culprit()
        if point is None:
            return "no point of the device encoder is below the floor on any runtime this host can look into"
        if point.name == WIRE:
            return "the int8 wire itself loses it: its one scale cannot hold these values (check the calibration images)"
        if self.qat:
            return (
                f"first below the floor: {point.name} ({point.kind}); the ranges were learned with every layer quantized, so "
                "--keep-float does not apply: train again with a larger qat_consistency or qat_epochs, or export --precision int8"
            )
        return (
            f"first below the floor: {point.name} ({point.kind}); try: dtconvert export CHECKPOINT --keep-float {point.name}, "
            "or --precision auto"
        )

    def to_json(self) -> dict:
        culprit = self.culprit()
        return {
            "images": self.images,
            "points": [{"name": p.name, "kind": p.kind} for p in self.points],
            "views": [
                {
                    "artifact": v.artifact,
                    "runtime": v.runtime,
                    "sees": v.sees,
                    "inside": v.inside,
                    "floor_db": v.floor,
                    "sqnr_db": v.sqnr,
                    "first_below": (p.name if (p := v.first_below(self.points)) else None),
                }
                for v in self.views
            ],
            "culprit": culprit.name if culprit else None,
            "advice": self.advice(),
        }


def points_of(encoder) -> list[Point]:
    """The points of a device encoder that ``--explain`` measures, in the order data flows."""
    from torch import nn

    found = [Point("patch_embed", "patch stem (conv)")]
    for i, layer in enumerate(encoder.layers):
        if layer.pool is not None:
            found.append(Point(f"layers.{i}.pool", "pooling"))
        found += [
            Point(f"layers.{i}.attn", "attention"),
            Point(f"layers.{i}.ffn", "MLP (linear, ReLU, linear)"),
            Point(f"layers.{i}", "layer output (LayerNorm)"),
        ]
    if isinstance(encoder.bottleneck, nn.Linear):
        found.append(Point("bottleneck", "bottleneck (linear)"))
    return [*found, Point(WIRE, "the int8 wire as sent")]


def reference_encoder(export_dir: Path, manifest: dict):
    """The fp32 device encoder as a module, rebuilt from the export's own TorchScript reference."""

    from dtconvert.errors import UserError
    from dtconvert.model import Architecture, DeviceEncoder, ModelConfig
    from dtconvert.targets.torchscript import load_decoder

    recipe = manifest["data"]["recipe"]
    try:
        config = ModelConfig.from_dict(
            {
                **{f.name: recipe[f.name] for f in fields(Architecture)},
                "tasks": [[t["name"], len(t["labels"])] for t in manifest["tasks"]],
            }
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{export_dir}: the manifest's recipe does not describe a model ({e})") from None
    reference = next(e for e in manifest["artifacts"] if e["part"] == "reference")
    state = load_decoder(export_dir / reference["path"]).state_dict()
    encoder = DeviceEncoder(config)
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    return encoder.eval().requires_grad_(False)


def fp32_values(encoder, images: np.ndarray, points: list[Point]) -> dict[str, np.ndarray]:
    """The fp32 encoder's output at every point (the wire point: its float output)."""
    import torch

    values: dict[str, np.ndarray] = {}  # hooks fill it
    modules = dict(encoder.named_modules())
    hooks = [
        modules[p.name].register_forward_hook(lambda _m, _i, out, name=p.name: values.__setitem__(name, out.numpy()))
        for p in points
        if p.name != WIRE
    ]
    try:
        with torch.no_grad():
            values[WIRE] = encoder(torch.from_numpy(images)).numpy()
    finally:
        for hook in hooks:
            hook.remove()
    return values


def _sqnr(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float | None]:
    """SQNR per point the runtime showed; None where it is exact (JSON has no infinity)."""
    values = {name: _aligned_sqnr(got[name], want[name]) for name in want if name in got}
    return {name: (None if np.isposinf(v) else round(v, 2)) for name, v in values.items() if not np.isnan(v)}


def _aligned_sqnr(got: np.ndarray, want: np.ndarray) -> float:
    """SQNR of a point, in whichever layout the runtime holds a token tensor: a converter may keep a
    (B, T, D) tensor as (B, D, T) inside the graph (onnx2tf does, and where T = D the shape cannot
    tell). Of the two layouts the one that matches is taken; the other is uncorrelated (about −3 dB)."""
    candidates = [g for g in (got, got.swapaxes(-1, -2) if got.ndim == 3 else None) if g is not None and g.shape == want.shape]
    return max((sqnr_db(g, want) for g in candidates), default=float("nan"))


def _with_wire(values: dict[str, np.ndarray], wire: np.ndarray, scale: float, zero_point: int) -> dict[str, np.ndarray]:
    """The wire point: the float wire after the device's int8 quantization, as the cloud reads it."""
    from dtconvert.wire import dequantize_wire, quantize_wire

    return {**values, WIRE: dequantize_wire(quantize_wire(wire, scale, zero_point), scale, zero_point)}


def explain_export(export_dir: Path, manifest: dict, images: np.ndarray, tolerances, log=print) -> Explanation:
    """The per-point SQNR of every device artifact on ``images`` (at most :data:`EXPLAIN_IMAGES`)."""
    import torch

    from dtconvert.targets import RUNTIMES, load_target, looped

    images = np.ascontiguousarray(images[:EXPLAIN_IMAGES])
    encoder = reference_encoder(export_dir, manifest)
    points = points_of(encoder)
    names = [p.name for p in points if p.name != WIRE]
    scale, zero_point, precision = manifest["wire"]["scale"], manifest["wire"]["zero_point"], manifest["precision"]
    want = fp32_values(encoder, images, points)
    want = _with_wire(want, want[WIRE], scale, zero_point)
    views = []
    for entry in (e for e in manifest["artifacts"] if e["part"] == "device"):
        name, target, path = entry["path"], load_target(entry["target"]), export_dir / entry["path"]
        keep = tuple((entry.get("keep_float") or {}).get("patterns") or ())
        floor = float(
            tolerances.get(entry["target"], bounds_row(entry, precision))["min_wire_sqnr_db"] or INT8_WIRE["min_wire_sqnr_db"] or 0.0
        )
        floor -= POINT_MARGIN_DB
        with torch.no_grad():
            program = getattr(target, "program_points", lambda *a: None)(encoder, images, names, precision, keep)
        if program is not None:
            views.append(View(name, PT2E, floor, _sqnr(_with_wire(program, program[WIRE], scale, zero_point), want)))
            log(f"✓ {PT2E} of {name}: every point")
        for runtime in target.runtimes():
            try:
                with torch.no_grad():
                    got = target.look_inside(path, runtime, encoder, images, names, precision, keep)
                    inside = isinstance(got, dict)
                    if not isinstance(got, dict):
                        sees, wire = got, looped(target.runner(path, runtime))(images)
                        got = {WIRE: wire}
                    else:
                        sees = "every point"
            except Exception as e:  # noqa: BLE001  the runtime cannot run this artifact (the gate reported why)
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                views.append(View(name, RUNTIMES[runtime], floor, {}, f"nothing: it could not run the artifact ({reason})", False))
                log(f"✗ {RUNTIMES[runtime]} of {name}: could not run it")
                continue
            got.setdefault(names[-1], got[WIRE])  # the last point is the encoder's output
            views.append(View(name, RUNTIMES[runtime], floor, _sqnr(_with_wire(got, got[WIRE], scale, zero_point), want), sees, inside))
            log(f"✓ {RUNTIMES[runtime]} of {name}: {sees.split(':')[0]}")
    qat = any((e.get("quantization") or {}).get("qat") for e in manifest["artifacts"] if e["part"] == "device")
    return Explanation(points, views, len(images), qat=qat)
