"""dtconvert sweep: a two-configuration sweep on digits (one epoch each), its outputs checked, and twins.

Latency is measured at batches 1 and 2: a larger batch re-lowers the encoder (a stale argument
once crashed every sweep above batch 1, unnoticed while this test ran batch 1 alone).
"""

from __future__ import annotations

import copy
import csv
import json

import pytest

from dtconvert.errors import UserError
from dtconvert.sweep import (
    default_pool_at,
    parse_bottleneck,
    parse_pool_at,
    parse_wire,
    validate_sweep,
)
from tests.conftest import run_cli

pytestmark = [pytest.mark.executorch]


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    out = folder / "out"
    done = run_cli("sweep", "digits", "--pool-at", "1+2,1+2+3", "--bottleneck", "8", "--wire", "int8,fp32", "--epochs", "1",
                   "--batch", "1,2", "--runs", "3", "--calib", "32", "--out", str(out), cwd=folder)
    assert done.returncode == 0, done.stderr
    return done, json.loads((out / "sweep.json").read_text()), out


@pytest.mark.cli
def test_sweep_writes_every_output_atomically(sweep_run):
    done, report, out = sweep_run
    assert validate_sweep(report, out) == []
    assert sorted(p.name for p in out.iterdir()) == ["configs", "sweep.csv", "sweep.json", "sweep.md", "sweep.png"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging directory left behind"
    assert "[1/2] pool_at 1+2, bottleneck 8: training 1 epoch(s)" in done.stderr
    assert "| 1+2+3 | 8 | int8 | 8×8 | 64 |" in (out / "sweep.md").read_text()
    assert report["command"].startswith("dtconvert sweep digits --pool-at 1+2,1+2+3")


def test_rows_follow_the_model_and_the_files(sweep_run):
    _, report, out = sweep_run
    rows = {(r["config"], r["wire"]): r for r in report["rows"]}
    assert set(rows) == {(c, w) for c in ("pool-1+2_b8", "pool-1+2+3_b8") for w in ("int8", "fp32")}
    assert rows[("pool-1+2_b8", "int8")]["wire_bytes_per_image"] == 16 * 8
    assert rows[("pool-1+2+3_b8", "int8")]["wire_bytes_per_image"] == 8 * 8
    assert rows[("pool-1+2+3_b8", "fp32")]["wire_bytes_per_image"] == 8 * 8 * 4
    # Pooling adds no parameters but removes work.
    assert rows[("pool-1+2_b8", "int8")]["device_params"] == rows[("pool-1+2+3_b8", "int8")]["device_params"]
    assert rows[("pool-1+2_b8", "int8")]["device_flops"] > rows[("pool-1+2+3_b8", "int8")]["device_flops"] > 0
    for r in report["rows"]:
        assert (out / r["pte"]).stat().st_size == r["pte_bytes"]
        assert set(r["latency"]) == {"1", "2"} and r["latency"]["1"]["how"] == "exported .pte at batch 1"
        assert r["latency"]["2"]["median_ms"] > 0 and "batch 2" in r["latency"]["2"]["how"]
        if r["wire"] == "fp32":  # fp32 ExecuTorch is the fp32 model: at most one held-out image may flip
            assert all(abs(v) <= 100 / r["heldout_images"] + 1e-9 for v in r["accuracy_change_points"].values()), r
            assert r["verified"] is None
        else:
            assert isinstance(r["verified"], bool)
    assert {(s["from"], s["to"], s["wire"], s["batch"]) for s in report["funnel"]} == {
        ("pool-1+2_b8", "pool-1+2+3_b8", w, b) for w in ("int8", "fp32") for b in (1, 2)}
    with open(out / "sweep.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4
    for line in table:
        row = rows[(line["config"], line["wire"])]
        assert int(line["wire_bytes_per_image"]) == row["wire_bytes_per_image"]
        assert float(line["median_ms_b1"]) == pytest.approx(row["latency"]["1"]["median_ms"], abs=1e-5)


@pytest.fixture(scope="module")
def sweep_at_two_threads(tmp_path_factory):
    """The cheapest sweep that times anything (one configuration, fp32 wire, batch 1), at --threads 2."""
    folder = tmp_path_factory.mktemp("sweep-threads")
    out = folder / "out"
    done = run_cli("sweep", "digits", "--pool-at", "1+2+3", "--bottleneck", "8", "--wire", "fp32", "--epochs", "1",
                   "--batch", "1", "--runs", "3", "--threads", "2", "--out", str(out), cwd=folder)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "sweep.json").read_text())


def _timed_at(report, threads: int) -> list[str]:
    """Why the report's timing did not run at ``threads`` (empty when it did): the setting, and the
    thread counts torch and ExecuTorch's threadpool reported back when the rows were timed."""
    problems = []
    if report["settings"]["threads"] != threads:
        problems.append(f"settings.threads is {report['settings']['threads']}, not {threads}")
    for runtime, effective in report["settings"]["threads_effective"].items():
        if effective != threads:
            problems.append(f"{runtime} ran at {effective} threads, not {threads}")
    return problems


