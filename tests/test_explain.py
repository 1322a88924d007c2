"""When parity fails: ``verify --explain`` names the layer, ``--keep-float`` fixes it, ``--precision auto`` finds it.

A planted sensitive model: the shipped digits model with an outlier channel fed into device
layer 1's second MLP linear layer (``plant_outlier``: its fp32 function unchanged), which the
default int8 cannot hold.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_one_line_error, built_once, plant_outlier, run_cli

pytestmark = pytest.mark.slow

PLANTED = "layers.1.ffn"
TARGETS = ["executorch", "coreml", "tflite"]


@pytest.fixture(scope="session")
def planted_ckpt(digits_ckpt, tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "planted", lambda folder: plant_outlier(digits_ckpt, folder / "ckpt.pt"))


@pytest.fixture(scope="session")
def planted_export(planted_ckpt, tmp_path_factory) -> Path:
    """The default int8 export of the planted model, verified (and so explained) as export does."""
    from dtconvert.export import run_export

    return built_once(tmp_path_factory, "export-planted", lambda folder: run_export(planted_ckpt, TARGETS, calib="32", out=folder / "planted")[0])


def _wire(ckpt: Path) -> np.ndarray:
    from dtconvert.checkpoint import build_model, load_checkpoint
    from dtconvert.data import checkpoint_images

    loaded = load_checkpoint(ckpt)
    images, _ = checkpoint_images(loaded, "heldout")
    with torch.no_grad():
        return build_model(loaded).encode(torch.from_numpy(images)).numpy()


def test_planting_leaves_the_fp32_function_unchanged(digits_ckpt, planted_ckpt, tmp_path):
    healthy, planted = _wire(digits_ckpt), _wire(planted_ckpt)
    assert np.abs(planted - healthy).max() <= 1e-4 * np.abs(healthy).max()
    # Twin: without fc2's compensation the same check sees the change.
    broken = _wire(plant_outlier(digits_ckpt, tmp_path / "broken.pt", compensate=False))
    assert np.abs(broken - healthy).max() > 1e-2 * np.abs(healthy).max()


def test_default_int8_fails_and_explain_names_the_planted_layer(planted_export):
    from tests.conftest import manifest_of

    verification = manifest_of(planted_export)["verification"]
    assert not verification["passed"]
    explanation = verification["explanation"]  # a failed gate explains itself
    assert explanation["culprit"] == PLANTED
    inside = [v for v in explanation["views"] if v["inside"]]
    assert {v["runtime"] for v in inside} == {"pt2e program", "MIL reference", "LiteRT reference kernels"}
    for view in inside:
        assert view["first_below"] == PLANTED, view
        assert view["sqnr_db"][PLANTED] < view["floor_db"] <= view["sqnr_db"]["layers.1.attn"], view
    assert f"--keep-float {PLANTED}" in explanation["advice"]


@pytest.mark.parametrize("export", ["int8_export", "other_int8_export"])
def test_explain_on_a_healthy_export_names_no_layer(export, request):
    """The shipped digits model, and a one-epoch model of a shape no recipe uses (three tasks, 12×12, width 32)."""
    from dtconvert.verify import verify_export

    report = verify_export(request.getfixturevalue(export), limit=100, explain=True, log=lambda line: None)
    assert report.passed
    explanation = report.explanation
    assert explanation["culprit"] is None
    assert all(v["first_below"] is None for v in explanation["views"]), explanation["views"]
    assert "no point" in explanation["advice"]


def test_keep_float_passes_the_gate_on_every_target(planted_ckpt, tmp_path):
    from dtconvert.export import run_export

    _, manifest = run_export(planted_ckpt, TARGETS, calib="32", out=tmp_path / "kept", keep_float=(PLANTED,))
    verification = manifest["verification"]
    assert verification["passed"], verification["failed"]
    devices = [e for e in manifest["artifacts"] if e["part"] == "device"]
    assert {e["target"] for e in devices} == set(TARGETS)
    for entry in devices:
        assert entry["keep_float"] == {"patterns": [PLANTED], "modules": [f"{PLANTED}.fc1", f"{PLANTED}.fc2"]}
    # verify read the float weights back from each artifact, and each is still whole in its delegate
    assert verification["checks"] > 0


def test_kept_float_check_fails_when_the_artifact_is_int8(planted_export, tmp_path):
    """The twin: a manifest that claims a kept layer which the artifact holds in int8."""
    from dtconvert.manifest import load_manifest, write_manifest
    from dtconvert.verify import verify_export

    lying = tmp_path / "lying"
    shutil.copytree(planted_export, lying)
    manifest = load_manifest(lying)
    for entry in manifest["artifacts"]:
        if entry["part"] == "device":
            entry["keep_float"] = {"patterns": [PLANTED], "modules": [f"{PLANTED}.fc1", f"{PLANTED}.fc2"]}
    write_manifest(lying, manifest)
    report = verify_export(lying, limit=20, explain=False, log=lambda line: None)
    kept = [c for c in report.checks if c.check == "kept float"]
    assert len(kept) == len(TARGETS)
    assert not any(c.passed for c in kept), kept
    assert all(f"{PLANTED}.fc1" in c.detail for c in kept)


def test_keep_float_of_a_module_that_does_not_exist_is_one_line(quick_ckpt, tmp_path):
    done = run_cli("export", str(quick_ckpt), "--keep-float", "layers.9.ffn", "--out", str(tmp_path / "x"))
    assert_one_line_error(done, "--keep-float 'layers.9.ffn'", "layers.1.ffn", "bottleneck")
    assert not (tmp_path / "x").exists()


def test_precision_auto_finds_the_planted_layer(planted_ckpt, tmp_path):
    from dtconvert.auto import run_auto

    result = run_auto(planted_ckpt, ["executorch"], calib="32", out=tmp_path / "auto", max_float=3)
    assert len(result.attempts) <= 3
    assert not result.attempts[0].passed and result.attempts[0].culprit == PLANTED
    assert result.attempts[-1].passed
    assert result.kept == (PLANTED,)
    assert result.manifest["verification"]["passed"]
    assert result.attempts[-1].bytes["executorch"] > result.attempts[0].bytes["executorch"]  # float weights cost bytes


def test_verify_explain_prints_the_table(int8_export):
    done = run_cli("verify", str(int8_export), "--explain", "--limit", "10")
    assert done.returncode == 0, done.stderr
    assert "where the device encoder parts from fp32" in done.stdout
    assert "layers.1.ffn" in done.stdout and "LiteRT reference kernels" in done.stdout
    assert "no point of the device encoder is below the floor" in done.stdout


@pytest.mark.parametrize("extra", [["--keep-float", "layers.1.ffn"], ["--no-verify"]])
def test_precision_auto_refuses_what_it_cannot_honour(quick_ckpt, tmp_path, extra):
    done = run_cli("export", str(quick_ckpt), "--precision", "auto", *extra, "--out", str(tmp_path / "x"))
    assert_one_line_error(done, "--precision auto")
    assert not (tmp_path / "x").exists()


def test_an_automatic_explanation_that_fails_keeps_the_gates_verdict(tmp_path):
    """A failed gate explains itself when it can; when it cannot, one logged line, and the gate's
    own result stands. Asked for with --explain, the same failure is the user's error."""
    from dtconvert.errors import UserError
    from dtconvert.verify import _explain

    manifest = {"data": {"recipe": {}}, "tasks": [], "artifacts": [], "wire": {"scale": 0.1, "zero_point": 0}, "precision": "int8"}
    lines: list[str] = []
    assert _explain(tmp_path, manifest, np.zeros((1, 1, 8, 8), np.float32), None, lines.append, asked=False) is None
    assert len(lines) == 1 and lines[0].startswith("✗ could not explain") and "--explain" in lines[0]
    with pytest.raises(UserError, match="does not describe a model"):
        _explain(tmp_path, manifest, np.zeros((1, 1, 8, 8), np.float32), None, lines.append, asked=True)


def test_explain_goes_on_past_a_runtime_that_cannot_run_the_artifact(int8_export, monkeypatch):
    """The MIL reference lacking an op the program uses: its view says why, the others still look inside."""
    import dtconvert.mil_reference as mil
    from dtconvert.verify import verify_export

    monkeypatch.setattr(mil, "SUPPORTED_OPS", frozenset(mil.SUPPORTED_OPS - {"softmax"}))
    report = verify_export(int8_export, limit=8, explain=True, log=lambda line: None)
    views = {v["runtime"]: v for v in report.explanation["views"]}
    assert views["MIL reference"]["sqnr_db"] == {} and "could not run" in views["MIL reference"]["sees"]
    assert "softmax" in views["MIL reference"]["sees"]
    assert views["LiteRT reference kernels"]["inside"] and "layers.1.ffn" in views["LiteRT reference kernels"]["sqnr_db"]
