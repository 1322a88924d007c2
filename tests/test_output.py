"""Output a CI log can read: whole records when stdout is piped, GitHub annotations and summary.

The real console script runs with stdout and stderr piped and no COLUMNS (as under CI); the
failing export is a real one whose wire scale was swapped, so every device artifact fails.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from dtconvert import output
from dtconvert.report.verify import github_annotations
from dtconvert.verify import Check, Report
from tests.conftest import RECIPES, manifest_of, run_cli

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def failing_export(int8_export, tmp_path_factory) -> Path:
    copy = Path(shutil.copytree(int8_export, tmp_path_factory.mktemp("failing") / "export"))
    manifest = manifest_of(copy)
    manifest["wire"]["scale"] *= 0.2  # another export's scale: the wire tensor clips, every device artifact fails
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture(scope="module")
def piped_verify(failing_export, tmp_path_factory):
    """`dtconvert verify` on the failing export under GitHub Actions, stdout piped."""
    folder = tmp_path_factory.mktemp("piped")
    summary = folder / "summary.md"
    summary.write_text("earlier step\n")
    done = run_cli("verify", str(failing_export), "--limit", "60", "--json", str(folder / "v.json"),
                   env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    report = json.loads((folder / "v.json").read_text())
    return done, report, summary


def _failed(report: dict) -> list[dict]:
    return [c for c in report["checks"] if not c["passed"]]


def test_piped_verify_names_every_failing_artifact_whole_on_one_line(piped_verify):
    done, report, _ = piped_verify
    assert done.returncode == 1, done.stderr
    failed = _failed(report)
    assert len({c["artifact"] for c in failed}) >= 3  # ExecuTorch, Core ML and LiteRT encoders at least
    table = [line for line in done.stdout.splitlines() if "│" in line]
    for c in failed:
        rows = [line for line in table if c["artifact"] in line and c["check"] in line and c["detail"] in line and "FAIL" in line]
        assert len(rows) >= 1, (c, done.stdout)  # the whole record on one line: nothing cut, nothing wrapped
    assert "…" not in done.stdout


def test_twin_an_80_column_console_cuts_the_same_table(piped_verify):
    """What the CLI printed before: rich's 80-column fallback off a terminal loses artifact names."""
    from dtconvert.report.verify import verify_table

    _, report, _ = piped_verify
    checks = [Check(**c) for c in report["checks"]]
    buffer = io.StringIO()
    Console(file=buffer, width=80).print(verify_table(Report(report["export_dir"], report["samples"], report["data"], checks)))
    text = buffer.getvalue()
    cut = [c.artifact for c in checks if not c.passed and c.artifact not in text]
    assert cut  # some failing artifact's name is ellipsized or folded over two lines


def test_github_annotations_one_per_failed_check(piped_verify, failing_export):
    done, report, _ = piped_verify
    failed = _failed(report)
    annotations = [line for line in done.stdout.splitlines() if line.startswith("::error ")]
    assert len(annotations) == len(failed)
    manifest = str(failing_export / "manifest.json").replace(":", "%3A").replace(",", "%2C")
    for line, c in zip(annotations, failed):
        properties, message = line.removeprefix("::error ").split("::", 1)
        assert properties.startswith(f"file={manifest},title=dtconvert verify%3A {c['artifact']}")
        assert message == f"{c['artifact']} · {c['runtime']} · {c['check']}: {c['detail']}".replace("%", "%25")


def test_github_summary_appends_a_table_of_every_check(piped_verify):
    _, report, summary = piped_verify
    text = summary.read_text()
    assert text.startswith("earlier step\n")  # appended, never overwritten
    rows = [line for line in text.splitlines() if line.startswith("| ❌") or line.startswith("| ✅")]
    assert len(rows) == len(report["checks"])
    assert sum(row.startswith("| ❌") for row in rows) == len(_failed(report))
    assert f"{len(_failed(report))} of {len(report['checks'])} checks failed" in text
    for c in _failed(report):
        assert any(f"`{c['artifact']}`" in row and c["check"].replace("|", "\\|") in row for row in rows if row.startswith("| ❌"))


def test_twin_no_annotations_or_summary_outside_github_actions(failing_export, tmp_path):
    summary = tmp_path / "summary.md"
    done = run_cli("verify", str(failing_export), "--limit", "60", "--no-explain", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert done.returncode == 1
    assert "::error" not in done.stdout and not summary.exists()


def test_annotation_escaping_keeps_one_line_per_check():
    check = Check("a,b:c.pte", "LiteRT", "wire", False, "100% off\nsecond line")
    [line] = github_annotations([check, Check("ok.pte", "x", "y", True, "fine")], "out/manifest.json")
    assert line == ("::error file=out/manifest.json,title=dtconvert verify%3A a%2Cb%3Ac.pte (LiteRT)::"
                    "a,b:c.pte · LiteRT · wire: 100%25 off%0Asecond line")
    assert "\n" not in line


def test_piped_training_log_keeps_each_epoch_on_one_line(tmp_path):
    done = run_cli("train", str(RECIPES / "digits.yaml"), "--out", str(tmp_path / "run"), "--epochs", "1")
    assert done.returncode == 0, done.stderr
    epochs = [line for line in done.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 1
    for line in epochs:
        assert all(f"{task}: loss" in line for task in ("digit", "odd")) and line.count("held-out") == 2, line
    assert len(epochs[0]) > 80  # the twin: rich's 80-column fallback would have broken it in two
