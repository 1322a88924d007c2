"""The export pipeline: manifest, integrity, atomic output, bad input, and the CLI."""

import copy
import json
import os
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from dtconvert.checkpoint import sha256_file
from dtconvert.cli import app
from dtconvert.errors import UserError
from dtconvert.manifest import MANIFEST_NAME, describe_file, validate
from tests.conftest import dtconvert_exe, manifest_of


def test_manifest_validates_and_describes_the_export(int8_export, digits_ckpt):
    manifest = manifest_of(int8_export)
    validate(manifest)
    assert manifest["model"]["checkpoint"]["sha256"] == sha256_file(digits_ckpt)
    assert manifest["model"]["id"] == manifest["model"]["checkpoint"]["sha256"][:16]
    assert manifest["device_input"]["shape"] == [1, 1, 16, 16]
    assert manifest["device_input"]["preprocessing"]["mean"] == [0.5]
    wire = manifest["wire"]
    assert wire["shape"] == [1, 8, 8] and wire["dtype"] == "int8" and wire["bytes_per_image"] == 64
    assert manifest["communication"] == {
        "wire_int8_bytes": 64, "device_input_uint8_bytes": 256, "unpooled_fp32_token_bytes": 16384, "source_image_uint8_bytes": 64,
    }
    assert [t["name"] for t in manifest["tasks"]] == ["digit", "odd"]
    assert {"torch", "executorch", "coremltools", "tensorflow", "onnx2tf"} <= set(manifest["tools"])
    assert len(manifest["data"]["heldout"]) == 360


def test_every_artifact_is_hashed_and_named_for_what_it_is(int8_export):
    manifest = manifest_of(int8_export)
    targets = {a["target"] for a in manifest["artifacts"]}
    assert targets == {"executorch", "coreml", "tflite", "torchscript", "triton", "reference"}
    for entry in manifest["artifacts"]:
        fresh = describe_file(int8_export, entry["path"])
        assert (fresh["sha256"], fresh["bytes"]) == (entry["sha256"], entry["bytes"]), entry["path"]
        if entry["target"] != "triton":
            part = {"device": "encoder", "cloud": "decoder", "reference": "reference"}[entry["part"]]
            target = "torchscript" if entry["target"] == "reference" else entry["target"]
            assert re.fullmatch(rf"digits_{part}_{target}_(int8|fp32)\.\w+", entry["path"]), entry["path"]
    assert (int8_export / "export.log").is_file()


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda m: m.pop("wire"), "(top level)"),
        (lambda m: m["wire"].update(zero_point=300), "wire/zero_point"),
        (lambda m: m["artifacts"][0].update(sha256="xyz"), "artifacts/0/sha256"),
        (lambda m: m["device_input"].update(layout="NHWC"), "device_input/layout"),
    ],
)
def test_twin_schema_rejects_broken_manifests(int8_export, mutate, where):
    manifest = copy.deepcopy(manifest_of(int8_export))
    mutate(manifest)
    with pytest.raises(UserError, match=re.escape(where)):
        validate(manifest)


def test_newer_schema_version_is_refused(int8_export):
    manifest = copy.deepcopy(manifest_of(int8_export))
    manifest["schema_version"] = 2
    with pytest.raises(UserError, match="newer than this dtconvert reads"):
        validate(manifest)


def test_failure_in_the_last_target_leaves_the_previous_export_untouched(quick_ckpt, tmp_path, monkeypatch):
    from dtconvert.export import ExportFailed, run_export
    from dtconvert.targets.tflite import TFLiteTarget

    out = tmp_path / "export"
    out.mkdir()
    (out / "previous.txt").write_text("the last good export")

    def explode(self, job, path):
        path.write_bytes(b"half a model")
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(TFLiteTarget, "export", explode)
    with pytest.raises(ExportFailed, match="target tflite failed: converter crashed") as info:
        run_export(quick_ckpt, ["executorch", "tflite"], precision="fp32", calib="32", out=out)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "export.export-error.log"]
    assert "converter crashed" in info.value.log.read_text()


def test_cli_reports_a_failed_target_in_one_line(quick_ckpt, tmp_path, monkeypatch):
    from dtconvert.targets.tflite import TFLiteTarget

    monkeypatch.setattr(TFLiteTarget, "export", lambda self, job, path: (_ for _ in ()).throw(RuntimeError("boom")))
    result = CliRunner().invoke(app, ["export", str(quick_ckpt), "--target", "tflite", "--precision", "fp32", "--calib", "32",
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: target tflite failed: boom (full log:")
    assert not (tmp_path / "e").exists()


def _images(folder, count):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_bad_inputs_exit_2(quick_ckpt, tmp_path):
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("not a checkpoint")
    few = _images(tmp_path / "few", 5)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(not_ckpt)], "not a readable checkpoint"),
        ([str(tmp_path / "absent.pt")], "no such checkpoint"),
        ([str(quick_ckpt), "--target", "onnxruntime"], "unknown target 'onnxruntime'"),
        ([str(quick_ckpt), "--precision", "int4"], "--precision must be one of"),
        ([str(quick_ckpt), "--calib", str(empty)], "has no images"),
        ([str(quick_ckpt), "--calib", str(few)], "only 5 images; at least 32"),
        ([str(quick_ckpt), "--calib", "8"], "at least 32"),
    ]
    for argv, message in cases:
        result = CliRunner().invoke(app, ["export", *argv, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, (argv, result.output)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "few", "notes.pt"]


def test_calibration_folder_is_used(quick_ckpt, tmp_path):
    from dtconvert.export import run_export

    folder = _images(tmp_path / "calib", 32)
    _, manifest = run_export(quick_ckpt, ["tflite"], precision="fp32", calib=str(folder), out=tmp_path / "out")
    assert manifest["wire"]["calibration"] == {"source": "folder", "path": str(folder), "images": 32}


@pytest.mark.cli
def test_export_runs_with_no_network_at_all(quick_ckpt, tmp_path):
    """The real console script in a network namespace with no interfaces up: nothing can leak."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rn", "true"]).returncode != 0:
        pytest.skip("unshare -rn (user + network namespaces) is not available on this machine")
    out = tmp_path / "offline"
    done = subprocess.run(["unshare", "-rn", *dtconvert_exe(), "export", str(quick_ckpt), "--target", "all",
                           "--precision", "fp32", "--calib", "32", "--no-verify", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "manifest.json" in done.stdout and "16,384 B unpooled fp32 tokens" in done.stdout
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert {a["target"] for a in manifest["artifacts"]} == {"executorch", "coreml", "tflite", "torchscript", "triton", "reference"}


def test_export_whose_heldout_data_is_gone_says_how_to_verify(tmp_path):
    from dtconvert.train import train
    from tests.test_imagefolder import _make_folder, _recipe

    root = _make_folder(tmp_path / "data")
    train(_recipe(root), tmp_path / "run", show_progress=False)
    calib = shutil.copytree(root / "zero", tmp_path / "calib")
    for i, f in enumerate(sorted((root / "one").glob("*.png"))[:12]):
        shutil.copy(f, calib / f"extra{i}.png")
    shutil.rmtree(root)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run" / "ckpt.pt"), "--target", "tflite", "--calib", str(calib),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "--no-verify" in result.stderr and "dtconvert verify" in result.stderr and "--data DIR" in result.stderr
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run" / "ckpt.pt"), "--target", "tflite", "--calib", str(calib),
                                      "--no-verify", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert manifest_of(tmp_path / "out")["verification"] is None
