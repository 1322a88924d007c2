"""``dtconvert verify --explain``: where inside the device encoder an artifact parts from fp32.

For each point of the device encoder (the patch stem; in each layer the pooling, attention, MLP
and the layer's output; the bottleneck; the int8 wire), the SQNR of that point's output against
the fp32 model on the same images, per runtime as far as the runtime lets one look inside:

* **pt2e program**: the quantized PyTorch module that ExecuTorch lowers, rebuilt from the
  export's own fp32 reference with the artifact's precision and ``--keep-float`` and run in
  torch, every point visible. Static scales are calibrated on the verification images (the
  export's calibration images are not in the export), so for ``int8-static`` it approximates.
* **MIL reference**: every op of the shipped Core ML program in dtconvert's numpy interpreter;
  an op is tied to a module by the torch.export node coremltools converted it from.
* **ExecuTorch XNNPACK** and **LiteRT XNNPACK**: the shipped artifact's wire only. The encoder
  is one XNNPACK delegate call, and ExecuTorch 1.5's intermediate-output capture stops at a
  delegate's boundary (it sees the call as one op); LiteRT's tensors keep onnx2tf's names, which
  name no module.

The explanation names, per runtime, the first point below the floor (:data:`POINT_MARGIN_DB`
under the artifact's wire SQNR floor: 34 dB for the default int8) and what to try.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from dtconvert.metrics import sqnr_db
from dtconvert.tolerances import INT8_WIRE

WIRE = "wire"
EXPLAIN_IMAGES = 128  # enough for a stable SQNR per point; the numpy MIL interpreter is slow
PT2E = "pt2e program"
# A point's floor sits this far under the wire's (34 dB for the default int8). Inside the encoder
# a healthy int8 program is noisier than at its output (torch's reference int8 kernels more than
# XNNPACK's): a healthy digits model measured 43.6–69.5 dB at every point in the pt2e program and
# the MIL reference, while the planted outlier channel (tests/test_explain.py) measured 0.3 and
# 20.0 dB at its layer. The wire point compares the int8 bytes sent with those the fp32 encoder
# would send.
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
    sqnr: dict[str, float] = field(default_factory=dict)
    sees: str = "every point"
    inside: bool = True  # sees the points inside the encoder, not only its output

    def first_below(self, points: list[Point]) -> Point | None:
        return next((p for p in points if p.name in self.sqnr and self.sqnr[p.name] < self.floor), None)


@dataclass
class Explanation:
    points: list[Point]
    views: list[View]
    images: int

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


def _sqnr(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: round(sqnr_db(got[name], want[name]), 2) for name in want if name in got and got[name].shape == want[name].shape}


def _with_wire(values: dict[str, np.ndarray], wire: np.ndarray, scale: float, zero_point: int) -> dict[str, np.ndarray]:
    """The wire point: the float wire after the device's int8 quantization, as the cloud reads it."""
    from dtconvert.wire import dequantize_wire, quantize_wire

    return {**values, WIRE: dequantize_wire(quantize_wire(wire, scale, zero_point), scale, zero_point)}


