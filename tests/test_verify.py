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
    # --no-explain: these tests are about the gate's checks; tests/test_explain.py has the explanation.
    result = CliRunner().invoke(app, ["verify", str(export_dir), "--no-explain", *args], env={"COLUMNS": "200"})
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
    assert verification["samples"] == 1797 and verification["sets"] == {"held-out": 360, "rest": 1437}


def test_verify_passes_with_json_and_junit(int8_export, tmp_path):
    result = _verify(int8_export, "--json", str(tmp_path / "v.json"), "--junit", str(tmp_path / "v.xml"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["samples"] == 1797 and report["sets"] == {"held-out": 360, "rest": 1437}
    for artifact, per_runtime in report["metrics"].items():
        for runtime, numbers in per_runtime.items():
            if runtime != "TorchScript":
                assert set(numbers["wire"]) == {"max_abs", "cosine", "sqnr_db", "n"} and numbers["wire"]["n"] == 1797
            for task in ("digit", "odd"):
                values = numbers["tasks"][task]
                assert {s: v["n"] for s, v in values["agreement"].items()} == {"held-out": 360, "rest": 1437}
                assert all(v["passed"] and 0 <= v["interval"][0] <= v["rate"] <= v["interval"][1] for v in values["agreement"].values())
                assert values["logit_sqnr_db"] >= 35 and values["softmax_kl"] <= 1e-3
                assert {"accuracy", "fp32_accuracy", "accuracy_change_points", "mcnemar"} <= set(values) and values["accuracy_n"] == 360
    suite = ElementTree.parse(tmp_path / "v.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == len(report["checks"]) and suite.get("failures") == "0"
    # JUnit carries the numbers behind each decision: n, flips, interval and p-value.
    agreement = next(case for case in suite.iter("testcase") if "top-1 agreement [digit]" in case.get("name"))
    properties = {p.get("name"): p.get("value") for p in agreement.iter("property")}
    assert {"sets.held-out.n", "sets.held-out.flips", "sets.held-out.p_value", "sets.rest.n", "alpha"} <= set(properties)
    assert properties["sets.held-out.n"] == "360"
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


def test_wire_quantization_rounds_half_to_even_and_clamps_by_hand():
    from dtconvert.wire import quantize_wire

    # scale 0.5, zero point −2: x/scale = 0.5 → 0 (half to even), 1.5 → 2, 2.5 → 2, then + zp; ±100 clamp.
    x = np.array([0.25, 0.75, 1.25, -0.75, 100.0, -100.0, 63.0], dtype=np.float32)
    assert quantize_wire(x, 0.5, -2).tolist() == [-2, 0, 0, -4, 127, -128, 124]


def test_twin_the_golden_wire_check_fails_on_an_off_by_one_byte(int8_export, tmp_path):
    manifest = manifest_of(int8_export)
    wire = np.load(int8_export / "golden" / "wire_fp32.npy").astype(np.float64)
    q = np.load(int8_export / "golden" / "wire_int8.npy").astype(np.int64)
    scale, zero_point = manifest["wire"]["scale"], manifest["wire"]["zero_point"]
    shifted = np.clip(q + 1, -128, 127)  # what a ceil instead of round would write, roughly
    assert not np.all(np.abs((shifted - zero_point) * scale - wire) <= scale / 2 + 1e-6)


def test_bad_tolerance_file_exits_2(int8_export, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tflite:\n  int8:\n    min_agreement: 0.9\n")
    result = _verify(int8_export, "--tolerance", str(bad))
    assert result.exit_code == 2 and "unknown bound 'min_agreement'" in result.stderr


def test_golden_files_match_the_artifacts(int8_export):
    import torch

    from tests.conftest import artifact

    golden = int8_export / "golden"
    manifest = manifest_of(int8_export)
    wire = np.load(golden / "wire_fp32.npy").astype(np.float64)
    q = np.load(golden / "wire_int8.npy")
    scale, zero_point = manifest["wire"]["scale"], manifest["wire"]["zero_point"]
    # The formula the manifest states, checked by its own definition, not by the code that wrote it:
    # inside the int8 range each byte dequantizes to within half a step of the float; outside it clamps.
    assert q.dtype == np.int8 and q.shape == wire.shape
    exact = wire / scale + zero_point
    inside = (exact > -128.5) & (exact < 127.5)
    assert np.all(np.abs((q[inside].astype(np.float64) - zero_point) * scale - wire[inside]) <= scale / 2 + 1e-6)
    assert np.all(q[exact <= -128.5] == -128) and np.all(q[exact >= 127.5] == 127)
    images = np.load(golden / "input.npy")
    assert images.shape == (8, 1, 16, 16) and np.load(golden / "image_uint8.npy").shape == (8, 8, 8)
    # The preprocessing an app must implement turns the raw images into the golden input exactly.
    from dtconvert.data import normalize, resize_unit_images

    raw = torch.from_numpy(np.load(golden / "image_uint8.npy")).float().div(255).unsqueeze(1)
    assert np.allclose(normalize(resize_unit_images(raw, 16, "bilinear"), [0.5], [0.5]).numpy(), images, atol=1e-6)
    from dtconvert.targets.tflite import make_runner

    run = make_runner(artifact(int8_export, "tflite")[0])
    assert np.abs(run(images[:1]) - wire[:1]).max() < 0.5


# ---- how the gate decides (issue: a gate that never cries wolf and never sleeps) --------------


@pytest.fixture(scope="module")
def quick_report(quick_int8_export, tmp_path_factory):
    """verify on the one-epoch model's default int8 export (the least confident model there is:
    it flips the most), --json and --junit."""
    folder = tmp_path_factory.mktemp("quick-verify")
    result = _verify(quick_int8_export, "--json", str(folder / "v.json"), "--junit", str(folder / "v.xml"))
    return result, json.loads((folder / "v.json").read_text()), folder


def _reference_logits(export_dir: Path, images: np.ndarray) -> dict:
    import torch

    from dtconvert.targets.torchscript import load_decoder

    manifest = manifest_of(export_dir)
    reference = load_decoder(export_dir / next(e["path"] for e in manifest["artifacts"] if e["target"] == "reference"))
    with torch.no_grad():
        outputs = reference(torch.from_numpy(images))
    return {t["name"]: o.numpy() for t, o in zip(manifest["tasks"], outputs[1:], strict=True)}


def test_every_disagreement_is_listed_with_the_fp32_models_own_margins(quick_int8_export, quick_report):
    from dtconvert.verify import verification_data

    _, report, _ = quick_report
    data = verification_data(manifest_of(quick_int8_export), None, False, None)
    reference = _reference_logits(quick_int8_export, data.images)
    row = {(s, int(i)): r for r, (s, i) in enumerate(zip(data.sets, data.index, strict=True))}
    listed = 0
    for per_runtime in report["metrics"].values():
        for numbers in per_runtime.values():
            for task, values in numbers["tasks"].items():
                flips = sum(s["flips"] for s in values["agreement"].values())
                assert len(values["disagreements"]) == flips
                for d in values["disagreements"]:
                    logits = reference[task][row[(d["set"], d["index"])]]
                    top, runner_up = np.argsort(-logits)[:2]
                    assert (d["fp32_class"], d["fp32_runner_up"]) == (top, runner_up) and d["artifact_class"] != top
                    assert d["fp32_margin"] == pytest.approx(logits[top] - logits[runner_up], abs=1e-4)
                    assert d["near_tie"] == (d["fp32_margin"] <= 3 * values["margin_noise"])
                listed += flips
    assert listed > 0, "the one-epoch model flips some images under int8: nothing here was exercised"


def test_twin_a_perturbed_artifact_adds_far_more_margin_noise_and_fails(quick_int8_export, quick_report, tmp_path):
    from tensorflow.lite.tools import flatbuffer_utils

    copy = _copy(quick_int8_export, tmp_path)
    path = next(copy.glob("*.tflite"))
    model = flatbuffer_utils.read_model(str(path))
    largest = max(model.buffers, key=lambda b: 0 if b.data is None else len(b.data))
    largest.data = (-np.asarray(largest.data).view(np.int8)).view(np.uint8)
    flatbuffer_utils.write_model(model, str(path))
    _rehash(copy, "tflite")
    result = _verify(copy, "--json", str(tmp_path / "v.json"), "--limit", "120")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "v.json").read_text())
    tflite = report["metrics"][path.name]["LiteRT XNNPACK"]["tasks"]["digit"]
    healthy = quick_report[1]["metrics"][path.name]["LiteRT XNNPACK"]["tasks"]["digit"]
    # A near-tie is judged against the noise the artifact adds: this one adds over ten times more.
    assert tflite["margin_noise"] > 10 * healthy["margin_noise"]
    assert len(tflite["disagreements"]) > 5 * max(1, len(healthy["disagreements"]))
    failed = _failed(report)
    assert (path.name, "LiteRT XNNPACK", "logit fidelity [digit]") in failed
    assert (path.name, "LiteRT XNNPACK", "top-1 agreement [digit]") in failed
    assert not any(a.endswith(".pte") for a, _, _ in failed)


def test_agreement_is_measured_on_every_image_and_each_number_carries_n(quick_report):
    result, report, folder = quick_report
    assert report["sets"] == {"held-out": 360, "rest": 1437}
    for c in report["checks"]:
        if c["check"].startswith("top-1 agreement"):
            assert "held-out" in c["detail"] and "/360 flips" in c["detail"] and "/1437 flips" in c["detail"] and "p = " in c["detail"]
            assert {s: v["n"] for s, v in c["numbers"]["sets"].items()} == {"held-out": 360, "rest": 1437}
        if c["check"].startswith(("logit fidelity", "wire")):
            assert "n = 1797" in c["detail"]
        if c["check"].startswith("accuracy drop"):
            assert "n = 360" in c["detail"] and "McNemar p = " in c["detail"]


def test_logit_fidelity_floor_and_kl_ceiling_can_fail(quick_int8_export, tmp_path):
    """Twin of the passing healthy export: the same artifacts held to an impossible floor fail
    the logit check (and only it), with the measured number next to the bound."""
    strict = tmp_path / "strict.yaml"
    strict.write_text("executorch:\n  int8:\n    min_logit_sqnr_db: 200\n")
    result = _verify(quick_int8_export, "--tolerance", str(strict), "--limit", "30", "--json", str(tmp_path / "v.json"))
    assert result.exit_code == 1
    failed = _failed(json.loads((tmp_path / "v.json").read_text()))
    assert failed and {(r, c.split(" [")[0]) for _, r, c in failed} == {("ExecuTorch XNNPACK", "logit fidelity")}
    strict.write_text("tflite:\n  int8:\n    max_softmax_kl: 0\n")
    result = _verify(quick_int8_export, "--tolerance", str(strict), "--limit", "30", "--json", str(tmp_path / "v.json"))
    failed = _failed(json.loads((tmp_path / "v.json").read_text()))
    assert result.exit_code == 1 and {c.split(" [")[0] for _, _, c in failed} == {"logit fidelity"}


def test_shifted_normalization_mean_fails_the_preprocessing_check(quick_int8_export, tmp_path):
    """Both sides of every other check preprocess with the manifest's mean: only this one sees it."""
    copy = _copy(quick_int8_export, tmp_path)
    manifest = manifest_of(copy)
    manifest["device_input"]["preprocessing"]["mean"] = [m + 0.25 for m in manifest["device_input"]["preprocessing"]["mean"]]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = _verify(copy, "--json", str(tmp_path / "v.json"), "--limit", "40")
    assert result.exit_code == 1
    failed = _failed(json.loads((tmp_path / "v.json").read_text()))
    assert ("manifest", "-", "preprocessing") in failed


def test_twin_the_intact_preprocessing_passes(quick_report):
    _, report, _ = quick_report
    check = next(c for c in report["checks"] if c["check"] == "preprocessing")
    assert check["passed"] and "max abs" in check["detail"] and "recorded at training" in check["detail"]


def test_data_folder_adds_a_set_to_the_digits(quick_int8_export, tmp_path):
    from PIL import Image

    from dtconvert.data import digits_uint8

    images, digits = digits_uint8()
    for i in range(40):
        folder = tmp_path / "imgs" / str(digits[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    result = _verify(quick_int8_export, "--digits", "--data", str(tmp_path / "imgs"), "--limit", "20", "--json", str(tmp_path / "v.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["sets"] == {"held-out": 20, "rest": 20, "folder": 20}
    agreement = next(c for c in report["checks"] if c["check"] == "top-1 agreement [digit]")
    assert set(agreement["numbers"]["sets"]) == {"held-out", "rest", "folder"}


def test_verify_prints_nothing_from_third_party_libraries(quick_int8_export, tmp_path):
    from tests.conftest import run_cli

    copy = _copy(quick_int8_export, tmp_path)
    done = run_cli("verify", str(copy), "--limit", "20")
    assert done.returncode == 0, done.stderr
    ours = ("✓ ", "all ", "│", "┃", "┏", "┡", "└", "dtconvert verify", "disagreements with the fp32 model", "┗", "━")
    foreign = [line for line in (done.stdout + done.stderr).splitlines() if line.strip() and not line.lstrip().startswith(ours)]
    assert not foreign, foreign
    # Twin: the libraries did speak; their lines are in the export's log, not lost.
    log = (copy / "export.log").read_text()
    assert "===== verify" in log and ("libcoremlpython" in log or "TensorFlow" in log or "XNNPACK" in log), log[-2000:]


def test_a_pickled_golden_file_is_a_failed_check_not_a_traceback(quick_int8_export, tmp_path):
    """The export is untrusted: a golden array that needs pickle to load, with a matching hash."""
    from dtconvert.checkpoint import sha256_file

    copy = _copy(quick_int8_export, tmp_path)
    raw = copy / "golden" / "image_uint8.npy"
    np.save(raw, np.array([{"not": "pixels"}], dtype=object), allow_pickle=True)
    manifest = manifest_of(copy)
    manifest["golden"]["files"]["image_uint8.npy"] = sha256_file(raw)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = _verify(copy, "--json", str(tmp_path / "v.json"), "--limit", "20")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("manifest", "-", "preprocessing") in _failed(json.loads((tmp_path / "v.json").read_text()))


def test_arm64_distance_from_x86_counts_what_moved_and_twin():
    """verify --arch arm64's vs_x86 numbers, on hand-made wires: identical, then one value a step off."""
    from dtconvert.verify.arm64 import distance

    x86 = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    same = distance(x86.copy(), x86, scale=0.01, zero_point=0)
    assert same == {"max_abs": 0.0, "sqnr_db": None, "int8_values_moved": 0, "int8_values": 64}
    arm = x86.copy()
    arm[0, 3, 3] += 0.01  # one int8 step at this scale
    moved = distance(arm, x86, scale=0.01, zero_point=0)
    assert moved["int8_values_moved"] == 1 and abs(moved["max_abs"] - 0.01) < 1e-6
    assert moved["sqnr_db"] == round(10 * np.log10(float((x86.astype(np.float64) ** 2).sum()) / 0.01**2), 2)
