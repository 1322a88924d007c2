"""How a refused request becomes an HTTP answer: the one mapping from errors to statuses.

The domain raises its own errors, which know nothing of HTTP: the wire format
(:class:`~dtconvert.wire.WireFormatError`), the shared cloud (:class:`~dtconvert.cloud.WireMismatch`,
:class:`~dtconvert.cloud.UnknownModel`), the batcher (:class:`~dtconvert.batching.QueueFull`,
:class:`~dtconvert.batching.ShuttingDown`) and the gateway's Triton
(:class:`~dtconvert.serve.gateway.CloudRefused`). :func:`as_problem` gives each its status, reason and
headers. The edge's own refusals (content type, length, timeout, token, ``top_k``) are HTTP to
begin with and carry their status (:class:`EdgeError`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse

from dtconvert.batching import QueueFull, ShuttingDown
from dtconvert.cloud import WireMismatch
from dtconvert.serve.gateway import CloudRefused
from dtconvert.wire import WireFormatError

# An answer given before the body was read whole: the connection cannot carry another request.
UNREAD_BODY = {"Connection": "close"}
# The ASGI scope key by which a handler asks the connection to read nothing more for N seconds.
HOLD_KEY = "dtconvert.hold_seconds"


class EdgeError(Exception):
    """A request the HTTP edge itself refuses: answered with this status, counted by ``reason``."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers


@dataclass(frozen=True)
class Problem:
    """A refusal as HTTP answers it; ``hold_seconds``: read nothing more from the client for that long."""

    status: int
    message: str
    reason: str
    headers: dict[str, str] | None = None
    hold_seconds: int = 0


# Every error a route may raise for a client's request (anything else is the server's fault: a 500).
REFUSALS = (EdgeError, WireFormatError, WireMismatch, QueueFull, ShuttingDown, CloudRefused)


def as_problem(error: Exception, retry_after: int) -> Problem:
    """The status, reason and headers for one of REFUSALS; ``retry_after``: the seconds a 503 asks for."""
    retry = {"Retry-After": str(retry_after)}
    match error:
        case EdgeError():
            return Problem(error.status, error.message, error.reason, error.headers)
        case WireFormatError():
            return Problem(400, f"invalid wire message: {error}", "wire_format")
        case WireMismatch():  # UnknownModel too: a model id is a field of the message
            return Problem(422, str(error), error.field)
        case QueueFull():
            # Answered at once rather than late; and the client's next request is read only after Retry-After.
            return Problem(503, f"{error}; retry after {retry_after} s", "overloaded", retry, hold_seconds=retry_after)
        case ShuttingDown():
            return Problem(503, str(error), "shutting_down", retry)
        case CloudRefused():  # the gateway's Triton: not the client's mistake, so never a 4xx
            return Problem(503 if error.unavailable else 502, str(error), error.reason, retry if error.unavailable else None)
    raise TypeError(f"{type(error).__name__} is not a refusal the server maps to a status")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error's body: ``{"error": <one sentence>, "status": <code>}``."""
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)
