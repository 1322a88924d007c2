"""The default int8: whole inside its delegate, faithful on models less confident than digits.

Each structural and numeric claim has a twin that fails: the formulation that shipped before
(static int8, nn.LayerNorm, no transform passes) fails the one-partition check, a split LiteRT
model fails it, a manifest that misreports the structure fails, and a perturbed weight fails
the SQNR floor.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dtconvert.cli import app
from dtconvert.manifest import describe_file
from dtconvert.rewrite import LinearLayerNorm, with_linear_layer_norms
from dtconvert.tolerances import DEFAULT_TOLERANCES
from tests.conftest import artifact, manifest_of

pytestmark = [pytest.mark.executorch, pytest.mark.tflite, pytest.mark.coreml, pytest.mark.verify]

DEVICE_RUNTIMES = ("ExecuTorch XNNPACK", "LiteRT XNNPACK", "LiteRT reference kernels", "MIL reference")


# ---- the export-time LayerNorm swap ---------------------------------------------------------


def _layer_norm(dim: int) -> nn.LayerNorm:
    torch.manual_seed(0)
    norm = nn.LayerNorm(dim)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    return norm


def test_linear_layer_norm_equals_layer_norm():
    norm = _layer_norm(48)
    x = torch.randn(3, 17, 48) * 4 + 2  # off-centre and wide, as residual streams are
    assert (LinearLayerNorm(norm)(x) - norm(x)).abs().max() < 1e-5


def test_twin_linear_layer_norm_check_catches_a_wrong_mean():
    norm = _layer_norm(48)
    swapped = LinearLayerNorm(norm)
    swapped.average.mul_(1.01)  # a mean over 1 % too much
    x = torch.randn(3, 17, 48) * 4 + 2
    assert (swapped(x) - norm(x)).abs().max() > 1e-3


def test_swap_copies_and_leaves_the_model_alone(tiny_model):
    swapped = with_linear_layer_norms(tiny_model.encoder)
    assert not any(isinstance(m, nn.LayerNorm) for m in swapped.modules())
    assert sum(isinstance(m, LinearLayerNorm) for m in swapped.modules()) == 2 * len(tiny_model.encoder.layers)
    assert any(isinstance(m, nn.LayerNorm) for m in tiny_model.encoder.modules())  # the original is untouched
    assert set(swapped.state_dict()) == set(tiny_model.encoder.state_dict())  # same parameters, no new ones saved
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert (swapped(x) - tiny_model.encoder(x)).abs().max() < 1e-5


# ---- whole inside the delegate ---------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["int8_export", "quick_int8_export", "other_int8_export", "fp32_export"])
def test_default_precisions_run_as_one_delegate_call_with_nothing_outside(fixture, request):
    export_dir = request.getfixturevalue(fixture)
    manifest = manifest_of(export_dir)
    from dtconvert.targets import measure_delegation

    for target, count_key in (("executorch", "delegate_calls"), ("tflite", "partitions")):
        path, entry = artifact(export_dir, target)
        assert entry["delegation"][count_key] == 1 and entry["delegation"]["ops_outside_delegate"] == {}, entry["delegation"]
        assert measure_delegation(path, target) == {"partitions": 1, "ops_outside_delegate": {}}  # read from the file
    checks = [c for c in manifest["verification"]["failed"]]
    assert manifest["verification"]["passed"], checks
    assert set(manifest["verification"]["structure"]) == {artifact(export_dir, t)[1]["path"] for t in ("executorch", "tflite")}


def _todays_pte(ckpt_path, path):
    """The .pte the landed main shipped: static int8 of the textbook encoder, XNNPACK's partitioner, no passes."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from dtconvert.checkpoint import build_model, load_checkpoint
    from dtconvert.data import checkpoint_images
    from dtconvert.quantize import pt2e_quantize

    ckpt = load_checkpoint(ckpt_path)
    encoder = build_model(ckpt).encoder.eval()
    calibration, _ = checkpoint_images(ckpt, "train", 32)
    example = torch.from_numpy(calibration[:1].copy())
    quantized = pt2e_quantize(encoder, example, calibration, dynamic=False)
    edge = to_edge_transform_and_lower(torch.export.export(quantized, (example,)), partitioner=[XnnpackPartitioner()])
    path.write_bytes(edge.to_executorch().buffer)


