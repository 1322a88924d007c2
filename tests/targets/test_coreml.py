"""Core ML .mlpackage: converted, saved and reloaded here; prediction needs macOS."""

import platform

import pytest

from dtconvert.targets import RunnerUnavailable, load_target
from dtconvert.targets.coreml import io_spec, mil_ops
from tests.conftest import artifact

pytestmark = pytest.mark.coreml


@pytest.mark.parametrize("which", ["int8", "fp32"])
def test_mlpackage_reloads_with_the_manifest_io(which, int8_export, fp32_export):
    path, entry = artifact(int8_export if which == "int8" else fp32_export, "coreml")
    io = io_spec(path)
    assert io["inputs"] == [{"name": "image", "shape": [1, 1, 16, 16], "dtype": "float32"}]
    assert io["outputs"][0]["name"] == "wire" and io["outputs"][0]["shape"] == [1, 8, 8]
    assert entry["details"]["compute_precision"] == ("float16" if which == "int8" else "float32")


def test_int8_program_is_weight_only(int8_export, fp32_export):
    ops = mil_ops(artifact(int8_export, "coreml")[0])
    assert ops.get("constexpr_affine_dequantize", 0) >= 8  # int8 weights
    assert "quantize" not in ops and "dequantize" not in ops  # float activations
    assert "constexpr_affine_dequantize" not in mil_ops(artifact(fp32_export, "coreml")[0])


def test_int8_static_program_is_w8a8(static_export):
    ops = mil_ops(artifact(static_export, "coreml")[0])
    assert ops.get("constexpr_affine_dequantize", 0) > 0  # int8 weights
    assert ops.get("quantize", 0) > 0 and ops.get("dequantize", 0) > 0  # int8 activations


def test_metadata_is_embedded(int8_export):
    import coremltools as ct

    model = ct.models.MLModel(str(artifact(int8_export, "coreml")[0]), skip_model_load=True)
    assert model.author == "dtconvert" and "wire tensor" in model.output_description["wire"]
    assert model.user_defined_metadata["wire_zero_point"]


@pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS the runner predicts for real")
def test_runner_says_why_it_cannot_run_here(int8_export):
    with pytest.raises(RunnerUnavailable, match="macOS"):
        load_target("coreml").runner(artifact(int8_export, "coreml")[0])