def pt2e_values(encoder, images: np.ndarray, points: list[Point], precision: str, keep_float: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every point of the quantized module ExecuTorch lowers, run in torch one image at a time."""
    import torch

    from dtconvert.rewrite import layer_of
    from dtconvert.targets.executorch import prepare

    example = torch.from_numpy(images[:1])
    module = prepare(encoder, example, images, precision, keep_float=keep_float)
    assert isinstance(module, torch.fx.GraphModule), "an int8 precision lowers a pt2e GraphModule"
    nodes = list(module.graph.nodes)
    last = _last_nodes(nodes, points, layer_of, _node_shapes(module, example))
    captured: dict[str, list[np.ndarray]] = {name: [] for name in last}
    wanted = {node: name for name, node in last.items()}

    class Capture(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted:
                captured[wanted[n.name]].append(out.numpy())
            return out

    with torch.no_grad():
        wires = [Capture(module).run(torch.from_numpy(images[i : i + 1])).numpy() for i in range(len(images))]
    values = {name: np.concatenate(v) for name, v in captured.items()}
    values[WIRE] = np.concatenate(wires)
    return values


def _node_shapes(module, example) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Node name → (output shape, is float) from one run."""
    import torch

    shapes: dict[str, tuple[tuple[int, ...], bool]] = {}

    class Shapes(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n.name] = (tuple(out.shape), out.is_floating_point())
            return out

    Shapes(module).run(example)
    return shapes


def _last_nodes(nodes, points: list[Point], layer_of, shapes: dict) -> dict[str, str]:
    """Point → the last float node computed inside it (its output as the next module reads it)."""
    last = {}
    for point in points:
        if point.name == WIRE:
            continue
        inside = [
            n.name for n in nodes if n.op == "call_function" and n.name in shapes and shapes[n.name][1] and _inside(layer_of(n), point.name)
        ]
        if inside:
            last[point.name] = inside[-1]
    return last


def _inside(layer: str, point: str) -> bool:
    return layer == point or layer.startswith(point + ".")


def mil_values(path: Path, encoder, images: np.ndarray, points: list[Point], precision: str, keep_float: tuple[str, ...]):
    """Every point of the shipped Core ML program, run in the MIL reference interpreter."""
    import torch

    from dtconvert.mil_reference import MILReference, load_program
    from dtconvert.targets import INPUT_NAME, OUTPUT_NAME
    from dtconvert.targets.coreml import converted_program, mil_layers

    program = converted_program(encoder, torch.from_numpy(images[:1]), images, precision, keep_float)
    layers = mil_layers(load_program(path), program)
    reference = MILReference(path)
    per_op = reference.every_op({INPUT_NAME: images[:1]})
    order = list(per_op)
    last = {}
    for point in points:
        inside = [op for op in order if op in layers and _inside(layers[op], point.name) and per_op[op].dtype.kind == "f"]
        if inside and point.name != WIRE:
            last[point.name] = inside[-1]
    captured: dict[str, list[np.ndarray]] = {name: [] for name in last}
    wires = []
    for i in range(len(images)):
        out = reference.every_op({INPUT_NAME: images[i : i + 1]})
        for name, op in last.items():
            captured[name].append(out[op].astype(np.float32))
        wires.append(out[OUTPUT_NAME])
    return {**{name: np.concatenate(v) for name, v in captured.items()}, WIRE: np.concatenate(wires)}


def explain_export(export_dir: Path, manifest: dict, images: np.ndarray, tolerances, log=print) -> Explanation:
    """The per-point SQNR of every device artifact on ``images`` (at most :data:`EXPLAIN_IMAGES`)."""
    from dtconvert.targets import RUNTIMES, load_target, looped

    images = np.ascontiguousarray(images[:EXPLAIN_IMAGES])
    encoder = reference_encoder(export_dir, manifest)
    points = points_of(encoder)
    want = fp32_values(encoder, images, points)
    want = _with_wire(want, want[WIRE], manifest["wire"]["scale"], manifest["wire"]["zero_point"])
    scale, zero_point = manifest["wire"]["scale"], manifest["wire"]["zero_point"]
    precision = manifest["precision"]
    last_module = points[-2].name
    views = []
    for entry in (e for e in manifest["artifacts"] if e["part"] == "device"):
        name, target = entry["path"], entry["target"]
        keep = tuple((entry.get("keep_float") or {}).get("patterns") or ())
        floor = float(tolerances.get(target, precision)["min_wire_sqnr_db"] or INT8_WIRE["min_wire_sqnr_db"] or 0.0) - POINT_MARGIN_DB
        if target == "executorch" and precision != "fp32":
            got = pt2e_values(encoder, images, points, precision, keep)
            views.append(View(name, PT2E, floor, _sqnr(_with_wire(got, got[WIRE], scale, zero_point), want)))
            log(f"✓ {PT2E} of {name}: every point")
        for runtime in load_target(target).runtimes():
            path = export_dir / name
            if runtime == "mil-reference":
                got = mil_values(path, encoder, images, points, precision, keep)
                sees = "every op of the ML program"
            else:
                wire = looped(load_target(target).runner(path, runtime))(images)
                got = {last_module: wire, WIRE: wire}
                sees = "the wire only: " + (
                    "the encoder is one XNNPACK delegate call, opaque to ExecuTorch's intermediate-output capture"
                    if target == "executorch"
                    else "LiteRT's tensors carry onnx2tf's names, which name no module"
                )
            sqnr = _sqnr(_with_wire(got, got[WIRE], scale, zero_point), want)
            views.append(View(name, RUNTIMES[runtime], floor, sqnr, sees, inside=runtime == "mil-reference"))
            log(f"✓ {RUNTIMES[runtime]} of {name}: {sees.split(':')[0]}")
    return Explanation(points, views, len(images))
