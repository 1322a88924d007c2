"""The ExecuTorch target: the encoder lowered whole to the XNNPACK delegate as a ``.pte``, and run.

Three things keep the program in one piece (each measured on the dt-2m encoder, where today's
formulation made 16 delegate calls with 8 ``native_layer_norm`` and 16 ``expand_copy`` between
them):

* LayerNorm is swapped for :class:`~dtconvert.rewrite.LinearLayerNorm` on a copy of the encoder
  (XNNPACK has no layer-norm operator) and kept in float under quantization;
* ExecuTorch's XNNPACK transform passes remove the no-op ``expand_copy`` that ``torch.matmul``
  on 4-D tensors decomposes into (they run only when passed to ``to_edge_transform_and_lower``);
* :class:`WholeGraphPartitioner` finishes the merge that XNNPACK's partitioner leaves half done:
  its group partitioner merges pairs in one greedy pass, so under dynamic quantization (where
  one ``choose_qparams`` feeds the q, k and v projections) a fully supported encoder came out as
  5 delegate calls back to back with nothing between them.
"""

from __future__ import annotations

import operator
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from dtconvert.rewrite import layer_of
from dtconvert.targets import FP32, INT8_LARGE_WEIGHTS, INT8_WEIGHTS, ExportError, ExportJob, Run, Scheme, small_weight_layers

SCHEMES = {
    "int8": Scheme(
        "dynamic",
        INT8_LARGE_WEIGHTS,
        "int8 per token, quantized at run time, at the inputs of the int8 linear layers; everything else float32",
        "one XNNPACK delegate call, as fast as static int8 on x86 and more faithful: a per-token scale follows the "
        "LayerNorm, softmax and residual activations that one calibrated scale per tensor cannot",
    ),
    "int8-static": Scheme(
        "static",
        INT8_WEIGHTS,
        "int8 per tensor with scales fixed by calibration (linear, matmul, conv, add, mul); LayerNorm and softmax float32",
        "full-integer linear algebra for accelerators that need static scales; XNNPACK still runs it as one delegate call",
    ),
    "fp32": FP32,
}

# Ops that must run inside XNNPACK: anything heavy left to portable kernels is a slow artifact.
COMPUTE_OPS = {"linear", "mm", "bmm", "addmm", "matmul", "convolution", "conv2d", "baddbmm"}
# Op kinds reported in the manifest's quantization summary (others move data, not numbers).
ARITHMETIC_OPS = COMPUTE_OPS | {"add", "sub", "mul", "div", "rsqrt", "softmax", "_softmax", "relu", "mean"}


def _whole_graph_partitioner():
    """XNNPACK's partitioner, with its partitions merged until no two can be merged any more."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from torch.fx.passes.infra.partitioner import Partition
    from torch.fx.passes.utils.fuser_utils import validate_partition

    class WholeGraphPartitioner(XnnpackPartitioner):
        def generate_partitions(self, ep):
            groups = [set(p.nodes) for p in super().generate_partitions(ep)]
            merged = True
            while merged:  # to a fixed point: a merge can make another one acyclic
                merged = False
                for i in range(len(groups)):
                    for j in range(i + 1, len(groups)):
                        union = groups[i] | groups[j]
                        if validate_partition(list(union)):  # no path leaves the union and re-enters it
                            groups[i] = union
                            del groups[j]
                            merged = True
                            break
                    if merged:
                        break
            return [Partition(id=i, nodes=group) for i, group in enumerate(groups)]

    return WholeGraphPartitioner()


def prepare(
    encoder: torch.nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    precision: str,
    any_batch: bool = False,
    keep_float: tuple[str, ...] = (),
    ranges: dict | None = None,
) -> torch.nn.Module:
    """The module ExecuTorch lowers for ``precision``: the encoder with LayerNorms in linear form,
    quantized by the precision's scheme. LayerNorm stays float; so do, for the default int8,
    the layers with fewer than WEIGHT_THRESHOLD weights (int8-static is full-integer), and the
    modules ``keep_float`` names. ``ranges``: a QAT checkpoint's learned activation ranges,
    used instead of calibrating."""
    from dtconvert.quantize import pt2e_quantize
    from dtconvert.rewrite import LinearLayerNorm, with_linear_layer_norms

    swapped = with_linear_layer_norms(encoder).eval()
    if precision == "fp32":
        return swapped
    dynamic = SCHEMES[precision].name == "dynamic"
    return pt2e_quantize(
        swapped,
        example,
        calibration,
        dynamic=dynamic,
        float_modules=(LinearLayerNorm,),
        keep_float=(*sorted(small_weight_layers(swapped) if dynamic else ()), *keep_float),
        any_batch=any_batch,
        ranges=ranges,
    )


def lower(module: torch.nn.Module, example: torch.Tensor):
    """``to_edge_transform_and_lower`` with XNNPACK's transform passes and the whole-graph partitioner."""
    from executorch.backends.xnnpack.utils.configs import get_transform_passes, get_xnnpack_edge_compile_config
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, (example,))
    return to_edge_transform_and_lower(
        program,
        partitioner=[_whole_graph_partitioner()],
        transform_passes=get_transform_passes(),
        compile_config=get_xnnpack_edge_compile_config(),
    )


