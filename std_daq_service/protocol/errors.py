"""Error types shared by every service, each with the HTTP code the REST proxy answers with."""

from __future__ import annotations


class DaqError(Exception):
    """Base of every error this project raises on purpose; the message says what to do."""

    http_status = 500


class InvalidRequest(DaqError, ValueError):
    """A request or configuration that does not validate; names the bad field."""

    http_status = 400


class UnknownTarget(DaqError, LookupError):
    """A service, request or file that does not exist."""

    http_status = 404


class Busy(DaqError, RuntimeError):
    """The request conflicts with work in progress (an init while streaming, a file being written)."""

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
