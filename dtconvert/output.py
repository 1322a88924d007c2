"""Console plumbing: output that reads whole in a terminal and a CI log, and native chatter kept in logs.

rich sizes everything to the terminal; with stdout piped (a CI log, ``| tee``) it falls back to
80 columns and then ellipsizes table cells and wraps long lines, so a log reader cannot tell
which artifact failed. Off a terminal, :func:`console` therefore lays out at a width no record
reaches (tables render at their natural width, lines are never broken) without colour, and
:meth:`LogConsole.rule` draws a short rule instead of one as wide as that.

Converters and runtimes write to file descriptors 1 and 2 from native code; the context
managers here send that to a log (or drop it) so the user sees dtconvert's own lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO, TypeVar

from rich.console import Console

T = TypeVar("T")
LOG_WIDTH = 100_000  # wider than any record; tables still render only as wide as their content
RULE_WIDTH = 100


class LogConsole(Console):
    """A console for a log file or pipe: nothing cut, nothing wrapped, no colour codes."""

    def rule(self, title: Any = "", *args: Any, **kwargs: Any) -> None:  # a full-width rule would be LOG_WIDTH long
        text = f"── {title} " if title else ""
        self.print(text + "─" * max(4, RULE_WIDTH - len(text)), markup=False, highlight=False, soft_wrap=True)


def console(stderr: bool = False, file: TextIO | None = None) -> Console:
    """rich's own console on a terminal; a :class:`LogConsole` when the stream is not one."""
    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    if _is_terminal(stream):
        return Console(file=file, stderr=stderr)
    return LogConsole(file=stream, width=LOG_WIDTH, no_color=True, soft_wrap=True, highlight=False)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def on_github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


@contextlib.contextmanager
def redirected_fds(target: IO) -> Iterator[None]:
    """Point file descriptors 1 and 2 (Python's and native code's output alike) at ``target``, an
    open file, for the duration; restore them after."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(target.fileno(), 1)
    os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextlib.contextmanager
def logged_fds(log_path: Path, label: str) -> Iterator[None]:
    """Append file descriptors 1 and 2 (Python and C++ alike) to ``log_path`` under a header, for the duration."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {label} =====\n")
        log.flush()
        with redirected_fds(log):
            yield


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Hold back what native code writes to file descriptors 1 and 2 for the duration (ExecuTorch's
    runtime logs its CPU probing at load time); it is dropped, as the caller turns a failure into one
    sentence of its own."""
    import tempfile

    with tempfile.TemporaryFile() as sink, redirected_fds(sink):
        yield


def progress_console() -> Console:
    """A console on a duplicate of the process's stderr, so progress still reaches the user while
    :func:`redirected_fds` sends descriptors 1 and 2 (the converters' chatter) to a log."""
    return console(file=os.fdopen(os.dup(2), "w", buffering=1, closefd=True))


@contextlib.contextmanager
def third_party_log(export_dir: Path, label: str) -> Iterator[Path]:
    """Send what libraries write to descriptors 1 and 2 (TensorFlow's oneDNN lines, coremltools'
    proxy warnings, ...) to the export's own ``export.log`` for the duration, under a header; to a
    temporary log when the export cannot be written to (a read-only CI artifact). Yields the log."""
    import tempfile
    from datetime import UTC, datetime

    path = Path(export_dir) / "export.log"
    try:
        log = open(path, "a", encoding="utf-8")  # closed by the with below, after the descriptors are restored
    except OSError:
        fd, name = tempfile.mkstemp(prefix=f"dtconvert-{label}-", suffix=".log")
        path, log = Path(name), os.fdopen(fd, "w", encoding="utf-8")
    with log:
        log.write(f"\n===== {label} {datetime.now(UTC).isoformat(timespec='seconds')} =====\n")
        log.flush()
        with redirected_fds(log):
            yield path


def command_line() -> str | None:
    """The command as the user typed it, for the record in a report (None when not run from a shell)."""
    import shlex

    if not sys.argv or Path(sys.argv[0]).name not in ("dtconvert", "cli.py"):
        return None
    return " ".join(["dtconvert", *(shlex.quote(a) for a in sys.argv[1:])])


def with_native_log(work: Callable[[], T], name: str) -> T:
    """Run ``work`` with file descriptors 1 and 2 (runtimes' and converters' native chatter) in a log
    that is deleted on success and named on an unexpected failure."""
    import tempfile

    from dtconvert.errors import UserError

    fd, log = tempfile.mkstemp(prefix=f"dtconvert-{name}-", suffix=".log")
    os.close(fd)
    try:
        with logged_fds(Path(log), name):
            result = work()
    except UserError:
        os.unlink(log)
        raise
    except BaseException:
        print(f"{name} failed; the runtimes' own output is in {log}", file=sys.stderr)
        raise
    os.unlink(log)
    return result
