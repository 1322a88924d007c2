"""The parity gate's results as a terminal table, its worst flips, and GitHub annotations and summary."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from dtconvert.errors import CheckFailed
from dtconvert.output import console as make_console
from dtconvert.output import on_github_actions
from dtconvert.verify import Check, Report

WORST_FLIPS = 5  # disagreements shown in the terminal; --json lists every one


def sets_text(sets: dict) -> str:
    """``360 held-out, 1437 rest``: how many images each set held."""
    return ", ".join(f"{n} {name}" for name, n in sets.items())


def verdict(report: Report) -> None:
    """verify's last line: every check passed, or :class:`CheckFailed` naming how many failed and the first."""
    if not report.passed:
        failed = [c for c in report.checks if not c.passed]
        raise CheckFailed(
            f"{len(failed)} of {len(report.checks)} checks failed; "
            f"first: {failed[0].artifact} {failed[0].runtime} {failed[0].check}: {failed[0].detail}"
        )
    typer.echo(f"all {len(report.checks)} checks passed on {report.samples} images ({sets_text(report.sets)})")


def verdict_of_export(export_dir: Path, verification: dict | None) -> None:
    """After ``dtconvert export``: one line saying the export verified, or :class:`CheckFailed` naming the first failed check."""
    if verification is None:
        return
    if not verification["passed"]:
        if verification.get("explanation"):  # a failed gate explains itself
            console = make_console()
            console.print(explain_table(verification["explanation"]))
            for line in explain_lines(verification["explanation"]):
                console.print(escape(line), highlight=False)
        first = verification["failed"][0]
        raise CheckFailed(
            f"verification failed ({len(verification['failed'])} checks; first: {first['artifact']} {first['runtime']} "
            f"{first['check']}: {first['detail']}); run 'dtconvert verify {export_dir}' for the full table"
        )
    typer.echo(f"verified: {verification['checks']} checks passed on {verification['samples']} images ({sets_text(verification['sets'])})")


def verify_table(report: Report) -> Table:
    """verify's table: one row per check."""
    table = Table(title=escape(f"dtconvert verify {report.export_dir}"))
    for column in ("artifact", "runtime", "check", "result", "measured"):
        table.add_column(column)
    for c in report.checks:
        table.add_row(
            escape(c.artifact), escape(c.runtime), escape(c.check), "[green]pass[/]" if c.passed else "[red]FAIL[/]", escape(c.detail)
        )
    return table


def flips_table(report: Report) -> Table | None:
    """The worst disagreements with the fp32 model (largest fp32 margin first); --json lists all."""
    rows = sorted(report.disagreements(), key=lambda r: -r[3]["fp32_margin"])
    if not rows:
        return None
    near_ties = sum(d["near_tie"] for *_, d in rows)
    table = Table(
        title=f"{len(rows)} disagreements with the fp32 model ({near_ties} near-ties); the {min(WORST_FLIPS, len(rows))} "
        "with the largest fp32 margin (--json lists every one)"
    )
    for column in ("artifact", "runtime", "task", "image", "fp32 → artifact", "fp32 margin", "artifact margin", "near-tie"):
        table.add_column(column)
    for artifact, runtime, task, d in rows[:WORST_FLIPS]:
        table.add_row(
            escape(artifact),
            escape(runtime),
            escape(task),
            f"{d['set']} #{d['index']}",
            f"{d['fp32_class']} → {d['artifact_class']}",
            f"{d['fp32_margin']:.4f}",
            f"{d['artifact_margin']:.4f}",
            "yes" if d["near_tie"] else "[red]no[/]",
        )
    return table


def explain_table(explanation: dict) -> Table:
    """``--explain``: one row per point of the device encoder, one column per runtime view, SQNR in
    dB against fp32 (red below the view's floor; blank where the runtime cannot look)."""
    views = explanation["views"]
    table = Table(title=f"where the device encoder parts from fp32: SQNR (dB) on {explanation['images']} images")
    table.add_column("point")
    table.add_column("computes")
    for v in views:
        table.add_column(escape(v["runtime"]), justify="right")
    for point in explanation["points"]:
        cells = []
        for v in views:
            if point["name"] not in v["sqnr_db"]:
                cells.append("")
                continue
            value = v["sqnr_db"][point["name"]]
            text = "exact" if value is None else f"{value:.1f}"
            cells.append(f"[red]{text}[/]" if value is not None and value < v["floor_db"] else text)
        table.add_row(escape(point["name"]), escape(point["kind"]), *cells)
    return table


def explain_lines(explanation: dict) -> list[str]:
    """Per view what it can see and its first point below the floor; then the advice."""
    lines = []
    for v in explanation["views"]:
        first = v["first_below"] or "none"
        lines.append(f"{v['runtime']} ({v['artifact']}): sees {v['sees']}; first below {v['floor_db']:g} dB: {first}")
    return [*lines, explanation["advice"]]


def print_verify(report: Report) -> None:
    """The check table, then the worst flips when there are any, then the explanation when there is one."""
    console = make_console()
    console.print(verify_table(report))
    flips = flips_table(report)
    if flips is not None:
        console.print(flips)
    if report.explanation is not None:
        console.print(explain_table(report.explanation))
        for line in explain_lines(report.explanation):
            console.print(escape(line), highlight=False)


# ---- GitHub Actions ---------------------------------------------------------------------------


def _escape_data(text: str) -> str:
    """Workflow-command message escaping (GitHub's toolkit: core/src/command.ts escapeData)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """Workflow-command property escaping (escapeProperty): also ':' and ','."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(checks: list[Check], manifest: str) -> list[str]:
    """One ``::error`` line per failed check: artifact, runtime, check, and the measured value
    against its bound (the check's detail), anchored on the export's manifest."""
    lines = []
    for c in checks:
        if c.passed:
            continue
        title = f"dtconvert verify: {c.artifact} ({c.runtime})"
        lines.append(
            f"::error file={_escape_property(manifest)},title={_escape_property(title)}::"
            + _escape_data(f"{c.artifact} · {c.runtime} · {c.check}: {c.detail}")
        )
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def github_summary(checks: list[Check], export_dir: str, samples: int, data: str) -> str:
    """A Markdown section for ``$GITHUB_STEP_SUMMARY``: failed checks first, then every check."""
    failed = [c for c in checks if not c.passed]
    verdict = f"**{len(failed)} of {len(checks)} checks failed**" if failed else f"all {len(checks)} checks passed"
    lines = [
        f"### dtconvert verify `{export_dir}`",
        "",
        f"{verdict} on {samples} images ({_cell(data)})",
        "",
        "| | artifact | runtime | check | measured |",
        "|---|---|---|---|---|",
    ]
    for c in sorted(checks, key=lambda c: c.passed):
        lines.append(
            f"| {'✅' if c.passed else '❌'} | `{_cell(c.artifact)}` | {_cell(c.runtime)} | {_cell(c.check)} | {_cell(c.detail)} |"
        )
    return "\n".join(lines) + "\n\n"


def to_github(report: Report) -> None:
    """Under GitHub Actions: one ::error annotation per failed check, and a Markdown table of every
    check appended to $GITHUB_STEP_SUMMARY (when the runner set it)."""
    if not on_github_actions():
        return
    manifest = str(Path(report.export_dir) / "manifest.json")
    for line in github_annotations(report.checks, manifest):
        typer.echo(line)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(github_summary(report.checks, report.export_dir, report.samples, report.data))
        except OSError as e:
            typer.echo(f"warning: could not append to GITHUB_STEP_SUMMARY {summary}: {e.strerror}", err=True)
