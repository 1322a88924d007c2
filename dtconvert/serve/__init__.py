"""``dtconvert serve``: the cloud half over HTTP (FastAPI on uvicorn).

The server loads one or more exports into a :class:`~dtconvert.cloud.SharedCloud` (one trunk,
every device variant tuned from it) and answers ``POST /v1/decode`` with each task's top-k labels
for a wire-format message (docs/wire-format.md); the message's model id picks the variant. The
decode worker (:mod:`dtconvert.batching`) batches concurrent requests of any variants.

The edge faces the internet, so it holds under overload and hostile clients:

* every byte of a request is validated; a client's mistake gets a 4xx with
  ``{"error": ..., "status": ...}``, never a 500 (:mod:`.errors` maps each error to its status);
* admission control: when the images waiting for the decoder would exceed ``max_queue``, a
  request is answered at once with 503 and ``Retry-After``, so latency stays bounded;
* connections (:mod:`.transport`): at most ``max_connections`` (503 with ``Retry-After`` beyond),
  a connection that sends no complete request head within ``header_timeout`` is closed, an idle
  keep-alive one after ``keep_alive``, and a body not received within ``body_timeout`` gets 408;
* optional TLS (uvicorn's own) and a bearer token on ``/v1/*`` (``/healthz`` and ``/metrics``
  stay open), compared in constant time;
* ``/openapi.json`` (:mod:`.openapi`) describes every endpoint, body, media type and status
  truthfully (checked by schemathesis in the tests). See docs/serving.md.

Modules: :mod:`.options` (flags, token, TLS), :mod:`.app` (routes), :mod:`.errors`,
:mod:`.openapi`, :mod:`.prometheus` (metrics), :mod:`.transport` (uvicorn, sockets), :mod:`.run`
(foreground and in-thread servers), :mod:`.process` (a child-process server for tests and benchmarks).
"""

from __future__ import annotations

from dtconvert.serve.app import create_app
from dtconvert.serve.options import ServeOptions, default_max_body, default_threads, read_token, tls_context
from dtconvert.serve.process import ServerProcess, running_server
from dtconvert.serve.run import BackgroundServer, serve
from dtconvert.serve.transport import bind, make_server

__all__ = [
    "BackgroundServer",
    "ServeOptions",
    "ServerProcess",
    "bind",
    "create_app",
    "default_max_body",
    "default_threads",
    "make_server",
    "read_token",
    "running_server",
    "serve",
    "tls_context",
]
