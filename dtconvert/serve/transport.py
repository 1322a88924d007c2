"""The connection layer: uvicorn hardened against slow, idle, refused and too many clients.

uvicorn's httptools protocol, closing a connection whose request head does not arrive in time and
holding one whose request was refused with Retry-After; past ``--max-connections`` the API's JSON
503 instead of uvicorn's plain text; the listening socket bound here, so a taken port is one line.
"""

from __future__ import annotations

import json
import random
import resource
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dtconvert.cloud import Catalogue
from dtconvert.errors import UserError
from dtconvert.serve.app import create_app
from dtconvert.serve.errors import HOLD_KEY
from dtconvert.serve.options import ServeOptions


def guarded_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing a connection whose request head does not arrive in
    time (uvicorn itself times out only idle keep-alive connections, after a response)."""

    class GuardedProtocol(HttpToolsProtocol):
        _head_timer = None

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._head_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()  # a connection that never sends a request

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            hold = getattr(self, "scope", {}).get(HOLD_KEY)
            super().on_response_complete()
            if hold and not self.transport.is_closing():
                # A client refused with Retry-After that comes straight back (a load generator, a
                # retry loop without back-off) waits the Retry-After anyway: its next request is not
                # read until then. Without this, answering 503s as fast as a flood sends them takes
                # the event loop (and the GIL) from the decoder, and accepted requests starve.
                # Spread over [hold / 2, hold): refused together, a flood's connections would
                # otherwise all come back in the same instant; a client that does wait Retry-After
                # finds its connection read again by then.
                self.flow.pause_reading()
                self.loop.call_later(hold * (0.5 + 0.5 * random.random()), self._end_hold)

        def _end_hold(self) -> None:
            if not self.transport.is_closing():
                self.flow.resume_reading()

    return GuardedProtocol


def install_connection_limit_answer(app, retry_after: int) -> None:
    """Past ``limit_concurrency`` uvicorn answers a plain-text 503 without Retry-After; make it the
    API's JSON error with Retry-After, and count it (uvicorn 0.54 looks the function up by name)."""
    body = json.dumps({"error": f"the server has too many connections open; retry after {retry_after} s", "status": 503}).encode()

    async def too_many_connections(scope, receive, send) -> None:
        app.state.serving.metrics.refused_connection(scope.get("path", ""))
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    httptools_impl.service_unavailable = too_many_connections


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so a taken port is one clear sentence (exit 2)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def make_server(
    service: Catalogue, sock: socket.socket, options: ServeOptions, graceful_seconds: float = 30.0, own_logging: bool = True
) -> uvicorn.Server:
    """A uvicorn server for the app. ``own_logging=False`` leaves logging alone (an embedded
    server): uvicorn's default config binds handlers to the sys.stderr of the moment, which a
    caller such as a test runner may close later."""
    app = create_app(service, options)
    install_connection_limit_answer(app, options.retry_after)
    logging: dict[str, Any] = {} if own_logging else {"log_config": None}
    tls: dict[str, Any] = {"ssl_certfile": str(options.tls_cert), "ssl_keyfile": str(options.tls_key)} if options.tls_cert else {}
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=graceful_seconds,  # type: ignore[arg-type]  # uvicorn says int; asyncio takes float
        loop="auto",
        http=guarded_protocol(options.header_timeout),
        lifespan="on",
        limit_concurrency=options.max_connections,
        timeout_keep_alive=options.keep_alive,  # type: ignore[arg-type]  # uvicorn says int; loop.call_later takes float
        server_header=False,
        **tls,
        **logging,
    )
    return uvicorn.Server(config)


def allow_open_files(connections: int) -> None:
    """Raise the soft open-file limit (often 1024) toward the hard one, so that --max-connections
    is the limit that holds rather than accept() failing with EMFILE first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256  # the exports' files, the runtime's own descriptors
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if ceiling > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
