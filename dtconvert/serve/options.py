"""How ``dtconvert serve`` is configured: its flags, their defaults, the token file and the TLS pair."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dtconvert.errors import UserError

if TYPE_CHECKING:
    from dtconvert.cloud import Catalogue

DEFAULT_TOP_K = 3
MAX_TOP_K = 1000
MIN_TOKEN_CHARS = 16
# Eight batches' worth of images may wait: enough that clients sending several images per message
# at once are not refused (16 clients × 8 images fill four batches), little enough that an
# accepted request waits only a few decoder calls. Beyond it more waiting would add latency,
# never throughput (benchmarks/overload.py measures both sides).
QUEUE_BATCHES = 8


@dataclass
class ServeOptions:
    """How the server batches, admits and guards; the CLI's flags."""

    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_body_bytes: int | None = None  # default: header + max(4, max_batch) images
    max_queue: int | None = None  # images waiting for the decoder; default QUEUE_BATCHES × max_batch
    max_connections: int = 2048
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keep_alive: float = 5.0
    retry_after: int = 1  # seconds a 503 asks the client to wait
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    triton: str | None = None  # gRPC address of a Triton serving 'dtconvert cloud''s repository: forward there, decode nothing here
    triton_timeout: float = 10.0  # seconds Triton has to answer one forwarded request

    def queue_limit(self) -> int:
        return self.max_queue if self.max_queue is not None else QUEUE_BATCHES * self.max_batch

    def body_limit(self, service: Catalogue) -> int:
        return self.max_body_bytes or default_max_body(service, self.max_batch)


def default_threads() -> int:
    """One decoder thread per core but one: the event loop that parses requests needs a core too
    (with as many torch threads as busy cores, torch's parallel regions wait on a descheduled thread)."""
    return max(1, (os.cpu_count() or 1) - 1)


def default_max_body(service: Catalogue, max_batch: int) -> int:
    """Room for a batch of ``max_batch`` images plus the header, at least 4 images' worth."""
    return service.header_bytes + service.max_bytes_per_image * max(4, max_batch)


def read_token(path: Path) -> str:
    """The bearer token from ``--token-file`` (one line; whitespace around it is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--token-file {path}: no such file")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--token-file {path}: cannot read it ({e})") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
        raise UserError(
            f"--token-file {path}: the token must be one line of at least {MIN_TOKEN_CHARS} printable characters "
            "without spaces (e.g. 'openssl rand -hex 32 > token')"
        )
    return token


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """Check ``--tls-cert``/``--tls-key`` load together before the server starts (one line, exit 2 if not)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UserError("--tls-cert and --tls-key go together: pass both (PEM files) or neither")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError, ValueError) as e:
        raise UserError(f"--tls-cert {cert} / --tls-key {key}: not a matching PEM certificate and key ({e})") from None
    return context
