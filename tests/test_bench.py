"""dtconvert bench: one real run on the digits int8 export, its JSON checked, and a twin for every check."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import pytest

from dtconvert.bench import parse_counts, time_interleaved, validate_report
from dtconvert.errors import UserError
from dtconvert.report.bench import markdown_tables
from tests.conftest import assert_one_line_error, manifest_of, run_cli

pytestmark = [pytest.mark.executorch, pytest.mark.tflite]


@pytest.fixture(scope="module")
def bench_export(int8_export):
    """The shipped digits recipe exported int8 to every target (shared with the export and verify tests)."""
    return int8_export


@pytest.fixture(scope="module")
def bench_run(bench_export, digits_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    done = run_cli("bench", str(bench_export), "--checkpoint", str(digits_ckpt), "--threads", "1", "--batch", "1,2",
                   "--runs", "3", "--warmup", "1", "--json", str(folder / "bench.json"), "--plot", str(folder / "bench.png"))
    assert done.returncode == 0, done.stderr
    return done, json.loads((folder / "bench.json").read_text()), folder


@pytest.mark.cli
def test_bench_writes_a_report_that_checks_out(bench_run):
    done, report, folder = bench_run
    assert validate_report(report) == []
    assert (folder / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ExecuTorch XNNPACK int8" in done.stdout and "× eager" in done.stdout
    assert not list(folder.glob(".*.tmp")), "a temporary file was left behind"


def test_every_runtime_at_every_batch(bench_run, bench_export):
    _, report, _ = bench_run
    rows = {(r["runtime"], r["batch"]): r for r in report["results"]}
    runtimes = {"PyTorch eager fp32", "ExecuTorch XNNPACK int8", "LiteRT XNNPACK int8", "TorchScript cloud decoder"}
    assert set(rows) == {(name, b) for name in runtimes for b in (1, 2)}
    manifest = manifest_of(bench_export)
    for (name, batch), r in rows.items():
        assert r["runs"] == 3 and 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
        if r["role"] == "baseline":
            assert r["ratio_to_eager_fp32"] == 1.0
        if r["role"] != "cloud":
            assert r["wire_bytes_per_image"] == manifest["wire"]["bytes_per_image"] == 64
            assert r["cosine_vs_fp32"] > 0.99, (name, batch, r["cosine_vs_fp32"])
            assert r["peak_rss_increase_bytes"] > 0, (name, batch)
        if r["role"] == "device":
            path = bench_export / r["artifact"]
            assert r["artifact_bytes"] == path.stat().st_size
    assert rows[("ExecuTorch XNNPACK int8", 2)]["how"] == "re-lowered at batch 2 from the checkpoint"
    note = next(n for n in rows[("ExecuTorch XNNPACK int8", 2)]["notes"] if n.startswith("re-lowered program"))
    assert float(note.rsplit(" ", 1)[1]) <= 1e-5, note  # same quantization as the shipped .pte
    assert rows[("LiteRT XNNPACK int8", 2)]["how"] in ("2 × batch-1 calls",) or "resized" in rows[("LiteRT XNNPACK int8", 2)]["how"]
    assert report["threads_effective"]["1"] == {"torch": 1, "litert": 1, "executorch": 1}
    # bench shows the delegate structure of what it timed: the default int8 runs whole in XNNPACK.
    for key in [("ExecuTorch XNNPACK int8", 1), ("ExecuTorch XNNPACK int8", 2), ("LiteRT XNNPACK int8", 1)]:
        assert (rows[key]["delegate_partitions"], rows[key]["ops_outside_delegate"]) == (1, 0), (key, rows[key]["notes"])
    assert rows[("ExecuTorch XNNPACK int8", 1)]["notes"][0] == "1 XNNPACK delegate call; ops outside the delegate: none"
    assert rows[("LiteRT XNNPACK int8", 1)]["notes"][0] == "1 XNNPACK partition; ops outside the delegate: none"
    assert rows[("PyTorch eager fp32", 1)]["delegate_partitions"] is None
    assert "| 1 |" in markdown_tables(report).splitlines()[2 + list(rows).index(("ExecuTorch XNNPACK int8", 1))]
    (coreml,) = report["coreml"]
    assert coreml["timed"] is False and "macOS" in coreml["note"]
    assert coreml["bytes"] == sum(f.stat().st_size for f in (bench_export / coreml["artifact"]).rglob("*") if f.is_file())
    assert coreml["ops_total"] > 0


# ---- twins: each check in validate_report fails on bad data -------------------------------------


def _device_row(report, runtime="ExecuTorch XNNPACK int8", batch=1):
    return next(r for r in report["results"] if r["runtime"] == runtime and r["batch"] == batch)


def test_twin_a_ratio_that_is_not_median_over_median_is_rejected(bench_run):
    report = copy.deepcopy(bench_run[1])
    _device_row(report)["ratio_to_eager_fp32"] *= 1.01
    assert any("ratio_to_eager_fp32" in p for p in validate_report(report))


def test_twin_a_baseline_median_change_breaks_every_ratio(bench_run):
    report = copy.deepcopy(bench_run[1])
    base = _device_row(report, "PyTorch eager fp32")
    base["median_ms"] = base["p90_ms"] = base["median_ms"] * 1.5
    base["images_per_s"] = base["batch"] * 1000.0 / base["median_ms"]
    flagged = [p for p in validate_report(report) if "ratio_to_eager_fp32" in p]
    devices = [r["runtime"] for r in report["results"] if r["role"] == "device" and r["batch"] == base["batch"]]
    assert len(flagged) == len(devices) == 2 and all(any(d in p for p in flagged) for d in devices)


def test_twin_artifact_bytes_that_differ_from_the_file_are_rejected(bench_run):
    report = copy.deepcopy(bench_run[1])
    _device_row(report, "LiteRT XNNPACK int8")["artifact_bytes"] += 1
    assert any("tflite" in p and "artifact_bytes" in p for p in validate_report(report))


def test_twin_a_changed_file_on_disk_is_caught(bench_run, bench_export, tmp_path):
    copied = tmp_path / "export"
    shutil.copytree(bench_export, copied)
    report = copy.deepcopy(bench_run[1])
    for r in [*report["results"], *report["coreml"]]:
        if r["export_dir"] == str(bench_export):
            r["export_dir"] = str(copied)
    report["exports"][0]["path"] = str(copied)
    assert validate_report(report) == []
    pte = copied / _device_row(report)["artifact"]
    pte.write_bytes(pte.read_bytes() + b"\0")
    assert any(".pte" in p and "the file has" in p for p in validate_report(report))


def test_twin_wire_bytes_that_differ_from_the_manifest_are_rejected(bench_run):
    report = copy.deepcopy(bench_run[1])
    _device_row(report)["wire_bytes_per_image"] = 256
    assert any("wire_bytes_per_image 256" in p for p in validate_report(report))


def test_twin_throughput_and_percentiles_are_checked(bench_run):
    report = copy.deepcopy(bench_run[1])
    row = _device_row(report, "LiteRT XNNPACK int8", 2)
    row["images_per_s"] *= 2
    other = _device_row(report)
    other["p90_ms"] = other["median_ms"] / 2
    problems = validate_report(report)
    assert any("images_per_s" in p for p in problems) and any("p90" in p for p in problems)


def test_twin_schema_rejects_a_cloud_row_with_a_ratio(bench_run):
    report = copy.deepcopy(bench_run[1])
    _device_row(report, "TorchScript cloud decoder")["ratio_to_eager_fp32"] = 1.0
    assert validate_report(report)[0].startswith("schema:")


# ---- pieces ---------------------------------------------------------------------------------------


def test_interleaving_rotates_who_goes_first():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    seconds = time_interleaved(calls, warmup=1, runs=3)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(v) == 3 and min(v) >= 0 for v in seconds.values())


def test_parse_counts():
    assert parse_counts("1, 2,2,8", "--batch") == [1, 2, 8]
    for bad in ("", "0", "1,x", "-1", "1.5"):
        with pytest.raises(UserError, match="--batch"):
            parse_counts(bad, "--batch")


@pytest.mark.cli
@pytest.mark.parametrize("argv", [["bench", "--help"], ["sweep", "--help"]])
def test_help_imports_no_heavy_library(argv):
    heavy = ("torch", "tensorflow", "executorch", "coremltools", "onnx", "sklearn", "matplotlib")
    code = (
        "import sys\nfrom dtconvert.cli import app\n"
        f"try:\n    app({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.cli
def test_bad_inputs_exit_2_with_one_line(tmp_path, bench_export, digits_ckpt):
    import torch

    other = tmp_path / "other.pt"
    ckpt = torch.load(digits_ckpt, weights_only=True)
    ckpt["metrics"]["epochs"] = 2  # a different file: its sha256 differs from the export's checkpoint
    torch.save(ckpt, other)
    cases = [
        (["bench", str(tmp_path / "missing")], ["missing", "not an export directory"]),
        (["bench", str(bench_export), "--threads", "1,x"], ["--threads", "positive integers"]),
        (["bench", str(bench_export), "--batch", "0"], ["--batch"]),
        (["bench", str(bench_export), "--plot", str(tmp_path / "plot.jpg")], ["--plot", "PNG"]),
        (["bench", str(bench_export), "--checkpoint", str(tmp_path / "absent.pt")], ["absent.pt", "no such checkpoint"]),
        (["bench", str(bench_export), "--checkpoint", str(other)], ["other.pt", "not the checkpoint"]),
    ]
    for argv, needles in cases:
        assert_one_line_error(run_cli(*argv), *needles)
    assert not list(tmp_path.glob("*.json"))
