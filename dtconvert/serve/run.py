"""Running the server: in the foreground for ``dtconvert serve``, or in a thread of this process."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import torch

from dtconvert.cloud import Catalogue, SharedCloud
from dtconvert.serve.gateway import check_triton
from dtconvert.serve.options import ServeOptions, default_threads, tls_context
from dtconvert.serve.transport import allow_open_files, bind, make_server


def serve(
    export_dirs: list[Path], host: str, port: int, options: ServeOptions, threads: int | None, announce: Callable[[str], object] = print
) -> None:
    """Load the exports, listen on ``host:port`` (0: any free port), announce it, and serve until
    SIGTERM or Ctrl-C; then answer the requests in flight and return."""
    tls_context(options.tls_cert, options.tls_key)  # bad TLS files: one line before anything loads
    torch.set_num_threads(threads or default_threads())
    service = load_service(export_dirs, options)
    allow_open_files(options.max_connections)
    sock = bind(host, port)
    server = make_server(service, sock, options)
    announce(_announcement(service, host, sock.getsockname()[1], options))
    # uvicorn answers SIGTERM and Ctrl-C with a graceful shutdown (no new connections, requests in
    # flight answered), then re-raises the signal; after that shutdown, exit 0 rather than die of it.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    announce("stopped: requests in flight were answered")


def load_service(export_dirs: list[Path], options: ServeOptions) -> Catalogue:
    """The shared cloud with its decoders; or, as a gateway, the variants alone, once Triton is
    proven to serve each of them."""
    if options.triton is None:
        return SharedCloud(export_dirs)
    catalogue = Catalogue(export_dirs)
    check_triton(catalogue, options.triton)
    return catalogue


def _announcement(service: Catalogue, host: str, port: int, options: ServeOptions) -> str:
    """The start-up line: what is served, where, and with which limits (tests read the URL from it)."""
    url_host = f"[{host}]" if ":" in host else host
    scheme = "https" if options.tls_cert else "http"
    served = "; ".join(f"{v.manifest['model']['name']} ({v.model_id}, tasks {', '.join(v.tasks)})" for v in service.variants.values())
    shared = f", one shared trunk for {len(service.variants)} variants" if len(service.variants) > 1 else ""
    return (
        f"serving {served}{shared} "
        f"on {scheme}://{url_host}:{port}  max-batch {options.max_batch}, max-wait {options.max_wait_ms:g} ms, "
        f"queue {options.queue_limit()} images, {options.max_connections} connections, body limit {options.body_limit(service)} B, "
        f"{'bearer token required on /v1/*, ' if options.token else ''}"
        f"{f'forwarding to Triton at {options.triton}' if options.triton else f'{torch.get_num_threads()} decoder threads'}; "
        "Ctrl-C stops after answering requests in flight"
    )


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


class BackgroundServer:
    """The real server on a loopback port in a thread of this process (``dtconvert demo``)."""

    def __init__(self, export_dirs: list[Path], host: str = "127.0.0.1", options: ServeOptions | None = None) -> None:
        torch.set_num_threads(default_threads())
        self.service = load_service(export_dirs, options or ServeOptions())
        self.sock = bind(host, 0)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = make_server(self.service, self.sock, options or ServeOptions(), own_logging=False)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the decoder server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
