"""Tables of the steps a user watches: training metrics, a description, an export, the client, the demo."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from dtconvert.output import console as make_console
from dtconvert.wire import header_size


def print_metrics(ckpt: dict, title: str) -> None:
    table = Table(title=title)
    for column in ("task", "classes", "held-out accuracy", "GradNorm weight", "final train loss"):
        table.add_column(column)
    metrics = ckpt["metrics"]
    for task in ckpt["tasks"]:
        name = task["name"]
        table.add_row(
            name,
            str(len(task["labels"])),
            f"{metrics['heldout'][name]:.2%}",
            f"{metrics.get('gradnorm_weights', {}).get(name, float('nan')):.3f}",
            f"{metrics.get('train_loss', {}).get(name, float('nan')):.4f}",
        )
    make_console().print(table)
    seconds = metrics.get("train_seconds")
    if seconds is not None:
        typer.echo(f"training took {seconds:.1f} s for {metrics.get('epochs')} epoch(s)")


def print_description(report: dict) -> None:
    """``dtconvert info``: a checkpoint's or recipe's parameters, tasks, input, wire and metrics."""
    table = Table(title=f"{report['kind']}: {report['source']}", show_header=False)
    params = report["parameters"]
    table.add_row(
        "parameters",
        f"device {params['device']:,} · cloud {params['cloud']:,} (heads {params['cloud_heads']:,}) · total {params['total']:,}",
    )
    table.add_row("tasks", ", ".join(f"{t['name']} ({t['classes']})" for t in report["tasks"]))
    pre = report["preprocessing"]
    table.add_row("device input", f"{report['input_shape']} {pre['layout']}, resize {pre['resize']}, mean {pre['mean']}, std {pre['std']}")
    table.add_row("wire tensor", f"{report['wire']['shape']} → {report['wire']['int8_bytes_per_image']} bytes per image as int8")
    if "metrics" in report:
        table.add_row("held-out", ", ".join(f"{k} {v:.2%}" for k, v in report["metrics"]["heldout"].items()))
    make_console().print(table)


def print_export_summary(export_dir: Path, manifest: dict) -> None:
    table = Table(title=f"{export_dir}/manifest.json")
    for column in ("artifact", "part", "target", "precision", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for a in manifest["artifacts"]:
        table.add_row(a["path"], a["part"], a["target"], a["precision"], f"{a['bytes']:,}")
    console = make_console()
    console.print(table)
    wire, comm = manifest["wire"], manifest["communication"]
    line = (
        f"wire tensor {wire['shape']} int8 (scale {wire['scale']:.5g}, zero point {wire['zero_point']}): "
        f"{comm['wire_int8_bytes']:,} B/image vs {comm['device_input_uint8_bytes']:,} B uint8 device input"
    )
    if "source_image_uint8_bytes" in comm:
        line += f", {comm['source_image_uint8_bytes']:,} B source image"
    line += f", {comm['unpooled_fp32_token_bytes']:,} B unpooled fp32 tokens"
    console.print(line, highlight=False)


def print_auto_summary(result) -> None:
    """``--precision auto``: each attempt, and what the modules it kept float cost against the all-int8 one."""
    console = make_console()
    table = Table(title="export --precision auto: int8, float where the gate needs it")
    targets = list(result.attempts[0].bytes)
    for column in ("kept float", "gate", *(f"{t} bytes" for t in targets), *(f"{t} ms" for t in targets)):
        table.add_column(column, justify="left" if column in ("kept float", "gate") else "right")
    for a in result.attempts:
        table.add_row(
            ", ".join(a.keep_float) or "nothing",
            "pass" if a.passed else f"FAIL ({a.culprit or '?'})",
            *(f"{a.bytes[t]:,}" for t in targets),
            *(f"{a.latency_ms[t]:.3f}" for t in targets),
        )
    console.print(table)
    first, last = result.attempts[0], result.attempts[-1]
    if last.keep_float:
        costs = ", ".join(
            f"{t} +{last.bytes[t] - first.bytes[t]:,} B ({last.bytes[t] / first.bytes[t]:.2f}×), "
            f"{last.latency_ms[t] / first.latency_ms[t]:.2f}× latency"
            for t in targets
        )
        console.print(f"kept float: {', '.join(last.keep_float)}; cost against all-int8: {costs}", highlight=False)
    else:
        console.print("kept float: nothing", highlight=False)


def print_cloud_summary(description: dict, out: Path) -> None:
    """What ``dtconvert cloud`` wrote, and the command that serves it."""
    for v in description["variants"]:
        typer.echo(f"{v['ensemble']}: tasks {', '.join(v['tasks'])}; heads {', '.join(v['heads'])}")
    backend, repo = description["triton"]["backend"], out / description["triton"]["repository"]
    run = f"python -m dtconvert.triton.server {repo}" if backend == "python" else f"tritonserver --model-repository {repo}"
    typer.echo(
        f"wrote {repo} ({len(description['variants'])} variants, one trunk model, {backend} backend) and {out / 'cloud.json'}; run: {run}"
    )


def print_client_report(report, manifest: dict) -> None:
    tasks = [t["name"] for t in manifest["tasks"]]
    console = make_console()
    if len(report.images) <= 20:
        table = Table(title=f"{report.runtime} → {report.url}")
        for column in ("image", *tasks, "payload B", "device ms", "round trip ms"):
            table.add_column(column, justify="right" if column[0] in "pdr" else "left")
        for name, p, b, d, r in zip(report.images, report.predictions, report.payload_bytes, report.device_ms, report.rtt_ms, strict=True):
            table.add_row(
                name, *(f"{p[t][0]['label']} ({p[t][0]['score']:.2f})" if t in p else "-" for t in tasks), str(b), f"{d:.2f}", f"{r:.2f}"
            )
        console.print(table)
    s = report.summary()
    accuracy = ", ".join(f"{t} {a:.2%}" for t, a in s["accuracy"].items()) or "no labels"
    typer.echo(
        f"{s['images']} images via {report.runtime}: accuracy {accuracy}; payload {s['payload_bytes']} B/image; "
        f"device p50 {s['device_ms']['p50']:.2f} ms; round trip p50 {s['rtt_ms']['p50']:.2f} ms, "
        f"p95 {s['rtt_ms']['p95']:.2f} ms (server p50 {s['server_ms']['p50']:.2f} ms)"
    )


def print_demo_table(manifests: list[dict], reports: list) -> None:
    """One row per variant and path from pixels to predictions: accuracy per task, bytes sent, latency."""
    tasks = list(dict.fromkeys(t["name"] for m in manifests for t in m["tasks"]))
    samples = len(manifests[0]["data"]["heldout"])
    table = Table(title=f"{samples} held-out digits: device encoder → int8 wire → one shared cloud decoder")
    for column in ("variant", "path", *tasks, "bytes sent", "device ms", "round trip ms"):
        table.add_column(column, justify="left" if column in ("variant", "path") else "right")

    def cells(accuracy: dict) -> list[str]:
        return [f"{accuracy[t]:.2%}" if accuracy.get(t) is not None else "—" for t in tasks]

    for manifest in manifests:
        name = manifest["model"]["name"]
        for m, r in reports:
            if m is manifest:
                s = r.summary()
                table.add_row(
                    name,
                    f"{r.runtime.split()[0]} → HTTP",
                    *cells(s["accuracy"]),
                    str(s["payload_bytes"]),
                    f"{s['device_ms']['p50']:.2f}",
                    f"{s['rtt_ms']['p50']:.1f} / {s['rtt_ms']['p95']:.1f}",
                )
        fp32 = None
        for per_runtime in manifest["verification"]["metrics"].values():
            for runtime, numbers in per_runtime.items():
                fp32 = fp32 or {t: v.get("fp32_accuracy") for t, v in numbers["tasks"].items()}
                if runtime.startswith(("MIL", "Core ML")):
                    message = header_size(len(manifest["wire"]["shape"])) + manifest["wire"]["bytes_per_image"]
                    table.add_row(
                        name,
                        f"Core ML ({runtime})*",
                        *cells({t: v["accuracy"] for t, v in numbers["tasks"].items()}),
                        str(message),
                        "-",
                        "-",
                    )
        if fp32 is not None:
            table.add_row(name, "fp32, unsplit", *cells(fp32), "-", "-", "-")
    make_console().print(table)
    typer.echo(
        "device ms and round trip ms are medians (p50 / p95 for the round trip); bytes sent = wire header + int8 tensor;\n"
        "— : a task the variant does not have. Both variants' rows came from one server process holding one trunk.\n"
        "* Core ML predicts only on Apple hardware: here its MIL program ran in dtconvert's reference interpreter, "
        "in-process (dtconvert verify)."
    )
