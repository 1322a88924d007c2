"""TFLite through the LiteRT interpreter: XNNPACK (the default) and the reference kernels."""

import pytest

from dtconvert.targets.tflite import make_runner, non_builtin_ops
from tests.conftest import artifact, end_to_end, run_device
from tests.targets.parity import assert_end_to_end, assert_wire_close

pytestmark = pytest.mark.tflite


@pytest.mark.parametrize("kernels", ["xnnpack", "reference"])
def test_int8_tflite_agrees_end_to_end(int8_export, int8_reference, kernels):
    path, _ = artifact(int8_export, "tflite")
    wire = run_device(make_runner(path, reference_kernels=kernels == "reference"), int8_reference.images)
    assert_end_to_end("tflite", "int8", end_to_end(int8_export, wire), int8_reference)


@pytest.mark.parametrize("kernels", ["xnnpack", "reference"])
def test_fp32_tflite_matches_torch(fp32_export, fp32_reference, kernels):
    path, _ = artifact(fp32_export, "tflite")
    wire = run_device(make_runner(path, reference_kernels=kernels == "reference"), fp32_reference.images)
    assert_wire_close("tflite", "fp32", wire, fp32_reference.wire)


def test_twin_tflite_check_catches_a_wrong_reference(fp32_export, fp32_reference):
    path, _ = artifact(fp32_export, "tflite")
    wire = run_device(make_runner(path), fp32_reference.images)
    with pytest.raises(AssertionError, match="wire max abs error"):
        assert_wire_close("tflite", "fp32", wire, fp32_reference.wire * 1.001)


def test_only_builtin_ops_and_float_io(int8_export):
    _, entry = artifact(int8_export, "tflite")
    assert not non_builtin_ops(entry["details"]["ops"])
    assert "FULLY_CONNECTED" in entry["details"]["ops"]
    assert "QUANTIZE" not in entry["details"]["ops"]  # dynamic range: the delegate quantizes activations itself
    assert [i["name"] for i in entry["inputs"]] == ["image"] and entry["inputs"][0]["dtype"] == "float32"
    assert [o["name"] for o in entry["outputs"]] == ["wire"] and entry["outputs"][0]["shape"] == [1, 8, 8]


def test_twin_flex_ops_are_recognised():
    assert non_builtin_ops({"FULLY_CONNECTED": 3, "FlexErf": 1}) == ["FlexErf"]


def test_int8_is_dynamic_range_and_int8_static_full_integer(int8_export, static_export):
    from dtconvert.targets.tflite import op_precisions

    dynamic = op_precisions(artifact(int8_export, "tflite")[0])
    assert dynamic["int8"] == {"FULLY_CONNECTED": dynamic["int8"]["FULLY_CONNECTED"]} and dynamic["int8"]["FULLY_CONNECTED"] >= 8
    assert "SOFTMAX" in dynamic["float"] and "BATCH_MATMUL" in dynamic["float"]
    static = op_precisions(artifact(static_export, "tflite")[0])
    assert not static["float"] and {"SOFTMAX", "FULLY_CONNECTED", "BATCH_MATMUL"} <= set(static["int8"])
    assert "QUANTIZE" in artifact(static_export, "tflite")[1]["details"]["ops"]


def test_twin_partition_count_reads_the_delegate_nodes(int8_export, static_export):
    from dtconvert.targets.tflite import delegation

    whole = delegation(artifact(int8_export, "tflite")[0])
    split = delegation(artifact(static_export, "tflite")[0])
    assert (whole["partitions"], whole["ops_outside_delegate"]) == (1, {})
    assert split["partitions"] > 1 and sum(split["ops_outside_delegate"].values()) > 0
    assert set(split["ops_outside_delegate"]) & {"RSQRT", "SOFTMAX", "SQUARED_DIFFERENCE"}, split
