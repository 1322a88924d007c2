"""Rendering a bench report: Markdown tables, the terminal table, how each runtime ran, the latency plot."""

from __future__ import annotations

from pathlib import Path

from dtconvert.bench.plan import DECODER


def present(report: dict, plot: Path | None) -> None:
    """``dtconvert bench``'s output: the plot (when asked), the table, how each runtime ran, the notes."""
    import typer

    from dtconvert.output import console

    if plot is not None:
        plot_report(report, plot)
    console().print(rich_table(report))
    for line in [*how_lines(report), *report["notes"]]:
        typer.echo(f"note: {line}")
    typer.echo(f"peak memory: {report['memory_measures']}")


def markdown_tables(report: dict) -> str:
    """The report as markdown tables (latency per configuration; Core ML; memory)."""
    lines = [
        "| runtime | batch | threads | how | median ms | p90 ms | img/s | × eager fp32 "
        "| XNNPACK partitions | artifact B | wire B/img | peak RSS Δ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        ratio = "—" if r["ratio_to_eager_fp32"] is None else f"{r['ratio_to_eager_fp32']:.3f}"
        size = "—" if r["artifact_bytes"] is None else f"{r['artifact_bytes']:,}"
        wire = "—" if r["wire_bytes_per_image"] is None else f"{r['wire_bytes_per_image']:,}"
        rss = "—" if r.get("peak_rss_increase_bytes") is None else f"{r['peak_rss_increase_bytes'] / 2**20:.1f} MiB"
        lines.append(
            f"| {r['runtime']} | {r['batch']} | {r['threads']} | {r['how']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{r['images_per_s']:.0f} | {ratio} | {_partitions(r)} | {size} | {wire} | {rss} |"
        )
    if report["coreml"]:
        lines += ["", "| Core ML artifact | precision | bytes | MIL ops | wire B/img | note |", "|---|---|---|---|---|---|"]
        for c in report["coreml"]:
            top = ", ".join(f"{k} {v}" for k, v in sorted(c["ops"].items(), key=lambda kv: -kv[1])[:6])
            lines.append(
                f"| {c['artifact']} | {c['precision']} | {c['bytes']:,} | {c['ops_total']} ({top}, …) "
                f"| {c['wire_bytes_per_image']:,} | {c['note']} |"
            )
    return "\n".join(lines) + "\n"


def _partitions(row: dict) -> str:
    """'1' for a whole-graph delegate; '33 (+178 outside)' when ops run outside it; '—' where none applies."""
    if row.get("delegate_partitions") is None:
        return "—"
    outside = row["ops_outside_delegate"]
    return f"{row['delegate_partitions']}" + (f" (+{outside} outside)" if outside else "")


def rich_table(report: dict):
    """The terminal table: one row per runtime, batch and thread count (how each ran: ``how_lines``)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"dtconvert bench: {report['model']['name']} ({report['settings']['runs']} runs, interleaved)"))
    for column in (
        "runtime",
        "batch",
        "threads",
        "median ms",
        "p90 ms",
        "img/s",
        "× eager",
        "partitions",
        "artifact B",
        "wire B/img",
        "peak RSS Δ",
    ):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for r in report["results"]:
        table.add_row(
            escape(r["runtime"]),
            str(r["batch"]),
            str(r["threads"]),
            f"{r['median_ms']:.3f}",
            f"{r['p90_ms']:.3f}",
            f"{r['images_per_s']:,.0f}",
            "—" if r["ratio_to_eager_fp32"] is None else f"{r['ratio_to_eager_fp32']:.3f}",
            _partitions(r),
            "—" if r["artifact_bytes"] is None else f"{r['artifact_bytes']:,}",
            "—" if r["wire_bytes_per_image"] is None else f"{r['wire_bytes_per_image']:,}",
            "—" if r.get("peak_rss_increase_bytes") is None else f"{r['peak_rss_increase_bytes'] / 2**20:.1f} MiB",
        )
    for c in report["coreml"]:
        table.add_row(
            escape(f"Core ML {c['precision']} (not run)"),
            "—",
            "—",
            "—",
            "—",
            "—",
            "—",
            "—",
            f"{c['bytes']:,}",
            f"{c['wire_bytes_per_image']:,}",
            "—",
        )
    return table


def how_lines(report: dict) -> list[str]:
    """One line per runtime: how it ran at each batch size above 1 and its notes; then Core ML."""
    lines = []
    for runtime in dict.fromkeys(r["runtime"] for r in report["results"]):
        rows = [r for r in report["results"] if r["runtime"] == runtime]
        parts = [f"batch {r['batch']}: {r['how']}" for r in rows if r["batch"] > 1 and r["threads"] == rows[0]["threads"]]
        parts += list(dict.fromkeys(n for r in rows for n in r["notes"]))
        if parts:
            lines.append(f"{runtime}: " + "; ".join(parts))
    for c in report["coreml"]:
        lines.append(f"{c['artifact']}: {c['ops_total']} MIL ops; {c['note']}")
    return lines


def plot_report(report: dict, path: Path) -> None:
    """Median latency per image (p90 as the whisker) per runtime, one panel per thread count; each
    bar's foot gives its ratio to eager fp32 at the same batch and threads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads, batches = report["settings"]["threads"], report["settings"]["batches"]
    runtimes = list(dict.fromkeys(r["runtime"] for r in report["results"]))
    per_image = [r["median_ms"] / r["batch"] for r in report["results"]]
    bottom, top = min(per_image) / 4, max(r["p90_ms"] / r["batch"] for r in report["results"]) * 1.5
    fig, axes = plt.subplots(1, len(threads), figsize=(6.5 * len(threads), 4.8), squeeze=False)
    width = 0.8 / len(runtimes)
    colors = plt.get_cmap("tab10")
    for ax, t in zip(axes[0], threads, strict=True):
        for i, runtime in enumerate(runtimes):
            rows = [
                (j, r)
                for j, b in enumerate(batches)
                for r in report["results"]
                if r["runtime"] == runtime and r["batch"] == b and r["threads"] == t
            ]
            xs = [j + (i - (len(runtimes) - 1) / 2) * width for j, _ in rows]
            ys = [r["median_ms"] / r["batch"] for _, r in rows]
            errs = [(r["p90_ms"] - r["median_ms"]) / r["batch"] for _, r in rows]
            ax.bar(
                xs,
                ys,
                width,
                yerr=[[0] * len(errs), errs],
                capsize=2,
                color=colors(i % 10),
                label=runtime + (" (cloud)" if runtime == DECODER else ""),
            )
            for x, (_, r) in zip(xs, rows, strict=True):
                if r["ratio_to_eager_fp32"] is not None:  # at the foot of the bar, clear of the whiskers
                    ax.text(
                        x,
                        bottom * 1.15,
                        f"{r['ratio_to_eager_fp32']:.2f}×",
                        ha="center",
                        va="bottom",
                        rotation=90,
                        fontsize=7,
                        color="white",
                        fontweight="bold",
                    )
        ax.set_yscale("log")
        ax.set_ylim(bottom, top)
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        ax.set_ylabel("median latency per image, ms (whisker: p90)")
        ax.grid(axis="y", which="both", alpha=0.3)
    machine = report["machine"]
    fig.suptitle(
        f"dtconvert bench: {report['model']['name']} · {machine['usable_cpus']} CPUs, {machine['cpu_model']} · "
        f"{report['settings']['runs']} interleaved runs · bar labels: latency ÷ eager fp32 (same batch, threads)",
        fontsize=10,
    )
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _save_figure(fig, path: Path) -> None:
    from dtconvert.checkpoint import atomic_write

    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight"))
