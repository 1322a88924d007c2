"""The ``dtconvert`` command line: each command parses its options and calls the module that does the work.

Only typer and the standard library are imported at module level: ``dtconvert --help`` must
answer instantly, so torch, TensorFlow, ExecuTorch and coremltools are imported inside the
commands that need them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
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
TUNE_HELP = "'device': freeze the shared cloud, train the device half and new task heads; 'qat': the same with int8-static fake quantization in the loop (default: the recipe's)."  # noqa: E501  one sentence, as --help shows it


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


@app.command()
@user_errors
def train(
    recipe: str = typer.Argument(..., help=BUNDLED_RECIPES_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory; the checkpoint is written to OUT/ckpt.pt."),
    init: Path | None = typer.Option(None, "--init", help="Start from this checkpoint (needed by --tune device)."),
    tune: str | None = typer.Option(None, "--tune", help=TUNE_HELP),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the recipe's epoch count (with --tune qat: its QAT epochs)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Multi-task training balanced with GradNorm.

    Example: dtconvert train recipes/digits.yaml --out runs/digits
    (QAT for int8-static: dtconvert train digits --init runs/digits/ckpt.pt --tune qat --out runs/digits-qat)
    """
    from dtconvert.recipe import TUNE_MODES, load_recipe, resolve_recipe

    r = load_recipe(resolve_recipe(recipe))
    if tune is not None and tune not in TUNE_MODES:
        raise UserError(f"--tune must be one of {', '.join(TUNE_MODES)}, got {tune!r}")
    if epochs is not None:
        r = dataclasses.replace(r, epochs=epochs, qat_epochs=epochs)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a directory")

    from dtconvert.output import console as make_console
    from dtconvert.report.pipeline import print_metrics
    from dtconvert.train import train as run_training

    console = make_console(stderr=True)
    ckpt = run_training(r, out, init=init, tune=tune, console=console, show_progress=not quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print_metrics(ckpt, title=f"{r.name}: held-out metrics")
        typer.echo(f"wrote {out / 'ckpt.pt'}")


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
    from dtconvert.recipe import resolve_recipe

    report = describe(source if source.endswith(".pt") else str(resolve_recipe(source)))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from dtconvert.report.pipeline import print_description

    print_description(report)


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
        "int8-static: full-integer with calibrated activation scales, for NPUs. fp32: no quantization. "
        "auto: int8, keeping float the layer the failed gate names, until it passes (see --max-float).",
    ),
    calib: str | None = typer.Option(None, "--calib", help="Calibration images: N of the checkpoint's training split (128), or a folder."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Export directory (default: ./export/<checkpoint stem>)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Run 'dtconvert verify' on the export; record it in the manifest."),
    arch: str | None = typer.Option(None, "--arch", help="arm64: verify on emulated arm64 CPUs a53 and a76 too (see verify --arch)."),
    keep_float: list[str] = typer.Option(
        [], "--keep-float", help="Keep this encoder module float everywhere (e.g. layers.1.ffn); repeatable."
    ),
    max_float: int = typer.Option(3, "--max-float", min=0, help="--precision auto: most modules kept float."),
) -> None:
    """Split a checkpoint into int8 device artifacts, a TorchScript cloud decoder and a manifest.

    Example: dtconvert export runs/digits/ckpt.pt --target all --out export/ckpt
    """
    from dtconvert.auto import export_checkpoint
    from dtconvert.export import ExportFailed, parse_targets
    from dtconvert.report.pipeline import print_auto_summary, print_export_summary
    from dtconvert.report.verify import verdict_of_export
    from dtconvert.verify import parse_arch

    targets, arm64 = parse_targets(target), parse_arch(arch, "a53,a76")
    try:
        export_dir, manifest, auto = export_checkpoint(
            checkpoint, targets, precision, calib, out, verify, tuple(keep_float), max_float, arm64
        )
    except ExportFailed as e:
        _fail(f"{e} (full log: {e.log})", code=1)
    print_export_summary(export_dir, manifest)
    if auto is not None:
        print_auto_summary(auto)
    verdict_of_export(export_dir, manifest["verification"])


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
    tolerance: Path | None = typer.Option(None, "--tolerance", help="YAML file overriding the default bounds (target → precision → bound)"),
    arch: str | None = typer.Option(None, "--arch", help="arm64: also run the ExecuTorch and LiteRT artifacts on arm64 under QEMU."),
    cpu: str = typer.Option("a53,a76", "--cpu", help="With --arch arm64: the CPU profiles, from a53, a76, max."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N images of each set (held-out, rest, folder)."),
    explain: bool | None = typer.Option(
        None, "--explain/--no-explain", help="SQNR of every encoder layer per runtime (default: on failure)."
    ),
) -> None:
    """Accuracy parity of every artifact in its real runtime against the fp32 model: a CI gate.

    Exit status: 0 all checks pass, 1 a check failed, 2 bad input.

    Example: dtconvert verify export/ckpt --json verify.json --junit verify.xml [--arch arm64 --cpu a53,a76]
    """
    from dtconvert.output import progress_console, third_party_log
    from dtconvert.report.verify import print_verify, to_github, verdict
    from dtconvert.verify import parse_arch, verify_export, write_reports

    console, arm64 = progress_console(), parse_arch(arch, cpu)
    with third_party_log(export_dir, "verify"):
        report = verify_export(
            export_dir,
            data=data,
            digits=digits,
            tolerance_file=tolerance,
            limit=limit,
            log=lambda line: console.print(line, highlight=False),
            explain=explain,
            arm64=arm64,
        )
    write_reports(report, json_report, junit)
    print_verify(report)
    to_github(report)
    verdict(report)


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
    triton: str | None = typer.Option(
        None, "--triton", help="Triton's gRPC host:port serving 'dtconvert cloud''s repository: validate here, decode there (a gateway)."
    ),
) -> None:
    """Serve the cloud decoder over HTTP(S): POST /v1/decode, GET /healthz, /v1/model(s), /metrics, /openapi.json.

    Example: dtconvert serve export/digits export/digits-tune --port 8080
    """
    from dtconvert.serve import ServeOptions, read_token
    from dtconvert.serve import serve as run_server

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
        triton=triton,
    )
    run_server(export_dirs, host, port, options, threads, announce=lambda line: typer.echo(line))


