"""``dtconvert serve`` as a child process on a free loopback port, for tests and benchmarks.

    with running_server(export_dir, "--max-batch", "8") as server:
        urllib.request.urlopen(server.url + "/healthz")

The server is asked for port 0 and announces the port it got, so there is no race for a port.
On exit it gets SIGTERM (a graceful shutdown) and must stop within the timeout.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ANNOUNCE = re.compile(r"on (https?://[\w.-]+:\d+) ")


@dataclass
class ServerProcess:
    """A running ``dtconvert serve``: its URL, its process, and every line it printed so far."""

    url: str
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return "".join(self.output)


def dtconvert_command() -> list[str]:
    """The console script beside this Python (the module where it is not installed)."""
    exe = Path(sys.executable).with_name("dtconvert")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dtconvert.cli"]


@contextmanager
def running_server(
    export_dir: Path | list[Path], *args: str, timeout: float = 120.0, ssl_context: ssl.SSLContext | None = None
) -> Iterator[ServerProcess]:
    """``dtconvert serve`` on 127.0.0.1 with the extra flags ``args``, answering /healthz.
    ``export_dir``: one export, or a list of exports for one shared-cloud server; ``ssl_context``
    trusts the server's certificate when it serves https."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    exports = [str(d) for d in export_dir] if isinstance(export_dir, (list, tuple)) else [str(export_dir)]
    command = [*dtconvert_command(), "serve", *exports, "--host", "127.0.0.1", "--port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: list[str] = []
    deadline = time.monotonic() + timeout
    url, reader = _read_announced_url(process, output, deadline, timeout)
    server = ServerProcess(url, process, output)
    try:
        _wait_healthy(server, deadline, ssl_context)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=5)  # the last lines it printed


def _read_announced_url(process: subprocess.Popen, output: list[str], deadline: float, timeout: float) -> tuple[str, threading.Thread]:
    """The URL the server announces, and the thread that goes on reading its output into ``output``
    (so it never blocks on a full pipe); raise with what it printed if it exits or stays silent."""
    found = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert process.stdout is not None  # stdout=PIPE
        for line in process.stdout:
            output.append(line)
            match = ANNOUNCE.search(line)
            if match and not url:
                url.append(match.group(1))
                found.set()
        found.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while not found.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"dtconvert serve did not announce its port within {timeout} s:\n{''.join(output)}")
    if not url:
        process.wait(timeout=10)
        raise RuntimeError(f"dtconvert serve exited with {process.returncode}:\n{''.join(output)}")
    return url[0], reader


def _wait_healthy(server: ServerProcess, deadline: float, ssl_context: ssl.SSLContext | None = None) -> None:
    while True:
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=5, context=ssl_context) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"dtconvert serve never answered /healthz:\n{server.log()}")
        time.sleep(0.05)
