"""Status messages services publish about every request, std-daq compatible."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from std_daq_service import __version__
from std_daq_service.protocol.errors import InvalidMessage
from std_daq_service.protocol.version import PROTOCOL_VERSION

Action = Literal[
    "request_received",
    "request_start",
    "request_progress",
    "request_success",
    "request_fail",
    "request_killed",
]
FINAL_ACTIONS: frozenset[str] = frozenset({"request_success", "request_fail", "request_killed"})


class Status(BaseModel):
    """One step in the life of a request on one service."""

    request_id: str = Field(description="The request's correlation_id (uuid4).")
    source: str = Field(description="SERVICE_NAME of the reporting service.")
    action: Action
    message: str = Field("", description="What happened, in words a person can act on.")
    timestamp: float = Field(default_factory=time.time, description="Unix seconds when it was sent.")
    request: dict[str, Any] | None = Field(None, description="The request as the service understood it.")
    result: dict[str, Any] | None = Field(None, description="Counts, paths, answers; per request type.")
    protocol_version: str = PROTOCOL_VERSION
    software_version: str = __version__

    @property
    def is_final(self) -> bool:
        return self.action in FINAL_ACTIONS


def status_routing_key(source: str, action: str) -> str:
    return f"{source}.{action}"


def encode_status(status: Status) -> tuple[bytes, dict[str, str]]:
    """JSON body and AMQP headers `{action, source, message}` of a status message."""
    headers = {
        "action": status.action,
        "source": status.source,
        "message": status.message[:1000],
        "protocol_version": PROTOCOL_VERSION,
    }
    return status.model_dump_json().encode(), headers


def decode_status(body: bytes) -> Status:
    """Validate a status message body.

    Raises:
        InvalidRequest: the body is not a status message.
    """
    try:
        return Status.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidMessage(f"not a status message: {exc.errors()[0]['msg']}") from exc

