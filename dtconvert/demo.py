"""``dtconvert demo``: train, tune, export, verify, serve and query both digits variants, end to end."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from dtconvert.errors import CheckFailed, UserError
from dtconvert.output import console as make_console
from dtconvert.recipe import bundled_recipe_dir, load_recipe
from dtconvert.report.pipeline import print_demo_table, print_export_summary, print_metrics
from dtconvert.report.verify import sets_text


def run_demo(out: Path, retrain: bool, quiet: bool) -> None:
    """Train digits and its device-tuned variant (or reuse them), export every target, verify,
    serve both from one shared cloud and run the reference client for each."""
    console = make_console(stderr=True)
    base_path, tuned_path = out / "digits" / "ckpt.pt", out / "digits-tune" / "ckpt.pt"
    base = _checkpoint(
        console,
        load_recipe(bundled_recipe_dir() / "digits.yaml"),
        base_path,
        None,
        retrain,
        quiet,
        "1. train digits (GradNorm over digit and odd)",
    )
    print_metrics(base, title="digits: held-out metrics (fp32)")
    tuned = _checkpoint(
        console,
        load_recipe(bundled_recipe_dir() / "digits-tune.yaml"),
        tuned_path,
        base_path,
        retrain,
        quiet,
        "2. device-tune digits-tune from it: a new task (mod3), the cloud trunk frozen",
    )
    print_metrics(tuned, title="digits-tune: held-out metrics (fp32)")

    exports = []
    for step, (name, ckpt_path) in enumerate((("digits", base_path), ("digits-tune", tuned_path)), start=3):
        console.rule(f"{step}. export {name}: int8 ExecuTorch, Core ML, TFLite + TorchScript decoder, then verify")
        exports.append(_export(console, ckpt_path, out / "export" / name))
    reports, served_ids = _serve_and_query(console, exports)
    print_demo_table([m for _, m in exports], reports)
    typer.echo(
        f"exports in {out / 'export'}; serve both with: dtconvert serve {' '.join(str(d) for d, _ in exports)} "
        f"(model ids {', '.join(served_ids)})"
    )


def _checkpoint(console, recipe, path: Path, init: Path | None, retrain: bool, quiet: bool, title: str) -> dict:
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


def _export(console, ckpt_path: Path, out: Path) -> tuple[Path, dict]:
    from dtconvert.export import ExportFailed, run_export
    from dtconvert.targets import DEVICE_TARGETS

    try:
        export_dir, manifest = run_export(ckpt_path, list(DEVICE_TARGETS), out=out)
    except ExportFailed as e:
        raise CheckFailed(f"{e} (full log: {e.log})") from None
    print_export_summary(export_dir, manifest)
    verification = manifest["verification"]
    if not verification["passed"]:
        first = verification["failed"][0]
        raise CheckFailed(f"verification failed: {first['artifact']} {first['runtime']} {first['check']}: {first['detail']}")
    console.print(
        f"verified: all {verification['checks']} checks passed on {verification['samples']} images ({sets_text(verification['sets'])})",
        highlight=False,
    )
    return export_dir, manifest


def _serve_and_query(console, exports: list[tuple[Path, dict]]) -> tuple[list, list[str]]:
    """One shared cloud on loopback for every variant; every held-out digit through each variant's
    ExecuTorch and LiteRT encoders. Returns (manifest, client report) pairs and the served model ids."""
    from dtconvert.client import client_images, run_client
    from dtconvert.output import third_party_log
    from dtconvert.serve import BackgroundServer

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
    return reports, served_ids