def _rehash(export_dir, target, drop_delegation=True):
    manifest = manifest_of(export_dir)
    for entry in manifest["artifacts"]:
        if entry["target"] == target:
            entry.update(describe_file(export_dir, entry["path"]))
            if drop_delegation:
                entry.pop("delegation", None)
    (export_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _verify(export_dir, tmp_path, *args):
    result = CliRunner().invoke(app, ["verify", str(export_dir), "--no-explain", "--limit", "40", "--json", str(tmp_path / "v.json"), *args],
                                env={"COLUMNS": "200"})
    return result, json.loads((tmp_path / "v.json").read_text())


def _check(report, artifact_path, name):
    return next(c for c in report["checks"] if c["artifact"] == artifact_path and c["check"] == name)


def test_twin_the_formulation_that_shipped_before_fails_the_one_partition_check(int8_export, digits_ckpt, tmp_path):
    copy = shutil.copytree(int8_export, tmp_path / "copy")
    path, entry = artifact(copy, "executorch")
    _todays_pte(digits_ckpt, path)
    _rehash(copy, "executorch")
    result, report = _verify(copy, tmp_path)
    assert result.exit_code == 1
    check = _check(report, entry["path"], "delegation")
    assert not check["passed"]
    delegates, outside = report["structure"][entry["path"]]["delegation"].values()
    assert delegates > 1 and outside.get("native_layer_norm", 0) > 0, report["structure"]
    assert f"{delegates} XNNPACK delegate calls (bound ≤ 1)" in check["detail"] and "native_layer_norm" in check["detail"]


def test_twin_a_split_litert_model_fails_the_one_partition_bound(static_export, tmp_path):
    path, entry = artifact(static_export, "tflite")
    partitions = entry["delegation"]["partitions"]
    assert partitions > 1  # full-integer: XNNPACK takes no int8 RSQRT, SOFTMAX, ...
    _, report = _verify(static_export, tmp_path)
    assert _check(report, entry["path"], "delegation")["passed"]  # int8-static: reported, not bounded
    assert "(reported, no bound)" in _check(report, entry["path"], "delegation")["detail"]
    strict = tmp_path / "strict.yaml"
    strict.write_text("tflite:\n  int8-static:\n    max_delegate_partitions: 1\n")
    result, report = _verify(static_export, tmp_path, "--tolerance", str(strict))
    assert result.exit_code == 1
    assert f"{partitions} XNNPACK partitions (bound ≤ 1)" in _check(report, entry["path"], "delegation")["detail"]


def test_twin_a_manifest_that_misreports_the_structure_fails(int8_export, tmp_path):
    copy = shutil.copytree(int8_export, tmp_path / "copy")
    manifest = manifest_of(copy)
    entry = next(e for e in manifest["artifacts"] if e["target"] == "tflite")
    entry["delegation"]["partitions"] = 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result, report = _verify(copy, tmp_path)
    assert result.exit_code == 1
    assert "the manifest records 2 partitions" in _check(report, entry["path"], "delegation")["detail"]


# ---- faithful on any model -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["int8_export", "quick_int8_export", "other_int8_export"])
def test_default_int8_meets_the_gate_with_44_db_on_every_runtime(fixture, request):
    export_dir = request.getfixturevalue(fixture)
    verification = manifest_of(export_dir)["verification"]
    assert verification["passed"], verification["failed"]
    seen = set()
    for per_runtime in verification["metrics"].values():
        for runtime, numbers in per_runtime.items():
            if runtime == "TorchScript":
                continue
            seen.add(runtime)
            assert numbers["wire"]["sqnr_db"] >= 44.0, (runtime, numbers["wire"])
            for task, values in numbers["tasks"].items():
                assert all(s["passed"] for s in values["agreement"].values()), (runtime, task, values)
                assert values["logit_sqnr_db"] >= 35.0, (runtime, task, values)
    assert seen == set(DEVICE_RUNTIMES)
    assert DEFAULT_TOLERANCES["tflite"]["int8"]["min_top1_agreement"] == 0.995  # the gate was not moved


@pytest.mark.parametrize("fixture", ["quick_int8_export", "other_int8_export"])
def test_default_int8_really_is_int8_on_every_target(fixture, request):
    export_dir = request.getfixturevalue(fixture)
    schemes = {"executorch": "dynamic", "tflite": "dynamic", "coreml": "weight-only"}
    int8_kind = {"executorch": "linear", "tflite": "FULLY_CONNECTED", "coreml": "linear"}
    for target, scheme in schemes.items():
        path, entry = artifact(export_dir, target)
        quantization = entry["quantization"]
        assert quantization["scheme"] == scheme
        assert quantization["ops"]["int8"].get(int8_kind[target], 0) >= 4, quantization["ops"]
        assert entry["bytes"] > 0
    # LayerNorm and softmax stay float everywhere; that is what made static int8 fragile.
    et = artifact(export_dir, "executorch")[1]["quantization"]["ops"]
    depth = manifest_of(export_dir)["data"]["recipe"]["device_depth"]
    assert et["float"]["layer_norm"] == 2 * depth and "softmax" in et["float"] and "softmax" not in et["int8"]


def _tflite_weight_perturbed(export_dir, tmp_path, factor):
    """Scale the int8 values of the largest weight buffer by ``factor`` (clipped), rehash the manifest."""
    from tensorflow.lite.tools import flatbuffer_utils

    copy = shutil.copytree(export_dir, tmp_path / "copy")
    path, entry = artifact(copy, "tflite")
    model = flatbuffer_utils.read_model(str(path))
    largest = max(model.buffers, key=lambda b: 0 if b.data is None else len(b.data))
    weights = np.asarray(largest.data).view(np.int8).astype(np.float32)
    largest.data = np.clip(np.round(weights * factor), -127, 127).astype(np.int8).view(np.uint8)
    flatbuffer_utils.write_model(model, str(path))
    _rehash(copy, "tflite", drop_delegation=False)
    return copy, entry


def test_twin_a_perturbed_int8_weight_fails_the_sqnr_floor(quick_int8_export, tmp_path):
    copy, entry = _tflite_weight_perturbed(quick_int8_export, tmp_path, 1.05)  # 5 % on one weight matrix
    result, report = _verify(copy, tmp_path)
    assert result.exit_code == 1
    wire = _check(report, entry["path"], "wire")
    assert not wire["passed"] and "(bound ≥ 44.0 dB)" in wire["detail"], wire
    sqnr = report["metrics"][entry["path"]]["LiteRT XNNPACK"]["wire"]["sqnr_db"]
    assert sqnr < 44.0
    assert _check(report, artifact(copy, "executorch")[1]["path"], "wire")["passed"]  # only the perturbed artifact fails


# ---- int8-static: kept, still verified ---------------------------------------------------------


def test_int8_static_is_full_integer_and_still_verified(static_export):
    manifest = manifest_of(static_export)
    assert manifest["precision"] == "int8-static"
    verification = manifest["verification"]
    for target in ("executorch", "tflite", "coreml"):
        path, entry = artifact(static_export, target)
        assert entry["path"].endswith(f"_encoder_{target}_int8-static.{path.suffix[1:]}")
        assert entry["quantization"]["scheme"] == "static"
        runtimes = verification["metrics"][entry["path"]]
        assert all("sqnr_db" in numbers["wire"] and numbers["tasks"] for numbers in runtimes.values())
    tflite = artifact(static_export, "tflite")[1]["quantization"]["ops"]
    assert not tflite["float"], tflite  # every op int8
    et = artifact(static_export, "executorch")[1]
    assert et["delegation"] == {"delegate": "XNNPACK", "delegate_calls": 1, "ops_outside_delegate": {}}
    assert et["quantization"]["ops"]["int8"]["add"] > 0  # residuals in int8: static, not dynamic
