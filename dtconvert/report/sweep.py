"""Rendering a sweep report: the Markdown table and funnel, the CSV, the accuracy-bytes-latency plot."""

from __future__ import annotations

import csv
from pathlib import Path


def _fmt_acc(row: dict, key: str) -> str:
    return " / ".join(f"{v:.2%}" for v in row[key].values())


def markdown_table(report: dict) -> str:
    tasks = report["recipe"]["tasks"]
    batches = report["settings"]["batches"]
    head = (
        [
            "pool_at",
            "bottleneck",
            "wire",
            "wire shape",
            "B/image",
            "device params",
            "device MFLOPs",
            f"fp32 acc ({' / '.join(tasks)})",
            f"ExecuTorch acc ({' / '.join(tasks)})",
            "Δ points",
        ]
        + [f"ET ms b{b} (p90)" for b in batches]
        + [f"img/s b{b}" for b in batches if b > 1]
        + ["verify"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = [
            "+".join(map(str, row["pool_at"])) or "none",
            str(row["bottleneck"]),
            row["wire"],
            f"{row['wire_shape'][0]}×{row['wire_shape'][1]}",
            f"{row['wire_bytes_per_image']:,}",
            f"{row['device_params']:,}",
            f"{row['device_flops'] / 1e6:.2f}",
            _fmt_acc(row, "fp32_accuracy"),
            _fmt_acc(row, "device_accuracy"),
            " / ".join(f"{v:+.2f}" for v in row["accuracy_change_points"].values()),
        ]
        cells += [f"{row['latency'][str(b)]['median_ms']:.3f} ({row['latency'][str(b)]['p90_ms']:.3f})" for b in batches]
        cells += [f"{row['latency'][str(b)]['images_per_s']:,.0f}" for b in batches if b > 1]
        cells.append({True: "pass", False: "FAIL", None: "—"}[row["verified"]])
        lines.append("| " + " | ".join(cells) + " |")
    if report["funnel"]:
        lines += [
            "",
            "Funnel: each added 2× pooling stage, same bottleneck and wire (ExecuTorch XNNPACK throughput).",
            "",
            "| from → to | wire | batch | throughput gain | Δ ExecuTorch acc (points) | wire B/image |",
            "|---|---|---|---|---|---|",
        ]
        for s in report["funnel"]:
            change = " / ".join(f"{v:+.2f}" for v in s["device_accuracy_change_points"].values())
            lines.append(
                f"| {s['from']} → {s['to']} | {s['wire']} | {s['batch']} | {s['throughput_gain']:.2f}× | {change} | "
                f"{s['wire_bytes'][0]:,} → {s['wire_bytes'][1]:,} |"
            )
    return "\n".join(lines) + "\n"


def write_csv(report: dict, path: Path) -> None:
    tasks = report["recipe"]["tasks"]
    batches = report["settings"]["batches"]
    fields = (
        [
            "config",
            "pool_at",
            "pool_stages",
            "bottleneck",
            "wire",
            "wire_tokens",
            "wire_width",
            "wire_bytes_per_image",
            "device_params",
            "device_flops",
            "pte_bytes",
        ]
        + [f"fp32_accuracy_{t}" for t in tasks]
        + [f"device_accuracy_{t}" for t in tasks]
        + [f"accuracy_change_points_{t}" for t in tasks]
        + [f"{k}_b{b}" for b in batches for k in ("median_ms", "p90_ms", "images_per_s")]
        + ["verified", "train_seconds"]
    )
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in report["rows"]:
            record = {
                "config": row["config"],
                "pool_at": "+".join(map(str, row["pool_at"])) or "none",
                "pool_stages": row["pool_stages"],
                "bottleneck": row["bottleneck"],
                "wire": row["wire"],
                "wire_tokens": row["wire_shape"][0],
                "wire_width": row["wire_shape"][1],
                "wire_bytes_per_image": row["wire_bytes_per_image"],
                "device_params": row["device_params"],
                "device_flops": row["device_flops"],
                "pte_bytes": row["pte_bytes"],
                "verified": "" if row["verified"] is None else row["verified"],
                "train_seconds": row["train_seconds"],
            }
            for t in tasks:
                record[f"fp32_accuracy_{t}"] = row["fp32_accuracy"][t]
                record[f"device_accuracy_{t}"] = row["device_accuracy"][t]
                record[f"accuracy_change_points_{t}"] = round(row["accuracy_change_points"][t], 4)
            for b in batches:
                lat = row["latency"][str(b)]
                record.update(
                    {
                        f"median_ms_b{b}": round(lat["median_ms"], 5),
                        f"p90_ms_b{b}": round(lat["p90_ms"], 5),
                        f"images_per_s_b{b}": round(lat["images_per_s"], 2),
                    }
                )
            writer.writerow(record)


def plot_sweep(report: dict, path: Path) -> None:
    """Left: accuracy of the first task through ExecuTorch against wire bytes per image, marker area ∝
    batch-1 latency. Right: ExecuTorch throughput against pooling stages at each batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 6.2), gridspec_kw={"width_ratios": [1.35, 1]})
    points = _accuracy_panel(ax, report, plt.get_cmap("viridis"))
    _funnel_panel(ax2, report)
    machine, epochs = report["machine"], report["settings"]["epochs"]
    fig.suptitle(
        f"dtconvert sweep {report['recipe']['name']}: {epochs} epoch{'s' if epochs != 1 else ''} per configuration · "
        f"{machine['usable_cpus']} CPUs, {machine['cpu_model']}",
        fontsize=10,
    )
    fig.tight_layout()
    _place_labels(fig, ax, points)  # last: the label search needs the final scales and layout
    fig.savefig(path, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def _accuracy_panel(ax, report: dict, colors) -> list[tuple[float, float, str]]:
    """Accuracy against bytes, one marker per row; returns each point with its label, placed last."""
    from matplotlib.lines import Line2D

    rows, batches = report["rows"], report["settings"]["batches"]
    task = report["recipe"]["tasks"][0]
    max_stages = max(r["pool_stages"] for r in rows) or 1
    latencies = [r["latency"][str(batches[0])]["median_ms"] for r in rows]
    scale = 600.0 / max(latencies)
    points = []
    for row, latency in zip(rows, latencies, strict=True):
        x, y = row["wire_bytes_per_image"], 100 * row["device_accuracy"][task]
        ax.scatter(
            x,
            y,
            s=40 + latency * scale,
            color=colors(row["pool_stages"] / max_stages * 0.9),
            marker="o" if row["wire"] == "int8" else "s",
            alpha=0.7,
            edgecolors="black",
            linewidths=0.6,
        )
        points.append((x, y, f"{'+'.join(map(str, row['pool_at'])) or 'none'} b{row['bottleneck']} {row['wire']} {latency:.2f} ms"))
    source = report["recipe"].get("source_image_bytes")
    if source:
        ax.axvline(source, color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            f"raw {source} B image",
            (source, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3, -3),
            textcoords="offset points",
            rotation=90,
            ha="right",
            va="top",
            fontsize=7,
            color="grey",
        )
    ax.set_xscale("log")
    xs = [x for x, _, _ in points]
    ax.set_xlim(min(xs) / 1.4, max(xs) * 3.5)  # room for the labels of the widest wire
    ax.set_xlabel("wire bytes per image (log)")
    ax.set_ylabel(f"held-out {task} accuracy through ExecuTorch, %")
    ax.set_title(f"accuracy vs bytes · marker area ∝ ExecuTorch latency at batch {batches[0]} (labels: ms)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    handles = [
        Line2D([], [], marker="o", linestyle="", color="grey", label="int8 wire (int8 .pte)"),
        Line2D([], [], marker="s", linestyle="", color="grey", label="fp32 wire (fp32 .pte)"),
    ]
    handles += [
        Line2D([], [], marker="o", linestyle="", color=colors(k / max_stages * 0.9), label=f"{k} pooling stage{'s' if k != 1 else ''}")
        for k in sorted({r["pool_stages"] for r in rows})
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    return points


def _funnel_panel(ax, report: dict) -> None:
    """Throughput against pooling stages, one line per (bottleneck, wire) and batch size."""
    rows, batches = report["rows"], report["settings"]["batches"]
    for bottleneck, wire in sorted({(r["bottleneck"], r["wire"]) for r in rows}):
        # Four line styles: batch sizes past the fourth get no line (the table and CSV still have them).
        for b, style in zip(batches, ("-", "--", ":", "-."), strict=False):
            series = sorted(
                (r["pool_stages"], r["latency"][str(b)]["images_per_s"]) for r in rows if (r["bottleneck"], r["wire"]) == (bottleneck, wire)
            )
            ax.plot(
                [s for s, _ in series],
                [v for _, v in series],
                style,
                marker="o" if wire == "int8" else "s",
                label=f"b{bottleneck} {wire}, batch {b}",
            )
    ax.set_xlabel("pooling stages (each halves the tokens)")
    ax.set_ylabel("ExecuTorch XNNPACK images/s (median)")
    ax.set_yscale("log")
    ax.set_xticks(sorted({r["pool_stages"] for r in rows}))
    ax.set_title(f"funnel: throughput per pooling stage ({report['settings']['threads']} thread)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)


def _place_labels(fig, ax, points: list[tuple[float, float, str]]) -> None:
    """Label each point beside it, trying a few offsets until the label overlaps no earlier one
    (points of equal bytes and similar accuracy are common in a sweep)."""
    from matplotlib.transforms import Bbox

    offsets = [
        (9, 3, "left"),
        (-9, 3, "right"),
        (9, -11, "left"),
        (-9, -11, "right"),
        (9, 13, "left"),
        (-9, 13, "right"),
        (9, -21, "left"),
        (-9, -21, "right"),
    ]
    fig.canvas.draw()
    taken: list[Bbox] = []
    for x, y, text in points:
        for dx, dy, ha in offsets:
            label = ax.annotate(text, (x, y), fontsize=6.5, xytext=(dx, dy), textcoords="offset points", ha=ha)
            box = label.get_window_extent(fig.canvas.get_renderer())
            if not any(box.overlaps(other) for other in taken):
                break
            label.remove()
        else:
            label = ax.annotate(text, (x, y), fontsize=6.5, xytext=offsets[0][:2], textcoords="offset points")
            box = label.get_window_extent(fig.canvas.get_renderer())
        taken.append(box)


def write_files(report: dict, folder: Path) -> None:
    """``sweep.csv``, ``sweep.md`` and ``sweep.png`` beside the report's ``sweep.json`` (``run_sweep``'s ``render``)."""
    write_csv(report, folder / "sweep.csv")
    (folder / "sweep.md").write_text(
        f"# dtconvert sweep {report['recipe']['name']}\n\n"
        + (f"`{report['command']}`\n\n" if report.get("command") else "")
        + markdown_table(report),
        encoding="utf-8",
    )
    plot_sweep(report, folder / "sweep.png")