def outside_delegate(graph_module) -> list[tuple[str, str]]:
    """(op, layer) of every call in a lowered edge graph that did not go to a delegate."""
    found = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            continue
        found.append((name, layer_of(node)))
    return found


def _op_base(name: str) -> str:
    # "aten.linear.default" → "linear"; "aten_linear_default" style names too
    parts = name.replace("aten_", "aten.").split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "aten" else parts[0]


def quantized_op_kinds(module: torch.nn.Module, example: torch.Tensor, norms: set[str]) -> dict[str, dict[str, int]]:
    """``{"int8": {kind: n}, "float": {kind: n}}`` for the arithmetic ops of the module that is lowered.

    An op counts as int8 when one of its inputs comes from a dequantize node (the pt2e form of
    an int8 tensor); the ops of the LayerNorms (by module name, ``norms``) count once each, as
    ``layer_norm``."""
    graph = module.graph if isinstance(module, torch.fx.GraphModule) else torch.export.export(module, (example,)).graph
    kinds: dict[str, Counter] = {"int8": Counter(), "float": Counter()}
    seen_norms: set[tuple[str, str]] = set()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        kind = _op_base(getattr(node.target, "__name__", str(node.target))).removeprefix("_")
        if kind not in {k.removeprefix("_") for k in ARITHMETIC_OPS}:
            continue
        quantized = any("dequantize" in getattr(getattr(a, "target", None), "__name__", "") for a in node.all_input_nodes)
        layer = layer_of(node)
        if layer in norms:
            if (layer, "float") not in seen_norms:
                seen_norms.add((layer, "float"))
                kinds["float"]["layer_norm"] += 1
            continue
        kinds["int8" if quantized else "float"][kind] += 1
    return {k: dict(sorted(v.items())) for k, v in kinds.items()}


def _layer_norms(encoder: torch.nn.Module) -> set[str]:
    return {name for name, m in encoder.named_modules() if isinstance(m, torch.nn.LayerNorm)}


