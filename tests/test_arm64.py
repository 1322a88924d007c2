"""Phone kernels without a phone: the digits export's ExecuTorch and LiteRT artifacts on emulated arm64.

The arm64 root (:mod:`dtconvert.targets.arm64`: Debian 12 arm64 under QEMU 10, the aarch64
executorch C++ runtime and ai-edge-litert) is built once into ~/.cache/dtconvert and reused. On
a machine that cannot build it (not Linux x86-64, not root) the tests skip and say why.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dtconvert.targets.arm64 import unsupported
from tests.conftest import artifact, assert_one_line_error, manifest_of, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unsupported() is not None, reason=str(unsupported()))]


@pytest.fixture(scope="module")
def root():
    from dtconvert.targets.arm64 import arm64_root

    return arm64_root()


@pytest.fixture(scope="module")
def arm_export(int8_export, tmp_path_factory):
    """The shipped digits export's ExecuTorch and LiteRT artifacts (Core ML does not run on arm64 Linux)."""
    out = tmp_path_factory.mktemp("arm") / "export"
    shutil.copytree(int8_export, out)
    return out


def test_profiles_show_the_features_xnnpack_chooses_kernels_by(root):
    a53, a76, top = root.features("a53"), root.features("a76"), root.features("max")
    assert "asimd" in a53 and "asimddp" not in a53  # Armv8.0: NEON only
    assert {"asimddp", "asimdhp"} <= set(a76) and "i8mm" not in a76  # Armv8.2: dot product
    assert {"asimddp", "i8mm", "sve2"} <= set(top)


def test_the_x86_runner_matches_executorchs_python_runtime(root, int8_export):
    """The x86 side of the ARM comparison is the same C++ runner, and it computes what the Python runtime does."""
    from dtconvert.targets import load_target, looped

    path, _ = artifact(int8_export, "executorch")
    images = np.load(int8_export / "golden" / "input.npy")
    python = looped(load_target("executorch").runner(path, "executorch"))(images)
    assert np.array_equal(root.executorch_x86(path, images), python)


def test_verify_on_arm64_passes_the_default_gate_on_two_profiles(arm_export, tmp_path):
    done = run_cli("verify", str(arm_export), "--arch", "arm64", "--cpu", "a53,a76", "--json", str(tmp_path / "v.json"),
                   "--junit", str(tmp_path / "v.xml"), timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "v.json").read_text())
    profiles = report["platforms"]["arm64"]["profiles"]
    assert set(profiles) == {"a53", "a76"} and "asimddp" in profiles["a76"]["features"] and "asimddp" not in profiles["a53"]["features"]
    for target in ("executorch", "tflite"):
        name = artifact(arm_export, target)[0].name
        for cpu in ("cortex-a53", "cortex-a76"):
            row = next(numbers for label, numbers in report["metrics"][name].items() if label.endswith(f"arm64 {cpu}"))
            assert row["wire"]["sqnr_db"] >= 38 and row["vs_x86"]["int8_values"] > 0
            checks = [c for c in report["checks"] if c["artifact"] == name and c["runtime"].endswith(f"arm64 {cpu}")]
            assert len(checks) >= 5 and all(c["passed"] for c in checks)
    runner = report["platforms"]["arm64"]["x86_64_runner_vs_python_runtime"]
    assert all(d["max_abs"] == 0.0 for d in runner.values())
    assert "arm64 cortex-a53" in (tmp_path / "v.xml").read_text()


def test_twin_a_wrong_wire_scale_fails_on_arm64_too(arm_export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(arm_export, broken)
    manifest = manifest_of(broken)
    manifest["wire"]["scale"] *= 50  # the device quantizes the wire 50× too coarsely: near-binary
    (broken / "manifest.json").write_text(json.dumps(manifest, indent=2))
    done = run_cli("verify", str(broken), "--arch", "arm64", "--cpu", "a53", "--limit", "60", "--no-explain",
                   "--json", str(tmp_path / "v.json"), timeout=1800)  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:]
    failed = [c for c in json.loads((tmp_path / "v.json").read_text())["checks"] if not c["passed"]]
    assert any(c["runtime"].endswith("arm64 cortex-a53") for c in failed), failed


def test_bad_arch_and_cpu_are_one_line(arm_export):
    assert_one_line_error(run_cli("verify", str(arm_export), "--arch", "riscv64"), "--arch", "arm64")
    assert_one_line_error(run_cli("verify", str(arm_export), "--arch", "arm64", "--cpu", "a53,m1"), "--cpu", "a53, a76, max")


def test_export_records_the_arm64_profiles_in_the_manifest(digits_ckpt, tmp_path):
    done = run_cli("export", str(digits_ckpt), "--target", "executorch", "--arch", "arm64", "--out", str(tmp_path / "e"), timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    verification = manifest_of(tmp_path / "e")["verification"]
    assert verification["passed"] and set(verification["platforms"]["arm64"]["profiles"]) == {"a53", "a76"}
    name = artifact(tmp_path / "e", "executorch")[0].name
    assert {label for label in verification["metrics"][name] if "arm64" in label} == {
        "ExecuTorch XNNPACK · arm64 cortex-a53", "ExecuTorch XNNPACK · arm64 cortex-a76"}  # fmt: skip
