"""ExecuTorch ``.pte`` lowered to the XNNPACK delegate (fp32, or the shared pt2e int8 program)."""

from __future__ import annotations

import operator
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from dtconvert.targets import ExportError, ExportJob, layer_of

# Ops that must run inside XNNPACK: anything heavy left to portable kernels is a slow artifact.
COMPUTE_OPS = {"linear", "mm", "bmm", "addmm", "matmul", "convolution", "conv2d", "baddbmm"}


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


class ExecuTorchTarget:
    name = "executorch"
    extension = "pte"

    def export(self, job: ExportJob, path: Path) -> dict:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        module = job.quantized_encoder if job.precision == "int8" else job.encoder
        program = torch.export.export(module, (job.example,))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        graph = edge.exported_program().graph_module
        outside = outside_delegate(graph)
        heavy = [(op, layer) for op, layer in outside if _op_base(op) in COMPUTE_OPS]
        if heavy:
            op, layer = heavy[0]
            raise ExportError(f"{op} in layer {layer} was not delegated to XNNPACK ({len(heavy)} such ops)")
        delegates = sum(1 for n in graph.graph.nodes if "executorch_call_delegate" in getattr(n.target, "__name__", ""))
        path.write_bytes(edge.to_executorch().buffer)
        return {
            "backend": "xnnpack",
            "delegates": delegates,
            "ops_outside_delegate": dict(Counter(_op_base(op) for op, _ in outside)),
        }

    def runner(self, path: Path):
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(str(path)).load_method("forward")

        def run(x: np.ndarray) -> np.ndarray:
            return method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])[0].numpy()

        return run


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
                    operator = plan.operators[args.op_index]
                    kernels[operator.name.split("::")[-1]] += 1
                elif isinstance(args, DelegateCall):
                    delegates += 1
    return dict(sorted(kernels.items())), delegates
