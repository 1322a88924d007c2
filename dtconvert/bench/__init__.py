"""``dtconvert bench``: measured latency, size, wire bytes and memory of an export, side by side.

One process times every device artifact in the runtime its target gives (ExecuTorch with the
XNNPACK delegate for ``.pte``, the LiteRT interpreter with its default XNNPACK delegate for
``.tflite``) against the checkpoint's ``DeviceEncoder`` in eager PyTorch fp32, plus the
TorchScript cloud decoder; peak memory is probed per runtime and batch in a fresh process.
The report is plain data; ``dtconvert.report.bench`` draws it.

* ``machine``: what the numbers were measured on;
* ``plan``: what runs at each batch size (re-lowering ExecuTorch, resizing LiteRT);
* ``measure``: building calls, interleaved timing, summaries, the memory probe;
* ``run``: ``run_bench``, the steps in order;
* ``check``: ``validate_report``, the report against its schema, itself and the files.
"""

from pathlib import Path

from dtconvert.bench.check import validate_report
from dtconvert.bench.machine import machine_info
from dtconvert.bench.measure import summarize, time_interleaved
from dtconvert.bench.plan import calibration_for, lower_executorch
from dtconvert.bench.run import BENCH_FORMAT, BENCH_VERSION, run_bench, write_json
from dtconvert.errors import UserError


def parse_counts(text: str, flag: str) -> list[int]:
    """``"1,2"`` → ``[1, 2]``: positive integers, comma-separated, duplicates dropped."""
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise UserError(f"{flag} {text!r}: expected comma-separated positive integers, e.g. {flag} 1,2")
        if int(item) not in values:
            values.append(int(item))
    return values


def check_bench_options(export_dirs: list[Path], plot: Path | None) -> None:
    """``dtconvert bench``'s arguments that typer cannot check alone."""
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot {plot}: the plot is a PNG file; name it *.png")
    for export_dir in export_dirs:
        if not (export_dir / "manifest.json").is_file():
            raise UserError(f"{export_dir}: not an export directory (no manifest.json)")


__all__ = [
    "BENCH_FORMAT",
    "BENCH_VERSION",
    "calibration_for",
    "check_bench_options",
    "lower_executorch",
    "machine_info",
    "parse_counts",
    "run_bench",
    "summarize",
    "time_interleaved",
    "validate_report",
    "write_json",
]