@app.command()
@user_errors
def cloud(
    export_dirs: list[Path] = typer.Argument(
        ..., help="Exports of device variants tuned from one checkpoint (bit-identical cloud trunks)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write: triton/ (model repository) and cloud.json."),
    backend: str = typer.Option("libtorch", "--backend", help="Triton backend: libtorch (GPU fleets) or python (runs anywhere)."),
) -> None:
    """Assemble a shared-cloud Triton repository: one trunk model with dynamic batching for every variant,
    its heads, and one ensemble per variant (the same inputs and outputs as an export's own Triton model).

    Example: dtconvert cloud export/digits export/digits-tune --out cloud --backend python
    """
    from dtconvert.report.pipeline import print_cloud_summary
    from dtconvert.triton import write_cloud

    print_cloud_summary(write_cloud(export_dirs, out, backend), out)


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
    from dtconvert.client import ServerError, check_client_options, client_images, run_client
    from dtconvert.manifest import load_manifest
    from dtconvert.output import console as make_console
    from dtconvert.report.pipeline import print_client_report
    from dtconvert.serve import read_token

    check_client_options(images, digits, ca_file)
    console = make_console(stderr=True)
    token = read_token(token_file) if token_file is not None else None
    manifest = load_manifest(export_dir)
    pictures, labels, names = client_images(export_dir, manifest, images, digits)
    console.print(f"{len(pictures)} images → {target} encoder → {url}/v1/decode", highlight=False)
    try:
        report = run_client(export_dir, target, url, pictures, labels, names, top_k=top_k, token=token, cafile=ca_file)
    except ServerError as e:
        _fail(str(e), code=1)
    print_client_report(report, manifest)
    if json_report is not None:
        report.write_json(json_report)


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
    from dtconvert.demo import run_demo

    run_demo(out, retrain, quiet)


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
    from dtconvert.bench import check_bench_options, parse_counts, run_bench, validate_report, write_json

    thread_counts, batches = parse_counts(threads, "--threads"), parse_counts(batch, "--batch")
    check_bench_options(export_dirs, plot)
    from dtconvert.output import command_line, progress_console, with_native_log
    from dtconvert.report.bench import present

    console = progress_console()
    report = with_native_log(
        lambda: run_bench(
            export_dirs,
            thread_counts,
            batches,
            runs,
            warmup=warmup,
            checkpoint=checkpoint,
            memory=memory,
            log=lambda line: console.print(line, highlight=False),
            command=command_line(),
        ),
        "bench",
    )
    problems = validate_report(report)
    if json_report is not None:
        write_json(report, json_report)
    present(report, plot)
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
    from dtconvert.output import command_line, progress_console, with_native_log
    from dtconvert.recipe import load_recipe, resolve_recipe
    from dtconvert.report.sweep import markdown_table, write_files
    from dtconvert.sweep import parse_bottleneck, parse_pool_at, parse_wire, run_sweep

    pool_ats = None if pool_at is None else parse_pool_at(pool_at)
    bottlenecks = None if bottleneck is None else parse_bottleneck(bottleneck)
    wires, batches, recipe_path = parse_wire(wire), parse_counts(batch, "--batch"), resolve_recipe(recipe)
    out = out if out is not None else Path("sweep") / load_recipe(recipe_path).name
    console = progress_console()
    report = with_native_log(
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
            command=command_line(),
            render=write_files,
        ),
        "sweep",
    )
    typer.echo(markdown_table(report), nl=False)
    typer.echo(f"wrote {out}/sweep.json, sweep.csv, sweep.md, sweep.png and configs/")


def run() -> None:
    """Console-script entry point."""
    import logging

    # torchao warns on import that its CUDA kernels do not load (dtconvert runs on CPU), and that it
    # registers an Enum with torch's pytree (torch 2.13 warns about that on every start).
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        app()
    except BrokenPipeError:  # `dtconvert info x | head`
        sys.stderr.close()


if __name__ == "__main__":
    run()
