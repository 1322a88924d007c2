"""The Core ML target: the encoder as an ML program (fp32, int8 weights or W8A8), run in Core ML or the MIL reference.

Precision ``int8`` is weight-only: the fp32 program converted, then its weights quantized to
int8 per output channel (``linear_quantize_weights``; Core ML dequantizes them as constants, so
every compute unit runs it). ``int8-static`` converts the static pt2e program (int8 activations
per tensor too), which pays off on the newest Neural Engines only.

Core ML runs only on Apple platforms: on Linux the artifact is converted, saved, reloaded and
inspected (I/O names, shapes, op list); prediction is left to macOS (see ``dtconvert verify``).
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from dtconvert.rewrite import kept_float
from dtconvert.targets import (
    FP32,
    INPUT_NAME,
    INT8_LARGE_WEIGHTS,
    INT8_WEIGHTS,
    OUTPUT_NAME,
    WEIGHT_THRESHOLD,
    ExportError,
    ExportJob,
    Run,
    RunnerUnavailable,
    Scheme,
    UnsupportedByRuntime,
)

SCHEMES = {
    "int8": Scheme(
        "weight-only",
        INT8_LARGE_WEIGHTS,
        "float16 (Core ML's ML-program default)",
        "runs on every compute unit and agrees with fp32 as closely as fp16 allows; int8 activations (W8A8) pay off "
        "on the newest Neural Engines only and cost fidelity everywhere",
    ),
    "int8-static": Scheme(
        "static",
        INT8_WEIGHTS,
        "int8 per tensor with scales fixed by calibration (linear, conv, add, mul); the rest float16",
        "the static pt2e program for Neural Engines that run int8 activations",
    ),
    "fp32": FP32,
}

# ct.convert on a torch.export program drops a debugging aid into the package root; the
# package's own Manifest.json does not list it and Core ML never reads it.
DEBUG_FILES = ("executorch_debug_handle_mapping.json",)


def mil_ops(path: Path) -> dict[str, int]:
    """Op types and counts of a saved ML program (works on Linux)."""
    from dtconvert.mil_reference import program_ops

    return dict(sorted(program_ops(path).items()))


def mil_op_precisions(path: Path) -> dict[str, dict[str, int]]:
    """``{"int8": {op: n}, "float": {op: n}}`` for the compute ops of a saved ML program: an op
    counts as int8 when an input comes from an int8 constant (``constexpr_affine_dequantize``,
    weight-only) or from a ``dequantize`` op (int8 activations)."""
    from dtconvert.mil_reference import load_program

    int8_sources = {"constexpr_affine_dequantize", "dequantize"}
    kinds: dict[str, dict[str, int]] = {"int8": {}, "float": {}}
    function = load_program(path).functions["main"]
    made_by = {out.name: op.op_type for op in function.operations for out in op.outputs}
    for op in function.operations:
        if op.op_type in {"const", "cast", "reshape", "transpose", "slice_by_index", "quantize"} | int8_sources:
            continue
        inputs = [v.name for v in op.inputs.values() if hasattr(v, "name")]
        kind = "int8" if any(made_by.get(name) in int8_sources for name in inputs) else "float"
        kinds[kind][op.op_type] = kinds[kind].get(op.op_type, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in kinds.items()}


def converted_program(
    encoder: torch.nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    precision: str,
    keep_float: tuple[str, ...] = (),
    ranges: dict | None = None,
) -> torch.export.ExportedProgram:
    """The torch.export program that coremltools converts for ``precision``: the fp32 encoder, or
    for ``int8-static`` the static pt2e program (the ``keep_float`` modules left float), with a QAT
    checkpoint's learned activation ranges where given. (Core ML keeps ``nn.LayerNorm``:
    coremltools' linear-bias fusion fails on LayerNorm's linear form; the quantizers are the same,
    one for one, :func:`~dtconvert.quantize.load_ranges` checks.)"""
    module = encoder
    if precision == "int8-static":
        from dtconvert.quantize import pt2e_quantize

        module = pt2e_quantize(encoder, example, calibration, dynamic=False, keep_float=keep_float, ranges=ranges)
    return torch.export.export(module, (example,)).run_decompositions({})


def mil_layers(mil_program, modules: list[str]) -> dict[str, str]:
    """MIL op name → the encoder module (``layers.1.ffn.fc2``) whose parameters the op reads.

    An op is tied to a module by the constant it takes as ``weight`` (linear, conv) or ``gamma``
    (layer_norm): coremltools names it after the torch parameter (``p_layers_1_ffn_fc2_weight_to_fp16``,
    ``…_quantized`` once int8). Op names themselves do not follow torch.export's node names (the
    digits encoder's first linear op was ``linear_1``, its node ``linear``), and biases are shared
    between ops when their values are equal, so neither identifies a module."""
    flat = {name.replace(".", "_"): name for name in modules if name}
    layers = {}
    for op in mil_program.functions["main"].operations:
        for key in ("weight", "gamma"):
            var = op.inputs.get(key)
            producer = getattr(var, "op", None)
            if producer is None:
                continue
            path = producer.name.removeprefix("p_").removesuffix("_quantized").removesuffix("_to_fp16").removesuffix("_to_fp32")
            module = flat.get(path.removesuffix("_weight"))
            if module is not None:
                layers[op.name] = module
    return layers


def io_spec(path: Path) -> dict:
    """Input and output names, shapes and dtypes as the saved package declares them."""
    from dtconvert.mil_reference import io_signature

    return io_signature(path)


class CoreMLTarget:
    name = "coreml"
    extension = "mlpackage"
    schemes = SCHEMES
    takes_learned_ranges = True  # converts the same QAT-prepared pt2e program as ExecuTorch

    def export(self, job: ExportJob, path: Path) -> dict:
        import coremltools as ct

        program = converted_program(job.encoder, job.example, job.calibration, job.precision, job.keep_float, job.qat_ranges)
        # fp32 keeps float32 compute; the int8 schemes compute their float parts in fp16, Core ML's default.
        precision = ct.precision.FLOAT32 if job.precision == "fp32" else ct.precision.FLOAT16
        try:
            model = ct.convert(
                program,
                inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(job.example.shape), dtype=np.float32)],
                outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                minimum_deployment_target=ct.target.iOS17,
                compute_precision=precision,
                convert_to="mlprogram",
            )
        except (NotImplementedError, ValueError, RuntimeError) as e:
            raise ExportError(f"coremltools could not convert the encoder: {str(e).strip().splitlines()[0]}") from e
        if job.precision == "int8":
            # --keep-float: the weight constants of the ops that read the kept modules' parameters
            # stay float. Configured on the constants, not the ops: coremltools shares one constant
            # between ops when the values are equal (all-zero biases), and a shared constant whose
            # consumers have different configs is refused.
            layers = mil_layers(model._mil_program, [name for name, _ in job.encoder.named_modules()])
            kept = {
                op.inputs["weight"].op.name: None
                for op in model._mil_program.functions["main"].operations
                if op.name in layers and kept_float(layers[op.name], job.keep_float) and "weight" in op.inputs
            }
            config = ct.optimize.coreml.OptimizationConfig(
                global_config=ct.optimize.coreml.OpLinearQuantizerConfig(
                    mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD
                ),
                op_name_configs=kept,
            )
            model = ct.optimize.coreml.linear_quantize_weights(model, config=config)
        meta = job.metadata
        model.author = meta.get("author", "dtconvert")
        model.version = meta.get("version", "")
        model.short_description = meta.get("description", "Device Tuning encoder")
        model.input_description[INPUT_NAME] = meta.get("input_description", "preprocessed image")
        model.output_description[OUTPUT_NAME] = meta.get("output_description", "wire tensor (float)")
        for key, value in meta.get("user_defined", {}).items():
            model.user_defined_metadata[key] = str(value)
        model.save(str(path))
        for name in DEBUG_FILES:
            (path / name).unlink(missing_ok=True)
        io = io_spec(path)  # reload from disk: what ships is what we describe
        if [i["name"] for i in io["inputs"]] != [INPUT_NAME] or [o["name"] for o in io["outputs"]] != [OUTPUT_NAME]:
            raise ExportError(f"Core ML model reloaded with unexpected I/O: {io}")
        return {
            "compute_precision": "float32" if job.precision == "fp32" else "float16",
            "deployment_target": "iOS17",
            "ops": mil_ops(path),
            **io,
            "quantization": {**SCHEMES[job.precision].describe(), "ops": mil_op_precisions(path)},
        }

    def structure(self, path: Path, entry: dict) -> tuple[list[str], str]:
        """Problems with the ML program's ops (the MIL reference's allow-list) and I/O against its manifest entry."""
        from dtconvert.mil_reference import check_ops, io_signature

        unknown = check_ops(path)
        io = io_signature(path)
        declared = {k: [{f: t[f] for f in ("name", "shape", "dtype")} for t in entry.get(k, [])] for k in ("inputs", "outputs")}
        problems = ([f"ops outside the MIL reference allow-list: {unknown}"] if unknown else []) + (
            [f"I/O {io} differs from the manifest's {declared}"] if io != declared else []
        )
        return problems, "all ops in the allow-list; I/O as in the manifest"

    def look_inside(self, path: Path, runtime: str, encoder, images: np.ndarray, points: list[str], precision: str, keep_float=()):
        if runtime != "mil-reference":
            return "the wire only: Core ML's prediction API returns the model's outputs only"
        return mil_point_values(path, encoder, images, points, precision, keep_float)

    def runtimes(self) -> list[str]:
        # Core ML predicts only on macOS; elsewhere the MIL program runs in dtconvert's numpy interpreter.
        return ["coreml-cpu", "coreml-all"] if platform.system() == "Darwin" else ["mil-reference"]

    def runner(self, path: Path, runtime: str | None = None, *, threads: int | None = None, batch: int = 1) -> Run:
        runtime = runtime or "coreml-cpu"
        if batch != 1:
            raise ValueError(f"a Core ML encoder is converted for batch 1, not {batch}")
        if runtime == "mil-reference":
            from dtconvert.mil_reference import MILReference, UnknownMILOp

            try:
                reference = MILReference(path)
            except UnknownMILOp as e:  # a valid ML program using an op the interpreter lacks
                reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise UnsupportedByRuntime(f"{type(e).__name__}: {reason}") from None
            return lambda x: reference.run({INPUT_NAME: x})[OUTPUT_NAME]
        if runtime not in ("coreml-cpu", "coreml-all"):
            raise ValueError(f"a .mlpackage runs in Core ML or the MIL reference, not {runtime!r}")
        if platform.system() != "Darwin":
            raise RunnerUnavailable("Core ML prediction runs only on macOS; on Linux the MIL program is checked instead")
        import coremltools as ct

        units = ct.ComputeUnit.CPU_ONLY if runtime == "coreml-cpu" else ct.ComputeUnit.ALL
        model = ct.models.MLModel(str(path), compute_units=units)
        return lambda x: model.predict({INPUT_NAME: x.astype(np.float32)})[OUTPUT_NAME]


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def mil_point_values(
    path: Path, encoder: torch.nn.Module, images: np.ndarray, points: list[str], precision: str, keep_float: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """The output of every module in ``points`` inside the shipped ML program, run in the MIL
    reference interpreter one image at a time (``"wire"``: its output). A module's output is that of
    the last op reading its parameters (:func:`mil_layers`); a pooling step's (no parameters) is
    the input of its layer's first attention projection. Points the program does not show are left out."""
    from dtconvert.mil_reference import MILReference, load_program
    from dtconvert.rewrite import within

    function = load_program(path).functions["main"]
    layers = mil_layers(load_program(path), [name for name, _ in encoder.named_modules()])
    ops = [op for op in function.operations if op.name in layers]
    last = {}
    for point in points:
        if point.endswith(".pool"):
            first = next((op for op in ops if within(layers[op.name], point.removesuffix(".pool") + ".attn")), None)
            producer = getattr(first.inputs.get("x"), "op", None) if first is not None else None
            if producer is not None:
                last[point] = producer.name
            continue
        inside = [op.name for op in ops if within(layers[op.name], point)]
        if inside:
            last[point] = inside[-1]
    reference = MILReference(path)
    captured: dict[str, list[np.ndarray]] = {point: [] for point in last}
    wires = []
    for i in range(len(images)):
        out = reference.every_op({INPUT_NAME: images[i : i + 1]})
        for point, op in last.items():
            if op in out:
                captured[point].append(out[op].astype(np.float32))
        wires.append(out[OUTPUT_NAME])
    values = {point: np.concatenate(v) for point, v in captured.items() if len(v) == len(images)}
    return {**values, "wire": np.concatenate(wires)}


__all__ = [
    "CoreMLTarget",
    "converted_program",
    "directory_bytes",
    "io_spec",
    "mil_layers",
    "mil_op_precisions",
    "mil_ops",
    "mil_point_values",
]
