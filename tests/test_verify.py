"""dtconvert verify: passes on a real export, and each of its checks can fail."""

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from typer.testing import CliRunner

from dtconvert.cli import app
from dtconvert.manifest import describe_file
from tests.conftest import manifest_of

pytestmark = pytest.mark.verify


def _verify(export_dir, *args):
    result = CliRunner().invoke(app, ["verify", str(export_dir), *args], env={"COLUMNS": "200"})
    return result


def _copy(export_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(export_dir, tmp_path / "copy"))


def _rehash(export_dir: Path, target: str) -> None:
    """Update the manifest after changing an artifact, as a buggy converter would have written it."""
    manifest = manifest_of(export_dir)
    for entry in manifest["artifacts"]:
        if entry["target"] == target:
            entry.update(describe_file(export_dir, entry["path"]))
    (export_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _failed(report: dict) -> list[tuple[str, str, str]]:
    return [(c["artifact"], c["runtime"], c["check"]) for c in report["checks"] if not c["passed"]]


def test_export_recorded_a_passing_verification(int8_export):
    verification = manifest_of(int8_export)["verification"]
    assert verification["passed"], verification["failed"]
    runtimes = {r for per_artifact in verification["metrics"].values() for r in per_artifact}
    assert {"ExecuTorch XNNPACK", "LiteRT XNNPACK", "LiteRT reference kernels", "MIL reference", "TorchScript"} <= runtimes
    assert verification["samples"] == 360


def test_verify_passes_with_json_and_junit(int8_export, tmp_path):
    result = _verify(int8_export, "--json", str(tmp_path / "v.json"), "--junit", str(tmp_path / "v.xml"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["samples"] == 360
    for artifact, per_runtime in report["metrics"].items():
        for runtime, numbers in per_runtime.items():
            if runtime != "TorchScript":
                assert set(numbers["wire"]) == {"max_abs", "cosine", "sqnr_db"}
            for task in ("digit", "odd"):
                assert numbers["tasks"][task]["top1_agreement"] >= 0.995
                assert {"accuracy", "fp32_accuracy", "accuracy_change_points"} <= set(numbers["tasks"][task])
    suite = ElementTree.parse(tmp_path / "v.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == len(report["checks"]) and suite.get("failures") == "0"
    assert "Core ML" not in " ".join(c["runtime"] for c in report["checks"])  # on Linux it is the MIL reference


def test_flipped_byte_fails_before_anything_runs(int8_export, tmp_path):
    copy = _copy(int8_export, tmp_path)
    tflite = next(copy.glob("*.tflite"))
    data = bytearray(tflite.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tflite.write_bytes(bytes(data))
    result = _verify(copy, "--json", str(tmp_path / "v.json"))
    assert result.exit_code == 1
    assert f"{tflite.name}: sha256" in result.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert {c["check"] for c in report["checks"]} == {"sha256"}  # nothing ran


def test_flipped_byte_inside_a_package_names_the_file(int8_export, tmp_path):
    copy = _copy(int8_export, tmp_path)
    weights = next(copy.glob("*.mlpackage/Data/com.apple.CoreML/weights/weight.bin"))
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    result = _verify(copy)
    assert result.exit_code == 1 and "weights/weight.bin: sha256" in result.stderr


def test_perturbed_tflite_weight_fails_parity(int8_export, tmp_path):
    from tensorflow.lite.tools import flatbuffer_utils

    copy = _copy(int8_export, tmp_path)
    path = next(copy.glob("*.tflite"))
    model = flatbuffer_utils.read_model(str(path))
    largest = max(model.buffers, key=lambda b: 0 if b.data is None else len(b.data))
    largest.data = (-np.asarray(largest.data).view(np.int8)).view(np.uint8)  # negate one int8 weight matrix
    flatbuffer_utils.write_model(model, str(path))
    _rehash(copy, "tflite")
    result = _verify(copy, "--json", str(tmp_path / "v.json"), "--limit", "120")
    assert result.exit_code == 1, result.output
    failed = _failed(json.loads((tmp_path / "v.json").read_text()))
    assert any(a.endswith(".tflite") and "agreement" in check for a, _, check in failed), failed
    assert not any(a.endswith(".pte") for a, _, _ in failed)


def test_perturbed_executorch_weight_fails_parity(fp32_export, fp32_reference, tmp_path):
    copy = _copy(fp32_export, tmp_path)
    path = next(copy.glob("*.pte"))
    weight = fp32_reference.model.encoder.layers[0].ffn.fc1.weight.detach().numpy().astype(np.float32)
    data = bytearray(path.read_bytes())
    at = bytes(data).find(weight.tobytes()[:64])
    assert at > 0, "fp32 weights are stored verbatim in the .pte"
    data[at : at + 4] = np.float32(weight.flat[0] + 0.5).tobytes()
    path.write_bytes(bytes(data))
    _rehash(copy, "executorch")
    result = _verify(copy, "--json", str(tmp_path / "v.json"), "--limit", "60")
    assert result.exit_code == 1
    failed = _failed(json.loads((tmp_path / "v.json").read_text()))
    assert (path.name, "ExecuTorch XNNPACK", "wire") in failed, failed


def test_swapped_wire_scale_fails_parity(int8_export, tmp_path):
    copy = _copy(int8_export, tmp_path)
    manifest = manifest_of(copy)
    manifest["wire"]["scale"] *= 0.2  # another export's scale: the wire tensor now clips
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = _verify(copy, "--json", str(tmp_path / "v.json"), "--limit", "120")
    assert result.exit_code == 1
    failed = _failed(json.loads((tmp_path / "v.json").read_text()))
    assert any(check.startswith("top-1 agreement") for _, _, check in failed)


def test_collapse_fails_even_on_a_tiny_set(int8_export, tmp_path):
    copy = _copy(int8_export, tmp_path)
    manifest = manifest_of(copy)
    manifest["wire"]["scale"] *= 1e4  # every wire value rounds to the zero point
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = _verify(copy, "--json", str(tmp_path / "v.json"), "--limit", "8")
    assert result.exit_code == 1
    failed = _failed(json.loads((tmp_path / "v.json").read_text()))
    assert any(check == "no collapse [digit]" for _, _, check in failed), failed


def test_unknown_mil_op_fails_loudly(int8_export, tmp_path, monkeypatch):
    import dtconvert.mil_reference as mil

    monkeypatch.setattr(mil, "SUPPORTED_OPS", frozenset(mil.SUPPORTED_OPS - {"softmax"}))
    result = _verify(int8_export, "--json", str(tmp_path / "v.json"), "--limit", "8")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "v.json").read_text())
    coreml = [c for c in report["checks"] if c["artifact"].endswith(".mlpackage") and not c["passed"]]
    assert any("softmax" in c["detail"] for c in coreml), coreml
    assert not any(c["runtime"] == "MIL reference" and c["check"] == "wire" for c in report["checks"])


def test_tolerance_file_overrides_the_defaults(int8_export, tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text("tflite:\n  int8:\n    wire_max_abs: 0.001\n")
    result = _verify(int8_export, "--tolerance", str(strict), "--limit", "30", "--json", str(tmp_path / "v.json"))
    assert result.exit_code == 1
    failed = _failed(json.loads((tmp_path / "v.json").read_text()))
    assert {(r, c) for a, r, c in failed} == {("LiteRT XNNPACK", "wire"), ("LiteRT reference kernels", "wire")}


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "manifest.json").unlink(), "manifest.json: missing"),
        (lambda d: (d / "manifest.json").write_text(json.dumps({**manifest_of(d), "schema_version": 2})), "newer than this dtconvert reads"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda d: next(d.glob("*.pte")).unlink(), "is missing"),
    ],
)
def test_bad_input_exits_2(int8_export, tmp_path, setup, message):
    copy = _copy(int8_export, tmp_path)
    setup(copy)
    result = _verify(copy)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "Traceback" not in result.output


