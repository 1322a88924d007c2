"""Quantization-aware device tuning for int8-static (dtconvert train --tune qat, dtconvert/qat.py).

A one-epoch QAT of the one-epoch digits checkpoint (seconds): the cloud stays bit for bit, the
checkpoint records the ranges it learned, export quantizes ExecuTorch and Core ML with exactly
those ranges, verify holds the artifacts to the QAT floor, and one cloud serves both variants.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import RECIPES, assert_one_line_error, built_once, manifest_of, run_cli


@pytest.fixture(scope="module")
def qat_ckpt(quick_ckpt, tmp_path_factory) -> Path:
    from dtconvert.recipe import load_recipe
    from dtconvert.train import train

    def build(out: Path) -> Path:
        train(
            dataclasses.replace(load_recipe(RECIPES / "digits.yaml"), qat_epochs=1), out, init=quick_ckpt, tune="qat", show_progress=False
        )
        return out / "ckpt.pt"

    return built_once(tmp_path_factory, "qat", build)


@pytest.fixture(scope="module")
def qat_export(qat_ckpt, tmp_path_factory) -> Path:
    from dtconvert.export import run_export

    out = tmp_path_factory.mktemp("qat-export") / "export"
    run_export(qat_ckpt, ["executorch", "coreml"], precision="int8-static", out=out, verify=False)
    return out


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _images(ckpt: dict, count: int = 64) -> np.ndarray:
    from dtconvert.data import checkpoint_images

    return checkpoint_images(ckpt, "heldout", count)[0]


def _program(ckpt: dict, ranges: dict | None):
    """The int8-static ExecuTorch program of a checkpoint, with learned or freshly calibrated ranges."""
    from dtconvert.checkpoint import build_model
    from dtconvert.data import calibration_images
    from dtconvert.targets.executorch import prepare

    encoder = build_model(ckpt).encoder.eval()
    calibration, _ = calibration_images(ckpt, None)
    return prepare(encoder, torch.from_numpy(calibration[:1]), calibration, "int8-static", ranges=ranges)


def _activation_scales(module) -> list[float]:
    """The scale of every per-tensor quantize op in a converted pt2e program."""
    scales = []
    for node in module.graph.nodes:
        if node.target == torch.ops.quantized_decomposed.quantize_per_tensor.default:
            scale = node.args[1]
            scales.append(float(getattr(module, scale.target) if hasattr(scale, "target") else scale))
    return scales


def _expected_scales(ranges: dict) -> set[float]:
    """int8 per-tensor affine (−128…127) over [min(min, 0), max(max, 0)], as the observer computes it."""
    return {round((max(r["max"], 0.0) - min(r["min"], 0.0)) / 255.0, 7) for r in ranges.values()}


def test_qat_keeps_the_cloud_and_records_what_it_learned(quick_ckpt, qat_ckpt):
    from dtconvert.qat import cloud_sha256

    parent, child = _load(quick_ckpt), _load(qat_ckpt)
    decoder = [k for k in parent["state_dict"] if k.startswith("decoder.")]
    assert all(torch.equal(parent["state_dict"][k], child["state_dict"][k]) for k in decoder)
    encoder = [k for k in parent["state_dict"] if k.startswith("encoder.")]
    assert any(not torch.equal(parent["state_dict"][k], child["state_dict"][k]) for k in encoder), "QAT trained nothing"
    qat = child["qat"]
    assert qat["scheme"] == "int8-static" and qat["epochs"] == 1 and child["init"]["tune"] == "qat"
    assert qat["cloud_sha256"] == cloud_sha256(parent["state_dict"])
    assert len(qat["ranges"]) > 40 and all(r["min"] < r["max"] for r in qat["ranges"].values())
    assert set(qat["heldout"]) == {"int8_static_simulated", "fp32", "wire_sqnr_db"} and qat["heldout"]["wire_sqnr_db"] > 20
    assert child["metrics"]["heldout"] == qat["heldout"]["fp32"]
    from dtconvert.describe import describe

    assert describe(qat_ckpt)["qat"]["activation_ranges"] == len(qat["ranges"]) and "qat" not in describe(quick_ckpt)
    assert qat["cost_vs_parent"] == pytest.approx(qat["train_seconds"] / parent["metrics"]["train_seconds"], rel=1e-2)
    # twin: the digest sees one moved cloud weight
    moved = dict(parent["state_dict"])
    moved[decoder[0]] = moved[decoder[0]] + 1e-6
    assert cloud_sha256(moved) != qat["cloud_sha256"]


def test_export_quantizes_with_the_learned_ranges(qat_ckpt):
    """Structure: every activation scale of the ExecuTorch program is one the checkpoint learned;
    twin: recalibrated from scratch, the scales are the calibration's, not the checkpoint's."""
    ckpt = _load(qat_ckpt)
    learned = _expected_scales(ckpt["qat"]["ranges"])
    used = {round(s, 7) for s in _activation_scales(_program(ckpt, ckpt["qat"]["ranges"]))}
    assert used and used <= learned, sorted(used - learned)[:5]
    recalibrated = {round(s, 7) for s in _activation_scales(_program(ckpt, None))}
    assert not recalibrated <= learned


def test_the_learned_ranges_are_what_the_wire_depends_on(qat_ckpt):
    """Numbers: the program with the learned ranges against the checkpoint's fp32 encoder; twin:
    the same ranges widened 4× (two bits of resolution lost) costs at least 6 dB."""
    from dtconvert.checkpoint import build_model
    from dtconvert.metrics import sqnr_db

    ckpt = _load(qat_ckpt)
    x = torch.from_numpy(_images(ckpt))
    with torch.no_grad():
        want = build_model(ckpt).encoder.eval()(x).numpy()
        learned = sqnr_db(_program(ckpt, ckpt["qat"]["ranges"])(x).numpy(), want)
        wide = {k: {**r, "min": 4 * r["min"], "max": 4 * r["max"]} for k, r in ckpt["qat"]["ranges"].items()}
        widened = sqnr_db(_program(ckpt, wide)(x).numpy(), want)
    assert learned > 25.0, learned
    assert widened < learned - 6.0, (learned, widened)


def test_ranges_that_do_not_fit_the_graph_are_refused(qat_ckpt):
    from dtconvert.errors import UserError

    ckpt = _load(qat_ckpt)
    ranges = dict(ckpt["qat"]["ranges"])
    ranges.pop(next(iter(ranges)))
    with pytest.raises(UserError, match="retrain"):
        _program(ckpt, ranges)
    ranges = dict(ckpt["qat"]["ranges"])
    first = next(k for k, r in ranges.items() if r["observes"].startswith("linear"))
    ranges[first] = {**ranges[first], "observes": "conv2d"}
    with pytest.raises(UserError, match="learned on 'conv2d'"):
        _program(ckpt, ranges)


def test_manifest_records_qat_and_verify_holds_it_to_the_floor(qat_export, static_export):
    from dtconvert.verify import verify_export

    manifest = manifest_of(qat_export)
    by_target = {e["target"]: e for e in manifest["artifacts"] if e["part"] == "device"}
    assert by_target["executorch"]["quantization"]["qat"]["ranges"] == "learned"
    assert by_target["coreml"]["quantization"]["qat"]["ranges"] == "learned"
    assert by_target["executorch"]["quantization"]["qat"]["activations"] > 40
    report = verify_export(qat_export, log=lambda line: None, explain=False)
    wires = [c for c in report.checks if c.check == "wire"]
    assert len(wires) == 2 and all("bound ≥ 38.0 dB" in c.detail for c in wires), [c.detail for c in wires]
    assert all(c.passed == (c.numbers["sqnr_db"] >= 38.0) for c in wires)
    # twin: a plain int8-static export (no QAT) is reported, not held to a floor
    plain = verify_export(static_export, log=lambda line: None, explain=False)
    plain_wires = [c for c in plain.checks if c.check == "wire"]
    assert plain_wires and all("dB (bound" not in c.detail for c in plain_wires), [c.detail for c in plain_wires]


def test_one_cloud_serves_the_parent_and_its_qat_variant(qat_export, quick_int8_export):
    from dtconvert.cloud import SharedCloud

    cloud = SharedCloud([quick_int8_export, qat_export])
    assert len(cloud.variants) == 2
    wire = np.random.default_rng(0).integers(-128, 128, size=(2, *cloud.token_shape)).astype(np.int8)
    parent, child = (cloud.variants[manifest_of(d)["model"]["id"]] for d in (quick_int8_export, qat_export))
    a, b = cloud.logits(wire, [parent, child])
    assert len(a) == len(b) == 2


def test_a_qat_checkpoint_whose_cloud_moved_is_refused(qat_ckpt, tmp_path):
    from dtconvert.checkpoint import save_checkpoint

    ckpt = _load(qat_ckpt)
    key = next(k for k in ckpt["state_dict"] if k.startswith("decoder.trunk"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] * 1.01
    save_checkpoint(tmp_path / "moved.pt", ckpt)
    done = run_cli(
        "export", str(tmp_path / "moved.pt"), "--target", "executorch", "--precision", "int8-static", "--out", str(tmp_path / "x")
    )
    assert_one_line_error(done, "moved.pt", "not the one it was quantization-aware trained against")
    assert not (tmp_path / "x").exists()


def test_qat_bad_input_is_one_line(quick_ckpt, qat_ckpt, tmp_path):
    done = run_cli("train", "digits", "--tune", "qat", "--out", str(tmp_path / "a"))
    assert_one_line_error(done, "needs --init")
    done = run_cli("train", "digits-tune", "--init", str(quick_ckpt), "--tune", "qat", "--out", str(tmp_path / "b"))
    assert_one_line_error(done, "--tune qat keeps the tasks", "mod3")
    copy = tmp_path / "qat.pt"
    shutil.copyfile(qat_ckpt, copy)
    done = run_cli(
        "export",
        str(copy),
        "--target",
        "executorch",
        "--precision",
        "int8-static",
        "--keep-float",
        "layers.0",
        "--out",
        str(tmp_path / "c"),
    )
    assert_one_line_error(done, "--keep-float", "QAT")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