class ExecuTorchTarget:
    name = "executorch"
    extension = "pte"
    schemes = SCHEMES
    takes_learned_ranges = True  # the QAT-prepared pt2e graph, converted with the checkpoint's ranges

    def export(self, job: ExportJob, path: Path) -> dict:
        module = prepare(job.encoder, job.example, job.calibration, job.precision, keep_float=job.keep_float, ranges=job.qat_ranges)
        edge = lower(module, job.example)
        graph = edge.exported_program().graph_module
        outside = outside_delegate(graph)
        heavy = [(op, layer) for op, layer in outside if _op_base(op) in COMPUTE_OPS]
        if heavy:
            op, layer = heavy[0]
            raise ExportError(f"{op} in layer {layer} was not delegated to XNNPACK ({len(heavy)} such ops)")
        path.write_bytes(edge.to_executorch().buffer)
        kernels, delegates = pte_kernel_ops(path)  # read back from what ships
        return {
            "backend": "xnnpack",
            "quantization": {
                **SCHEMES[job.precision].describe(),
                "ops": quantized_op_kinds(module, job.example, _layer_norms(job.encoder)),
            },
            "delegation": {"delegate": "XNNPACK", "delegate_calls": delegates, "ops_outside_delegate": kernels},
        }

    def runtimes(self) -> list[str]:
        return ["executorch"]

    def look_inside(self, path: Path, runtime: str, encoder, images: np.ndarray, points: list[str], precision: str, keep_float=()):
        """The .pte's wire only: why (see :meth:`dtconvert.targets.Target.look_inside`)."""
        return (
            "the wire only: the encoder is one XNNPACK delegate call, and ExecuTorch 1.5's intermediate-output "
            "capture stops at a delegate's boundary"
        )

    def program_points(self, encoder, images: np.ndarray, points: list[str], precision: str, keep_float=()):
        """The quantized program before lowering, every point (:func:`program_point_values`); None for fp32."""
        return None if precision == "fp32" else program_point_values(encoder, images, points, precision, keep_float)

    def delegation(self, path: Path) -> dict:
        kernels, delegates = pte_kernel_ops(path)
        return {"partitions": delegates, "ops_outside_delegate": kernels}

    def runner(self, path: Path, runtime: str | None = None, *, threads: int | None = None, batch: int = 1) -> Run:
        if runtime not in (None, "executorch"):
            raise ValueError(f"a .pte runs in ExecuTorch, not {runtime!r}")
        # A program runs the batch it was lowered at (the shipped .pte: 1; bench re-lowers at others): nothing to resize.
        from executorch.runtime import Runtime

        from dtconvert.output import quiet_native

        with quiet_native():  # the runtime logs its CPU probing to stderr on first use
            method = Runtime.get().load_program(str(path)).load_method("forward")

        def run(x: np.ndarray) -> np.ndarray:
            return method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])[0].numpy()

        return run


def set_threads(threads: int) -> int | None:
    """Resize ExecuTorch's process-wide threadpool (XNNPACK runs on it) and return its size.

    Programs loaded before keep the old pool: load them again after (the pybindings' own advice)."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    return int(portable_lib._threadpool_get_thread_count())


def pte_kernel_ops(path: Path) -> tuple[dict[str, int], int]:
    """Operators a .pte runs on ExecuTorch's own kernels (outside any delegate), and how many
    delegate calls it makes, read from the program itself rather than from the export graph."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DelegateCall, KernelCall

    program = deserialize_pte_binary(Path(path).read_bytes()).program
    kernels: Counter = Counter()
    delegates = 0
    for plan in program.execution_plan:
        for chain in plan.chains:
            for instruction in chain.instructions:
                args = instruction.instr_args
                if isinstance(args, KernelCall):
                    kernel = plan.operators[args.op_index]
                    kernels[kernel.name.split("::")[-1]] += 1
                elif isinstance(args, DelegateCall):
                    delegates += 1
    return dict(sorted(kernels.items())), delegates


def program_point_values(
    encoder: torch.nn.Module, images: np.ndarray, points: list[str], precision: str, keep_float: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """The output of every module in ``points`` inside the quantized program that :func:`prepare`
    makes for ExecuTorch to lower, run in torch one image at a time (``"wire"``: its output).

    A module's output is the last float node computed inside it (``nn_module_stack``), the value
    the next module reads. Static scales are calibrated on ``images``."""
    from dtconvert.rewrite import within

    example = torch.from_numpy(images[:1])
    module = prepare(encoder, example, images, precision, keep_float=keep_float)
    assert isinstance(module, torch.fx.GraphModule), "an int8 precision lowers a pt2e GraphModule"
    floats: set[str] = set()

    class Shapes(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                floats.add(n.name)
            return out

    with torch.no_grad():
        Shapes(module).run(example)
    calls = [n for n in module.graph.nodes if n.op == "call_function" and n.name in floats]
    last = {}
    for point in points:
        inside = [n.name for n in calls if within(layer_of(n), point)]
        if inside:
            last[inside[-1]] = point
    captured: dict[str, list[np.ndarray]] = {point: [] for point in last.values()}

    class Capture(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in last:
                captured[last[n.name]].append(out.numpy())
            return out

    with torch.no_grad():
        wires = [Capture(module).run(torch.from_numpy(images[i : i + 1])).numpy() for i in range(len(images))]
    return {**{point: np.concatenate(v) for point, v in captured.items()}, "wire": np.concatenate(wires)}