def test_bad_tolerance_file_exits_2(int8_export, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tflite:\n  int8:\n    min_agreement: 0.9\n")
    result = _verify(int8_export, "--tolerance", str(bad))
    assert result.exit_code == 2 and "unknown bound 'min_agreement'" in result.stderr


def test_golden_files_match_the_artifacts(int8_export):
    import torch

    from dtconvert.quantize import quantize_wire
    from tests.conftest import artifact

    golden = int8_export / "golden"
    manifest = manifest_of(int8_export)
    wire = np.load(golden / "wire_fp32.npy")
    assert np.array_equal(np.load(golden / "wire_int8.npy"), quantize_wire(wire, manifest["wire"]["scale"], manifest["wire"]["zero_point"]))
    images = np.load(golden / "input.npy")
    assert images.shape == (8, 1, 16, 16) and np.load(golden / "image_uint8.npy").shape == (8, 8, 8)
    # The preprocessing an app must implement turns the raw images into the golden input exactly.
    from dtconvert.data import normalize, resize_unit_images

    raw = torch.from_numpy(np.load(golden / "image_uint8.npy")).float().div(255).unsqueeze(1)
    assert np.allclose(normalize(resize_unit_images(raw, 16, "bilinear"), [0.5], [0.5]).numpy(), images, atol=1e-6)
    from dtconvert.targets.tflite import make_runner

    run = make_runner(artifact(int8_export, "tflite")[0])
    assert np.abs(run(images[:1]) - wire[:1]).max() < 0.5
