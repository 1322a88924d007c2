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
    assert "FULLY_CONNECTED" in entry["details"]["ops"] and "QUANTIZE" in entry["details"]["ops"]
    assert [i["name"] for i in entry["inputs"]] == ["image"] and entry["inputs"][0]["dtype"] == "float32"
    assert [o["name"] for o in entry["outputs"]] == ["wire"] and entry["outputs"][0]["shape"] == [1, 8, 8]


def test_twin_flex_ops_are_recognised():
    assert non_builtin_ops({"FULLY_CONNECTED": 3, "FlexErf": 1}) == ["FlexErf"]
