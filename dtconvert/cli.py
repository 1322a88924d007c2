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
from pathlib import Path
from typing import Optional

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
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this checkpoint (needed by --tune device)."),
    tune: Optional[str] = typer.Option(None, "--tune", help="'device': freeze the shared cloud, train the device half and new task heads. Default: the recipe's 'tune' key."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override the recipe's epoch count."),
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

    from rich.console import Console

    from dtconvert.train import train as run_training

    console = Console(stderr=True)
    ckpt = run_training(r, out, init=init, tune=tune, console=console, show_progress=not quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        _print_metrics(ckpt, title=f"{r.name}: held-out metrics")
        typer.echo(f"wrote {out / 'ckpt.pt'}")


def _print_metrics(ckpt: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

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
    Console().print(table)
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
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['kind']}: {report['source']}", show_header=False)
    params = report["parameters"]
    table.add_row("parameters", f"device {params['device']:,} · cloud {params['cloud']:,} (heads {params['cloud_heads']:,}) · total {params['total']:,}")
    table.add_row("tasks", ", ".join(f"{t['name']} ({t['classes']})" for t in report["tasks"]))
    pre = report["preprocessing"]
    table.add_row("device input", f"{report['input_shape']} {pre['layout']}, resize {pre['resize']}, mean {pre['mean']}, std {pre['std']}")
    table.add_row("wire tensor", f"{report['wire']['shape']} → {report['wire']['int8_bytes_per_image']} bytes per image as int8")
    if "metrics" in report:
        table.add_row("held-out", ", ".join(f"{k} {v:.2%}" for k, v in report["metrics"]["heldout"].items()))
    Console().print(table)


@app.command()
@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by 'dtconvert train'."),
    target: str = typer.Option("all", "--target", "-t", help="executorch, coreml, tflite, a comma-separated list, or all."),
    precision: str = typer.Option("int8", "--precision", help="int8 (static PTQ of weights and activations) or fp32."),
    calib: Optional[str] = typer.Option(None, "--calib", help="Calibration images: a count N taken from the checkpoint's training split (default 128), or a folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Export directory (default: ./export/<checkpoint stem>)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Run 'dtconvert verify' on the export and record the results in the manifest."),
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
        _fail(f"verification failed ({len(verification['failed'])} checks; first: {first['artifact']} {first['runtime']} "
              f"{first['check']}: {first['detail']}); run 'dtconvert verify {export_dir}' for the full table", code=1)
    if verification is not None:
        typer.echo(f"verified: {verification['checks']} checks passed on {verification['samples']} held-out images")


@app.command("verify")
@user_errors
def verify_command(
    export_dir: Path = typer.Argument(..., help="A directory written by 'dtconvert export'."),
    data: Optional[Path] = typer.Option(None, "--data", help="Verify on these images instead (sub-folders named after the first task's labels give accuracy too)."),
    digits: bool = typer.Option(False, "--digits", help="Verify on the bundled digits' held-out split (models trained on digits)."),
    json_report: Optional[Path] = typer.Option(None, "--json", help="Write every number to this JSON file."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML report (one test case per artifact and check)."),
    tolerance: Optional[Path] = typer.Option(None, "--tolerance", help="YAML file overriding the default bounds (target → precision → bound)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use only the first N held-out images."),
) -> None:
    """Accuracy parity of every artifact in its real runtime against the fp32 model: a CI gate.

    Exit status: 0 all checks pass, 1 a check failed, 2 bad input.

    Example: dtconvert verify export/ckpt --json verify.json --junit verify.xml
    """
    from rich.console import Console

    from dtconvert.verify import verify_export, write_reports

    if data is not None and digits:
        raise UserError("--data and --digits are alternatives; pass one")
    console = Console(stderr=True)
    report = verify_export(export_dir, data=data, digits=digits, tolerance_file=tolerance, limit=limit,
                           log=lambda line: console.print(line, highlight=False))
    write_reports(report, json_report, junit)
    _print_verify_table(report)
    if not report.passed:
        failed = [c for c in report.checks if not c.passed]
        _fail(f"{len(failed)} of {len(report.checks)} checks failed; first: {failed[0].artifact} {failed[0].runtime} {failed[0].check}: {failed[0].detail}", code=1)
    typer.echo(f"all {len(report.checks)} checks passed on {report.samples} images ({report.data})")


def _print_verify_table(report) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"dtconvert verify {report.export_dir}"))
    for column in ("artifact", "runtime", "check", "result", "measured"):
        table.add_column(column)
    for c in report.checks:
        table.add_row(escape(c.artifact), escape(c.runtime), escape(c.check), "[green]pass[/]" if c.passed else "[red]FAIL[/]", escape(c.detail))
    Console().print(table)


def _print_export_summary(export_dir: Path, manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{export_dir}/manifest.json")
    for column in ("artifact", "part", "target", "precision", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for a in manifest["artifacts"]:
        table.add_row(a["path"], a["part"], a["target"], a["precision"], f"{a['bytes']:,}")
    console = Console()
    console.print(table)
    wire, comm = manifest["wire"], manifest["communication"]
    line = (f"wire tensor {wire['shape']} int8 (scale {wire['scale']:.5g}, zero point {wire['zero_point']}): "
            f"{comm['wire_int8_bytes']:,} B/image vs {comm['device_input_uint8_bytes']:,} B uint8 device input")
    if "source_image_uint8_bytes" in comm:
        line += f", {comm['source_image_uint8_bytes']:,} B source image"
    line += f", {comm['unpooled_fp32_token_bytes']:,} B unpooled fp32 tokens"
    console.print(line, highlight=False)


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("runs"), "--out", help="Where the demo keeps its checkpoint and export."),
    retrain: bool = typer.Option(False, "--retrain", help="Train again even if a checkpoint of the same recipe exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """End to end on the bundled digits: train (or reuse the checkpoint), export every target, verify.

    Example: dtconvert demo
    """
    from rich.console import Console

    from dtconvert.checkpoint import load_checkpoint
    from dtconvert.export import ExportFailed, run_export
    from dtconvert.recipe import load_recipe
    from dtconvert.targets import DEVICE_TARGETS
    from dtconvert.train import train as run_training

    console = Console(stderr=True)
    recipe = load_recipe(bundled_recipe_dir() / "digits.yaml")
    ckpt_path = out / "digits" / "ckpt.pt"
    ckpt = None
    if ckpt_path.is_file() and not retrain:
        try:
            cached = load_checkpoint(ckpt_path)
        except UserError:
            cached = None
        if cached is not None and cached.get("recipe") == recipe.to_dict():
            console.print(f"reusing {ckpt_path} (same recipe; --retrain to train again)", highlight=False)
            ckpt = cached
    if ckpt is None:
        console.rule("1. train digits (GradNorm over digit and odd)")
        ckpt = run_training(recipe, ckpt_path.parent, console=console, show_progress=not quiet)
    _print_metrics(ckpt, title="digits: held-out metrics (fp32)")

    console.rule("2. export int8 ExecuTorch, Core ML, TFLite + TorchScript decoder, then verify")
    try:
        export_dir, manifest = run_export(ckpt_path, list(DEVICE_TARGETS), out=out / "export" / "digits")
    except ExportFailed as e:
        _fail(f"{e} (full log: {e.log})", code=1)
    _print_export_summary(export_dir, manifest)
    _print_demo_parity(manifest)
    verification = manifest["verification"]
    if not verification["passed"]:
        first = verification["failed"][0]
        _fail(f"verification failed: {first['artifact']} {first['runtime']} {first['check']}: {first['detail']}", code=1)
    typer.echo(f"all {verification['checks']} verification checks passed; export in {export_dir}")


def _print_demo_parity(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    tasks = [t["name"] for t in manifest["tasks"]]
    table = Table(title=f"held-out accuracy per path ({manifest['verification']['samples']} images, int8 wire of {manifest['wire']['bytes_per_image']} B)")
    table.add_column("path")
    for task in tasks:
        table.add_column(task, justify="right")
    table.add_column("wire SQNR", justify="right")
    fp32_row = None
    for artifact, per_runtime in manifest["verification"]["metrics"].items():
        for runtime, numbers in per_runtime.items():
            accuracies = [numbers["tasks"][t].get("accuracy") for t in tasks]
            if fp32_row is None:
                fp32_row = [numbers["tasks"][t].get("fp32_accuracy") for t in tasks]
            sqnr = numbers.get("wire", {}).get("sqnr_db")
            path = "fp32 encoder → int8 wire → decoder" if runtime == "TorchScript" else f"{runtime} → int8 wire → decoder"
            table.add_row(path, *(f"{a:.2%}" if a is not None else "-" for a in accuracies),
                          f"{sqnr:.1f} dB" if sqnr is not None else "-")
    if fp32_row is not None:
        table.add_row("fp32 PyTorch (unsplit)", *(f"{a:.2%}" if a is not None else "-" for a in fp32_row), "-")
    Console().print(table)


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except BrokenPipeError:  # `dtconvert info x | head`
        sys.stderr.close()


if __name__ == "__main__":
    run()
