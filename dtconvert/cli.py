"""The ``dtconvert`` command line.

Only typer and the standard library are imported at module level: ``dtconvert --help`` must
answer instantly, so torch, TensorFlow, ExecuTorch and coremltools are imported inside the
commands that need them.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import typer

from dtconvert.errors import UserError

app = typer.Typer(
    name="dtconvert",
    help="Split a Device Tuning model into an on-device encoder and a shared cloud decoder.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

BUNDLED_RECIPES_HELP = "A recipe YAML file, or the name of a bundled recipe (digits, digits-tune, dt-2m, dt-15m)."


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(command):
    """Turn a UserError raised anywhere in a command into one line on stderr and exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


def _version(value: bool) -> None:
    if value:
        from dtconvert import __version__

        typer.echo(f"dtconvert {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Split a Device Tuning model into an on-device encoder and a shared cloud decoder."""


def bundled_recipe_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("dtconvert.recipes")))


def resolve_recipe(arg: str) -> Path:
    """A path as given, or a bundled recipe by name ('digits' → recipes/digits.yaml)."""
    path = Path(arg)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in arg:
        return path
    bundled = bundled_recipe_dir() / f"{arg}.yaml"
    if bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in bundled_recipe_dir().glob("*.yaml")))
    raise UserError(f"{arg}: no such recipe file or bundled recipe (bundled: {names})")


