"""ExecuTorch .pte through ExecuTorch's own Python runtime with the XNNPACK delegate."""

import copy

import pytest

from dtconvert.targets import load_target
from dtconvert.targets.executorch import COMPUTE_OPS
from tests.conftest import artifact, end_to_end, run_device
from tests.targets.parity import assert_end_to_end, assert_wire_close

pytestmark = pytest.mark.executorch


def _wire(export_dir, reference):
    path, _ = artifact(export_dir, "executorch")
    return run_device(load_target("executorch").runner(path), reference.images)


def test_int8_pte_agrees_end_to_end(int8_export, int8_reference):
    logits = end_to_end(int8_export, _wire(int8_export, int8_reference))
    assert_end_to_end("executorch", "int8", logits, int8_reference)


def test_fp32_pte_matches_torch(fp32_export, fp32_reference):
    assert_wire_close("executorch", "fp32", _wire(fp32_export, fp32_reference), fp32_reference.wire)


def test_twin_fp32_check_catches_a_perturbed_weight(fp32_export, fp32_reference):
    import torch

    model = copy.deepcopy(fp32_reference.model)  # the session's reference must stay bit-exact
    with torch.no_grad():
        model.encoder.layers[0].ffn.fc1.weight[0, 0] += 0.05
        perturbed = model.encode(torch.from_numpy(fp32_reference.images)).numpy()
    with pytest.raises(AssertionError, match="wire max abs error"):
        assert_wire_close("executorch", "fp32", _wire(fp32_export, fp32_reference), perturbed)


def test_twin_end_to_end_check_catches_a_swapped_wire_scale(int8_export, int8_reference):
    from tests.conftest import manifest_of

    wrong = manifest_of(int8_export)["wire"]["scale"] * 3
    logits = end_to_end(int8_export, _wire(int8_export, int8_reference), decode_scale=wrong)
    with pytest.raises(AssertionError, match="top-1 agreement"):
        assert_end_to_end("executorch", "int8", logits, int8_reference)


@pytest.mark.parametrize("fixture", ["int8_export", "fp32_export", "static_export"])
def test_every_precision_is_one_delegate_call(fixture, request):
    from dtconvert.targets.executorch import pte_kernel_ops

    path, entry = artifact(request.getfixturevalue(fixture), "executorch")
    kernels, delegates = pte_kernel_ops(path)
    assert (kernels, delegates) == ({}, 1)
    assert entry["delegation"] == {"delegate": "XNNPACK", "delegate_calls": 1, "ops_outside_delegate": {}}


def test_whole_graph_partitioner_merges_what_xnnpack_leaves_apart(int8_export, int8_reference):
    """Dynamic quantization feeds q, k and v from one choose_qparams; XNNPACK's one-pass merge
    then leaves several delegate calls back to back. Ours merges them to one, and the twin (the
    stock partitioner on the same module) shows the split is real."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.utils.configs import get_transform_passes, get_xnnpack_edge_compile_config
    from executorch.exir import to_edge_transform_and_lower

    from dtconvert.targets import executorch as et

    example = torch.from_numpy(int8_reference.images[:1].copy())
    module = et.prepare(int8_reference.model.encoder.eval(), example, int8_reference.images[:32], "int8")
    stock = to_edge_transform_and_lower(torch.export.export(module, (example,)), partitioner=[XnnpackPartitioner()],
                                        transform_passes=get_transform_passes(), compile_config=get_xnnpack_edge_compile_config())
    ours = et.lower(module, example)

    def calls(edge):
        return sum("executorch_call_delegate" in getattr(n.target, "__name__", "") for n in edge.exported_program().graph_module.graph.nodes)

    assert calls(ours) == 1
    assert calls(stock) > 1
    assert not [op for op, _ in et.outside_delegate(stock.exported_program().graph_module) if et._op_base(op) in COMPUTE_OPS]


def test_int8_is_smaller_than_fp32(int8_export, fp32_export):
    assert artifact(int8_export, "executorch")[1]["bytes"] < 0.45 * artifact(fp32_export, "executorch")[1]["bytes"]
