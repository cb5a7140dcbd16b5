"""Error types shared by every service, each with the HTTP code the REST proxy answers with.

One registry (`ERRORS`, filled by every `DaqError` subclass as it is defined) serves both sides of the wire: a
service puts `error_result(exc)` into its `request_fail` status, and a caller rebuilds the same class with
`rebuild_error`.
"""

from __future__ import annotations

from typing import Any

ERRORS: dict[str, type[DaqError]] = {}
"""Every error class by name: what a `request_fail` status's `result["error"]` names."""


class DaqError(Exception):
    """Base of every error this project raises on purpose; the message says what to do."""

    http_status = 500

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ERRORS[cls.__name__] = cls


ERRORS[DaqError.__name__] = DaqError


class InvalidRequest(DaqError, ValueError):
    """A request or configuration that does not validate; names the bad field."""

    http_status = 400


class UnknownTarget(DaqError, LookupError):
    """A service, request or file that does not exist."""

    http_status = 404


class Busy(DaqError, RuntimeError):
    """The request conflicts with work in progress (an init while streaming, a file being written)."""

    http_status = 409


class RequestKilled(DaqError, RuntimeError):
    """The request was stopped by a kill before it finished."""

    http_status = 409


class NoServiceAnswered(DaqError, RuntimeError):
    """No service acknowledged the request."""

    http_status = 502


class RequestTimeout(DaqError, TimeoutError):
    """A waited-for status did not arrive in time; the request may still be running."""

    http_status = 504


class InvalidMessage(DaqError, ValueError):
    """A ZMQ or AMQP message that does not follow the wire format."""

    http_status = 400


class StorageError(DaqError, OSError):
    """An output file could not be created or written (disk full, permission denied, read-only)."""

    http_status = 507


def error_result(exc: BaseException) -> dict[str, Any]:
    """The `result` of a `request_fail` status for `exc`: its class name and HTTP code (500 if unexpected)."""
    return {"error": type(exc).__name__, "http_status": exc.http_status if isinstance(exc, DaqError) else 500}


def rebuild_error(result: dict[str, Any] | None, message: str) -> DaqError:
    """The error a `request_fail` status reports, as the class the service raised.

    An error outside the registry (an unexpected one) becomes a `DaqError` carrying the reported HTTP code.
    """
    result = result or {}
    cls = ERRORS.get(result.get("error", ""))
    if cls is not None:
        return cls(message)
    error = DaqError(message)
    code = result.get("http_status")
    error.http_status = code if isinstance(code, int) else DaqError.http_status
    return error
