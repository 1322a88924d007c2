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


def test_compute_ops_are_all_delegated(int8_export):
    _, entry = artifact(int8_export, "executorch")
    outside = entry["details"]["ops_outside_delegate"]
    assert not set(outside) & COMPUTE_OPS, outside
    assert entry["details"]["delegates"] >= 1


def test_int8_is_smaller_than_fp32(int8_export, fp32_export):
    assert artifact(int8_export, "executorch")[1]["bytes"] < 0.45 * artifact(fp32_export, "executorch")[1]["bytes"]