@pytest.mark.cli
def test_threads_reach_the_runtime_that_times_the_rows(sweep_at_two_threads):
    report = sweep_at_two_threads
    assert validate_sweep(report) == []
    assert "--threads 2" in report["command"]
    assert _timed_at(report, 2) == []
    assert report["settings"]["threads_effective"] == {"torch": 2, "executorch": 2}
    (row,) = report["rows"]
    assert row["latency"]["1"]["runs"] == 3 and row["latency"]["1"]["median_ms"] > 0


def test_twin_a_sweep_timed_at_another_thread_count_is_caught(sweep_at_two_threads, sweep_run):
    assert len(_timed_at(sweep_at_two_threads, 1)) == 3  # the setting and both runtimes
    assert _timed_at(sweep_run[1], 1) == []  # the default: one thread
    assert _timed_at(sweep_run[1], 2) != []


# ---- twins ------------------------------------------------------------------------------------------


def _row(report, config="pool-1+2+3_b8", wire="int8"):
    return next(r for r in report["rows"] if r["config"] == config and r["wire"] == wire)


def test_twin_wire_bytes_that_do_not_follow_the_shape_are_rejected(sweep_run):
    report = copy.deepcopy(sweep_run[1])
    _row(report, wire="fp32")["wire_bytes_per_image"] = 64  # fp32 counted as one byte per value
    assert any("wire_bytes_per_image 64" in p for p in validate_sweep(report))


def test_twin_a_token_count_that_ignores_pooling_is_rejected(sweep_run):
    report = copy.deepcopy(sweep_run[1])
    row = _row(report)
    row["wire_shape"] = [16, 8]
    row["wire_bytes_per_image"] = 128
    assert any("halved 3 times" in p for p in validate_sweep(report))


def test_twin_an_accuracy_change_that_is_not_the_difference_is_rejected(sweep_run):
    report = copy.deepcopy(sweep_run[1])
    row = _row(report)
    row["accuracy_change_points"]["digit"] += 1.0
    assert any("accuracy_change_points[digit]" in p for p in validate_sweep(report))


def test_twin_a_funnel_gain_that_is_not_the_throughput_ratio_is_rejected(sweep_run):
    report = copy.deepcopy(sweep_run[1])
    report["funnel"][0]["throughput_gain"] *= 1.5
    assert any("throughput_gain" in p for p in validate_sweep(report))


def test_twin_pte_bytes_are_checked_against_the_file(sweep_run):
    _, report, out = sweep_run
    report = copy.deepcopy(report)
    _row(report)["pte_bytes"] += 1
    assert any("pte_bytes" in p for p in validate_sweep(report, out))
    assert validate_sweep(report) == []  # without the files, only the numbers among themselves


def test_twin_throughput_is_checked_against_the_median(sweep_run):
    report = copy.deepcopy(sweep_run[1])
    _row(report)["latency"]["1"]["images_per_s"] *= 3
    assert any("images_per_s" in p for p in validate_sweep(report))


# ---- parsing and bad input --------------------------------------------------------------------------


def test_parsers():
    assert parse_pool_at("none, 1,2+1,1+2") == [(), (1,), (1, 2)]
    assert parse_bottleneck("0,8,8,16") == [0, 8, 16]
    assert parse_wire("fp32,int8") == ["fp32", "int8"]
    assert default_pool_at([1, 2, 3]) == [(), (1,), (1, 2), (1, 2, 3)]
    for parse, bad in ((parse_pool_at, "1+x"), (parse_pool_at, "1,,2"), (parse_bottleneck, "-1"), (parse_wire, "int4")):
        with pytest.raises(UserError):
            parse(bad)


@pytest.mark.cli
def test_bad_inputs_exit_2_with_one_line_and_leave_nothing(tmp_path):
    out = tmp_path / "out"
    cases = [
        (["--pool-at", "1+x"], ["--pool-at", "'none'"]),
        (["--pool-at", "9"], ["--pool-at 9", "outside the device encoder's 4 layers"]),
        (["--bottleneck", "a"], ["--bottleneck"]),
        (["--wire", "int4"], ["--wire", "int8, fp32"]),
        (["--batch", "x"], ["--batch"]),
        (["--calib", "8"], ["--calib 8", "at least 32"]),
    ]
    for extra, needles in cases:
        done = run_cli("sweep", "digits", "--out", str(out), *extra, cwd=tmp_path)
        assert done.returncode == 2, (extra, done.stderr)
        assert "Traceback" not in done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        for needle in needles:
            assert needle in lines[0], lines[0]
    done = run_cli("sweep", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert done.returncode == 2 and "nope.yaml" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed sweep left files behind"