@app.command()
@user_errors
def train(
    recipe: str = typer.Argument(..., help=BUNDLED_RECIPES_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory; the checkpoint is written to OUT/ckpt.pt."),
    init: Path | None = typer.Option(None, "--init", help="Start from this checkpoint (needed by --tune device)."),
    tune: str | None = typer.Option(
        None,
        "--tune",
        help="'device': freeze the shared cloud, train the device half and new task heads. Default: the recipe's 'tune' key.",
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the recipe's epoch count."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Multi-task training balanced with GradNorm.

    Example: dtconvert train recipes/digits.yaml --out runs/digits
    """
    from dtconvert.recipe import TUNE_MODES, load_recipe

    r = load_recipe(resolve_recipe(recipe))
    if tune is not None and tune not in TUNE_MODES:
        raise UserError(f"--tune must be one of {', '.join(TUNE_MODES)}, got {tune!r}")
    if epochs is not None:
        r.epochs = epochs
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a directory")

    from dtconvert.output import console as make_console
    from dtconvert.train import train as run_training

    console = make_console(stderr=True)
    ckpt = run_training(r, out, init=init, tune=tune, console=console, show_progress=not quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        _print_metrics(ckpt, title=f"{r.name}: held-out metrics")
        typer.echo(f"wrote {out / 'ckpt.pt'}")


def _print_metrics(ckpt: dict, title: str) -> None:
    from rich.table import Table

    from dtconvert.output import console as make_console

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


@app.command()
@user_errors
def info(
    source: str = typer.Argument(..., help="A checkpoint (.pt) or a recipe (.yaml, or a bundled recipe name)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Parameter counts, tasks, preprocessing and metrics of a checkpoint or a recipe.

    Example: dtconvert info recipes/dt-2m.yaml --json
    """
    from dtconvert.describe import describe

    report = describe(source if source.endswith(".pt") else str(resolve_recipe(source)))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.table import Table

    from dtconvert.output import console as make_console

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


@app.command()
@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by 'dtconvert train'."),
    target: str = typer.Option("all", "--target", "-t", help="executorch, coreml, tflite, a comma-separated list, or all."),
    precision: str = typer.Option(
        "int8",
        "--precision",
        help="int8: per runtime, the int8 scheme its CPU delegate runs whole and most faithfully "
        "(ExecuTorch and LiteRT: int8 weights, activations quantized per call; Core ML: int8 weights). "
        "int8-static: full-integer with calibrated activation scales, for NPUs. fp32: no quantization.",
    ),
    calib: str | None = typer.Option(
        None, "--calib", help="Calibration images: a count N taken from the checkpoint's training split (default 128), or a folder."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Export directory (default: ./export/<checkpoint stem>)."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Run 'dtconvert verify' on the export and record the results in the manifest."
    ),
) -> None:
    """Split a checkpoint into int8 device artifacts, a TorchScript cloud decoder and a manifest.

    Example: dtconvert export runs/digits/ckpt.pt --target all --out export/ckpt
    """
    from dtconvert.export import ExportFailed, parse_targets, run_export

    targets = parse_targets(target)
    try:
        export_dir, manifest = run_export(checkpoint, targets, precision=precision, calib=calib, out=out, verify=verify)
    except ExportFailed as e:
        _fail(f"{e} (full log: {e.log})", code=1)
    _print_export_summary(export_dir, manifest)
    verification = manifest["verification"]
    if verification is not None and not verification["passed"]:
        first = verification["failed"][0]
        _fail(
            f"verification failed ({len(verification['failed'])} checks; first: {first['artifact']} {first['runtime']} "
            f"{first['check']}: {first['detail']}); run 'dtconvert verify {export_dir}' for the full table",
            code=1,
        )
    if verification is not None:
        typer.echo(
            f"verified: {verification['checks']} checks passed on {verification['samples']} images ({_sets_text(verification['sets'])})"
        )


@app.command("verify")
@user_errors
def verify_command(
    export_dir: Path = typer.Argument(..., help="A directory written by 'dtconvert export'."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Also verify on these images (sub-folders named after the first task's labels give accuracy too when the "
        "export's own data is not on this machine).",
    ),
    digits: bool = typer.Option(False, "--digits", help="Insist on the bundled digits (an error for a model trained on other data)."),
    json_report: Path | None = typer.Option(None, "--json", help="Write every number to this JSON file."),
    junit: Path | None = typer.Option(None, "--junit", help="Write a JUnit XML report (one test case per artifact and check)."),
    tolerance: Path | None = typer.Option(
        None, "--tolerance", help="YAML file overriding the default bounds (target → precision → bound)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N images of each set (held-out, rest, folder)."),
) -> None:
    """Accuracy parity of every artifact in its real runtime against the fp32 model: a CI gate.

    Exit status: 0 all checks pass, 1 a check failed, 2 bad input.

    Example: dtconvert verify export/ckpt --json verify.json --junit verify.xml
    """
    from dtconvert.output import progress_console, third_party_log
    from dtconvert.verify import verify_export, write_reports

    console = progress_console()
    with third_party_log(export_dir, "verify"):
        report = verify_export(
            export_dir,
            data=data,
            digits=digits,
            tolerance_file=tolerance,
            limit=limit,
            log=lambda line: console.print(line, highlight=False),
        )
    write_reports(report, json_report, junit)
    _print_verify_table(report)
    _report_to_github(report)
    if not report.passed:
        failed = [c for c in report.checks if not c.passed]
        _fail(
            f"{len(failed)} of {len(report.checks)} checks failed; "
            f"first: {failed[0].artifact} {failed[0].runtime} {failed[0].check}: {failed[0].detail}",
            code=1,
        )
    typer.echo(f"all {len(report.checks)} checks passed on {report.samples} images ({_sets_text(report.sets)})")


def _sets_text(sets: dict) -> str:
    return ", ".join(f"{n} {name}" for name, n in sets.items())


def verify_table(report):
    """verify's table: one row per check."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"dtconvert verify {report.export_dir}"))
    for column in ("artifact", "runtime", "check", "result", "measured"):
        table.add_column(column)
    for c in report.checks:
        table.add_row(
            escape(c.artifact), escape(c.runtime), escape(c.check), "[green]pass[/]" if c.passed else "[red]FAIL[/]", escape(c.detail)
        )
    return table


def _print_verify_table(report) -> None:
    from dtconvert.output import console as make_console

    console = make_console()
    console.print(verify_table(report))
    flips = flips_table(report)
    if flips is not None:
        console.print(flips)


WORST_FLIPS = 5


def flips_table(report):
    """The worst disagreements with the fp32 model (largest fp32 margin first); --json lists all."""
    from rich.markup import escape
    from rich.table import Table

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


def _report_to_github(report) -> None:
    """Under GitHub Actions: one ::error annotation per failed check, and a Markdown table of every
    check appended to $GITHUB_STEP_SUMMARY (when the runner set it)."""
    from dtconvert import output

    if not output.on_github_actions():
        return
    manifest = str(Path(report.export_dir) / "manifest.json")
    for line in output.github_annotations(report.checks, manifest):
        typer.echo(line)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(output.github_summary(report.checks, report.export_dir, report.samples, report.data))
        except OSError as e:
            typer.echo(f"warning: could not append to GITHUB_STEP_SUMMARY {summary}: {e.strerror}", err=True)


@app.command()
@user_errors
def serve(
    export_dirs: list[Path] = typer.Argument(
        ...,
        help="Directories written by 'dtconvert export'. Several: one shared cloud trunk "
        "serving every device variant, if their trunks are bit-identical (device tuning).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="TCP port (0: pick a free one and print it)."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Most images decoded together (1 turns micro-batching off)."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0.0, help="Longest wait for more requests after the first of a batch."),
    max_queue: int | None = typer.Option(
        None,
        "--max-queue",
        min=1,
        help="Most images waiting for the decoder; beyond it a request gets 503 with Retry-After at once (default: 8 × max-batch).",
    ),
    max_connections: int = typer.Option(2048, "--max-connections", min=1, help="Most open connections; beyond it 503 with Retry-After."),
    max_body: int | None = typer.Option(
        None, "--max-body-bytes", min=64, help="Largest accepted request body (default: header + max(4, max-batch) images)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Decoder threads (default: one per core but one, left to the HTTP event loop)."
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate (chain): serve HTTPS. With --tls-key."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="File holding a bearer token required on /v1/* (/healthz and /metrics stay open)."
    ),
    client_timeout: float = typer.Option(
        10.0,
        "--client-timeout",
        min=0.1,
        help="Seconds a client has to send a request's head, and its body; slower connections are closed (head) or answered 408 (body).",
    ),
) -> None:
    """Serve the cloud decoder over HTTP(S): POST /v1/decode, GET /healthz, /v1/model(s), /metrics, /openapi.json.

    Example: dtconvert serve export/digits export/digits-tune --port 8080
    """
    from dtconvert.server import ServeOptions, read_token
    from dtconvert.server import serve as run_server

    options = ServeOptions(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_body_bytes=max_body,
        max_queue=max_queue,
        max_connections=max_connections,
        tls_cert=tls_cert,
        tls_key=tls_key,
        header_timeout=client_timeout,
        body_timeout=client_timeout,
        token=read_token(token_file) if token_file is not None else None,
    )
    run_server(export_dirs, host, port, options, threads, announce=lambda line: typer.echo(line))


@app.command()
@user_errors
def cloud(
    export_dirs: list[Path] = typer.Argument(
        ..., help="Exports of device variants tuned from one checkpoint (bit-identical cloud trunks)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write: triton/ (model repository) and cloud.json."),
) -> None:
    """Assemble a shared-cloud Triton repository: one trunk model with dynamic batching for every variant,
    its heads, and one ensemble per variant (the same inputs and outputs as an export's own Triton model).

    Example: dtconvert cloud export/digits export/digits-tune --out cloud
    """
    from dtconvert.triton import write_cloud

    description = write_cloud(export_dirs, out)
    for v in description["variants"]:
        typer.echo(f"{v['ensemble']}: tasks {', '.join(v['tasks'])}; heads {', '.join(v['heads'])}")
    typer.echo(
        f"wrote {out / 'triton'} ({len(description['variants'])} variants, one trunk model) and {out / 'cloud.json'}; "
        f"run: tritonserver --model-repository {out / 'triton'}"
    )


@app.command()
@user_errors
def client(
    export_dir: Path = typer.Argument(..., help="The export directory the server was started on."),
    target: str = typer.Option("executorch", "--target", "-t", help="Device runtime: executorch or tflite."),
    url: str = typer.Option("http://127.0.0.1:8080", "--url", help="The 'dtconvert serve' base URL."),
    images: Path | None = typer.Option(
        None, "--images", help="A folder of images (sub-folders named after the first task's labels give accuracy)."
    ),
    digits: int | None = typer.Option(
        None, "--digits", min=1, help="Use the first N held-out digits (models trained on digits); accuracy per task."
    ),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Labels per task to ask for."),
    json_report: Path | None = typer.Option(None, "--json", help="Write every prediction and timing to this JSON file."),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="File holding the server's bearer token (servers started with --token-file)."
    ),
    ca_file: Path | None = typer.Option(
        None, "--ca-file", help="PEM certificate authority to trust for an https URL (default: the system's)."
    ),
) -> None:
    """The reference device client: encode on-device, send the int8 wire, print the cloud's predictions.
    A 503 (server at capacity) is retried after its Retry-After, at most 3 times.

    Example: dtconvert client export/digits --target tflite --digits 50
    """
    if (images is None) == (digits is None):
        raise UserError("pass one of --images DIR or --digits N")
    if images is not None and not images.is_dir():
        raise UserError(f"--images {images}: not a directory")

    from dtconvert.client import ServerError, client_images, run_client
    from dtconvert.manifest import load_manifest
    from dtconvert.output import console as make_console
    from dtconvert.server import read_token

    console = make_console(stderr=True)
    token = read_token(token_file) if token_file is not None else None
    if ca_file is not None and not ca_file.is_file():
        raise UserError(f"--ca-file {ca_file}: no such file")
    manifest = load_manifest(export_dir)
    pictures, labels, names = client_images(export_dir, manifest, images, digits)
    console.print(f"{len(pictures)} images → {target} encoder → {url}/v1/decode", highlight=False)
    try:
        report = run_client(export_dir, target, url, pictures, labels, names, top_k=top_k, token=token, cafile=ca_file)
    except ServerError as e:
        _fail(str(e), code=1)
    _print_client_report(report, manifest)
    if json_report is not None:
        from dtconvert.checkpoint import atomic_write

        atomic_write(json_report, lambda tmp: tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n"))


def _print_client_report(report, manifest: dict) -> None:
    from rich.table import Table

    from dtconvert.output import console as make_console

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


def _print_export_summary(export_dir: Path, manifest: dict) -> None:
    from rich.table import Table

    from dtconvert.output import console as make_console

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


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("runs"), "--out", help="Where the demo keeps its checkpoints and exports."),
    retrain: bool = typer.Option(False, "--retrain", help="Train again even if checkpoints of the same recipes exist."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """End to end on the bundled digits: train digits and its device-tuned variant (or reuse them),
    export every target, verify, serve both from one shared cloud, run the client for each.

    Example: dtconvert demo
    """
    from dtconvert.output import console as make_console
    from dtconvert.recipe import load_recipe

    console = make_console(stderr=True)
    base_path, tuned_path = out / "digits" / "ckpt.pt", out / "digits-tune" / "ckpt.pt"
    base = _demo_checkpoint(
        console,
        load_recipe(bundled_recipe_dir() / "digits.yaml"),
        base_path,
        None,
        retrain,
        quiet,
        "1. train digits (GradNorm over digit and odd)",
    )
    _print_metrics(base, title="digits: held-out metrics (fp32)")
    tuned = _demo_checkpoint(
        console,
        load_recipe(bundled_recipe_dir() / "digits-tune.yaml"),
        tuned_path,
        base_path,
        retrain,
        quiet,
        "2. device-tune digits-tune from it: a new task (mod3), the cloud trunk frozen",
    )
    _print_metrics(tuned, title="digits-tune: held-out metrics (fp32)")

    exports = []
    for step, (name, ckpt_path) in enumerate((("digits", base_path), ("digits-tune", tuned_path)), start=3):
        console.rule(f"{step}. export {name}: int8 ExecuTorch, Core ML, TFLite + TorchScript decoder, then verify")
        exports.append(_demo_export(console, ckpt_path, out / "export" / name))

    from dtconvert.client import client_images, run_client
    from dtconvert.output import third_party_log
    from dtconvert.server import BackgroundServer

    console.rule("5. one shared cloud serves both variants on loopback; the reference client sends every held-out digit")
    reports = []
    with BackgroundServer([d for d, _ in exports]) as server:
        console.print(
            f"dtconvert serve {' '.join(str(d) for d, _ in exports)} listening on {server.url} (one trunk, {len(exports)} variants)",
            highlight=False,
        )
        for export_dir, manifest in exports:
            images, labels, names = client_images(export_dir, manifest, None, None)
            for target in ("executorch", "tflite"):
                started = time.perf_counter()
                with third_party_log(export_dir, f"demo client {target}"):  # the runtimes' own chatter
                    reports.append((manifest, run_client(export_dir, target, server.url, images, labels, names)))
                console.print(
                    f"✓ {manifest['model']['name']} via {reports[-1][1].runtime}: {len(images)} requests "
                    f"({time.perf_counter() - started:.1f} s)",
                    highlight=False,
                )
        served_ids = server.service.model_ids
    console.print("server stopped", highlight=False)
    _print_demo_table([m for _, m in exports], reports)
    typer.echo(
        f"exports in {out / 'export'}; serve both with: dtconvert serve {' '.join(str(d) for d, _ in exports)} "
        f"(model ids {', '.join(served_ids)})"
    )


def _demo_checkpoint(console, recipe, path: Path, init: Path | None, retrain: bool, quiet: bool, title: str) -> dict:
    """Reuse ``path`` if it was trained from the same recipe (and, when tuned, from ``init`` as it is now); else train."""
    from dtconvert.checkpoint import load_checkpoint, sha256_file
    from dtconvert.train import train as run_training

    if path.is_file() and not retrain:
        try:
            cached = load_checkpoint(path)
        except UserError:
            cached = None
        same_init = init is None or (cached is not None and (cached.get("init") or {}).get("sha256") == sha256_file(init))
        if cached is not None and cached.get("recipe") == recipe.to_dict() and same_init:
            console.print(f"reusing {path} (same recipe; --retrain to train again)", highlight=False)
            return cached
    console.rule(title)
    return run_training(recipe, path.parent, init=init, console=console, show_progress=not quiet)


def _demo_export(console, ckpt_path: Path, out: Path) -> tuple[Path, dict]:
    from dtconvert.export import ExportFailed, run_export
    from dtconvert.targets import DEVICE_TARGETS

    try:
        export_dir, manifest = run_export(ckpt_path, list(DEVICE_TARGETS), out=out)
    except ExportFailed as e:
        _fail(f"{e} (full log: {e.log})", code=1)
    _print_export_summary(export_dir, manifest)
    verification = manifest["verification"]
    if not verification["passed"]:
        first = verification["failed"][0]
        _fail(f"verification failed: {first['artifact']} {first['runtime']} {first['check']}: {first['detail']}", code=1)
    console.print(
        f"verified: all {verification['checks']} checks passed on {verification['samples']} images ({_sets_text(verification['sets'])})",
        highlight=False,
    )
    return export_dir, manifest


def _print_demo_table(manifests: list[dict], reports: list) -> None:
    """One row per variant and path from pixels to predictions: accuracy per task, bytes sent, latency."""
    from rich.table import Table

    from dtconvert.output import console as make_console
    from dtconvert.wire import header_size

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


@app.command()
@user_errors
def bench(
    export_dirs: list[Path] = typer.Argument(
        ..., help="Directories written by 'dtconvert export' from one checkpoint (e.g. its int8 and fp32 exports)."
    ),
    threads: str = typer.Option("1", "--threads", help="Thread counts, comma-separated."),
    batch: str = typer.Option(
        "1",
        "--batch",
        help="Batch sizes, comma-separated. Above 1, ExecuTorch is re-lowered at that batch from the checkpoint; "
        "LiteRT is resized if that is exact, else runs B batch-1 calls.",
    ),
    runs: int = typer.Option(30, "--runs", min=1, help="Timed runs per runtime and configuration, after the warm-up."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Untimed runs per runtime before timing."),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="The checkpoint the export came from (default: looked for beside the export by the manifest's file name and sha256).",
    ),
    json_report: Path | None = typer.Option(
        None, "--json", help="Write every number to this JSON file (schema: dtconvert/bench.schema.json)."
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Draw latency per image and runtime to this PNG file."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak memory per runtime in fresh subprocesses."),
) -> None:
    """Latency, size, wire bytes and peak memory of each device artifact in its own runtime vs eager fp32.

    Example: dtconvert bench export/ckpt --threads 1,2 --batch 1,8 --json bench.json --plot bench.png
    """
    from dtconvert.bench import parse_counts

    thread_counts, batches = parse_counts(threads, "--threads"), parse_counts(batch, "--batch")
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot {plot}: the plot is a PNG file; name it *.png")
    for export_dir in export_dirs:
        if not (export_dir / "manifest.json").is_file():
            raise UserError(f"{export_dir}: not an export directory (no manifest.json)")
    from dtconvert.bench import how_lines, plot_report, rich_table, run_bench, validate_report, write_json
    from dtconvert.output import console as make_console
    from dtconvert.output import progress_console

    console = progress_console()
    report = _quietly(
        lambda: run_bench(
            export_dirs,
            thread_counts,
            batches,
            runs,
            warmup=warmup,
            checkpoint=checkpoint,
            memory=memory,
            log=lambda line: console.print(line, highlight=False),
            command=_command_line(),
        ),
        "bench",
    )
    problems = validate_report(report)
    if json_report is not None:
        write_json(report, json_report)
    if plot is not None:
        plot_report(report, plot)
    make_console().print(rich_table(report))
    for line in [*how_lines(report), *report["notes"]]:
        typer.echo(f"note: {line}")
    typer.echo(f"peak memory: {report['memory_measures']}")
    if problems:
        _fail(f"the report failed its own consistency check: {problems[0]}", code=1)


@app.command()
@user_errors
def sweep(
    recipe: str = typer.Argument(..., help=BUNDLED_RECIPES_HELP),
    pool_at: str | None = typer.Option(
        None,
        "--pool-at",
        help="Configurations, comma-separated: 'none', or the recipe's pool_at layers joined by '+' "
        "(default: none, then each prefix of the recipe's pool_at).",
    ),
    bottleneck: str | None = typer.Option(
        None, "--bottleneck", help="Wire widths, comma-separated; 0 keeps device_dim (default: the recipe's)."
    ),
    wire: str = typer.Option("int8,fp32", "--wire", help="int8 (int8 .pte, int8 wire), fp32 (fp32 .pte, fp32 wire), or both."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs per configuration (default: a third of the recipe's)."),
    batch: str = typer.Option("1,8", "--batch", help="Batch sizes at which ExecuTorch latency is measured, comma-separated."),
    runs: int = typer.Option(30, "--runs", min=1, help="Timed runs per configuration and batch size."),
    threads: int = typer.Option(1, "--threads", min=1, help="Threads for ExecuTorch's XNNPACK threadpool while timing."),
    calib: str | None = typer.Option(None, "--calib", help="Calibration images per int8 export, as for 'dtconvert export' (default 128)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory (default: ./sweep/<recipe name>)."),
) -> None:
    """Split-point analysis: train, export and measure each pooling and bottleneck configuration.

    Example: dtconvert sweep digits --pool-at none,1,1+2,1+2+3 --bottleneck 8,16 --epochs 20 --out sweep/digits
    """
    from dtconvert.bench import parse_counts
    from dtconvert.sweep import parse_bottleneck, parse_pool_at, parse_wire

    pool_ats = None if pool_at is None else parse_pool_at(pool_at)
    bottlenecks = None if bottleneck is None else parse_bottleneck(bottleneck)
    wires, batches = parse_wire(wire), parse_counts(batch, "--batch")
    recipe_path = resolve_recipe(recipe)
    from dtconvert.output import progress_console
    from dtconvert.recipe import load_recipe
    from dtconvert.sweep import markdown_table, run_sweep

    out = out if out is not None else Path("sweep") / load_recipe(recipe_path).name
    console = progress_console()
    report = _quietly(
        lambda: run_sweep(
            recipe_path,
            pool_ats,
            bottlenecks,
            wires,
            epochs,
            batches,
            runs,
            out,
            threads=threads,
            calib=calib,
            log=lambda line: console.print(line, highlight=False),
            command=_command_line(),
        ),
        "sweep",
    )
    typer.echo(markdown_table(report), nl=False)
    typer.echo(f"wrote {out}/sweep.json, sweep.csv, sweep.md, sweep.png and configs/")


def _command_line() -> str | None:
    """The command as the user typed it, for the record in a report (None when not run from a shell)."""
    import shlex

    if not sys.argv or Path(sys.argv[0]).name not in ("dtconvert", "cli.py"):
        return None
    return " ".join(["dtconvert", *(shlex.quote(a) for a in sys.argv[1:])])


def _quietly(work, name: str):
    """Run ``work`` with file descriptors 1 and 2 (runtimes' and converters' native chatter) in a log
    that is deleted on success and named on an unexpected failure."""
    import tempfile

    from dtconvert.export import _redirect_fds

    fd, log = tempfile.mkstemp(prefix=f"dtconvert-{name}-", suffix=".log")
    os.close(fd)
    try:
        with _redirect_fds(Path(log), name):
            result = work()
    except UserError:
        os.unlink(log)
        raise
    except BaseException:
        typer.echo(f"{name} failed; the runtimes' own output is in {log}", err=True)
        raise
    os.unlink(log)
    return result


def run() -> None:
    """Console-script entry point."""
    import logging

    # torchao warns on import that its optional CUDA kernels do not load; dtconvert runs on CPU.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    # torchao registers an Enum with torch's pytree, which torch 2.13 now warns about on every start.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        app()
    except BrokenPipeError:  # `dtconvert info x | head`
        sys.stderr.close()


if __name__ == "__main__":
    run()
