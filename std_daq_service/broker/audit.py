"""The audit trail: every request a service received, who sent it, every status and the outcome, kept in Redis.

Each service's consumer appends one entry per event (the request received with its caller, each status, a kill)
to the Redis stream `audit.requests`, trimmed to about `maxlen` entries. Entries wait in memory while Redis is
away and are written when it is back. `read_history` groups the entries into one record per request and service.
"""

from __future__ import annotations

import collections
import getpass
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

import redis

from std_daq_service.lifecycle import BackgroundThread, Lifecycle
from std_daq_service.protocol import InvalidRequest, Status

log = logging.getLogger(__name__)

AUDIT_STREAM = "audit.requests"
DEFAULT_MAXLEN = 100_000
CALLER_HOST_HEADER = "caller_host"
CALLER_USER_HEADER = "caller_user"
_PENDING_LIMIT = 50_000
_RETRY_S = 1.0
_RAW_BODY_CHARS = 4000
_SCAN_CHUNK = 2000
_LATEST_TIME_S = 1e11


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as the sender gave it (AMQP headers `caller_host`, `caller_user`)."""

    host: str = ""
    user: str = ""

    @classmethod
    def this_process(cls) -> Caller:
        """The host and login of the running process."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no login name for this uid (a container)
            user = ""
        return cls(socket.gethostname(), user)

    @classmethod
    def from_headers(cls, headers: dict[str, Any] | None) -> Caller:
        headers = headers or {}
        return cls(str(headers.get(CALLER_HOST_HEADER) or ""), str(headers.get(CALLER_USER_HEADER) or ""))

    def headers(self) -> dict[str, str]:
        return {CALLER_HOST_HEADER: self.host, CALLER_USER_HEADER: self.user}


class AuditTrail(Lifecycle):
    """Append a service's request events to the audit stream from a background thread (never blocks the caller).

    Args:
        client: the service's Redis client (stays its owner's).
        maxlen: the stream is trimmed to about this many entries (all services share it).
        stream: the Redis stream's key.
    """

    def __init__(self, client: redis.Redis, service_name: str, maxlen: int = DEFAULT_MAXLEN,
                 stream: str = AUDIT_STREAM):
        self.redis = client
        self.service_name = service_name
        self.maxlen = maxlen
        self.stream = stream
        self.written = 0
        self._pending: collections.deque[dict[str, str]] = collections.deque(maxlen=_PENDING_LIMIT)
        self._wake = threading.Event()
        self._loop = BackgroundThread(f"audit-{service_name}", self._run, wake=self._wake.set)

    def _open(self) -> None:
        self._loop.start()

    def _release(self) -> None:
        self._loop.close()
        self._flush()  # what came in while stopping

    def received(self, status: Status, caller: Caller, raw_body: bytes = b"") -> None:
        """Record a request's arrival: its caller, and the request (or its raw body if it was not valid)."""
        request = json.dumps(status.request) if status.request is not None else raw_body[:_RAW_BODY_CHARS].decode(
            "utf-8", "replace")
        self._append(status, caller_host=caller.host, caller_user=caller.user, request=request)

    def status(self, status: Status) -> None:
        """Record a status the service published."""
        self._append(status)

    def kill(self, request_id: str, caller: Caller) -> None:
        """Record a kill the service received."""
        self._queue({"request_id": request_id, "service": self.service_name, "event": "kill",
                     "timestamp": repr(time.time()), "caller_host": caller.host, "caller_user": caller.user})

    def _append(self, status: Status, **extra: str) -> None:
        entry = {"request_id": status.request_id, "service": status.source, "event": status.action,
                 "timestamp": repr(status.timestamp), "message": status.message,
                 "request_type": str((status.request or {}).get("request_type") or ""), **extra}
        if status.result is not None:
            entry["result"] = json.dumps(status.result, default=str)
        self._queue(entry)

    def _queue(self, entry: dict[str, str]) -> None:
        if len(self._pending) == _PENDING_LIMIT:
            log.error("audit trail: %d entries wait for Redis; the oldest is dropped", _PENDING_LIMIT)
        self._pending.append(entry)
        self._wake.set()

    def _run(self, stop: threading.Event) -> None:
        healthy = True
        while not stop.is_set():
            self._wake.wait()
            self._wake.clear()
            try:
                self._flush()
                if not healthy:
                    log.info("audit trail: Redis is back; pending entries written")
                healthy = True
            except redis.RedisError as exc:
                if healthy:
                    log.warning("audit trail: cannot write to Redis (%s); keeping entries and retrying", exc)
                healthy = False
                stop.wait(_RETRY_S)
                self._wake.set()

    def _flush(self) -> None:
        while self._pending:
            batch = list(self._pending)[:500]
            pipe = self.redis.pipeline(transaction=False)
            for entry in batch:
                pipe.xadd(self.stream, entry, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.execute()
            for _ in batch:
                self._pending.popleft()
            self.written += len(batch)


def parse_time(text: str | float | None, name: str) -> float | None:
    """Unix seconds from a number or an ISO 8601 time (UTC unless it names a zone); None stays None.

    Raises:
        InvalidRequest: neither a number nor an ISO time (the message names `name`).
    """
    if text is None or text == "":
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(f"{name}: {text!r} is neither Unix seconds nor an ISO 8601 time") from None
        seconds = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    if not 0 <= seconds < _LATEST_TIME_S:  # also NaN
        raise InvalidRequest(f"{name}: {text!r} is not a time between 1970 and 5138")
    return seconds


def read_history(client: redis.Redis, service: str | None = None, request_type: str | None = None,
                 since: float | None = None, until: float | None = None, limit: int = 100,
                 request_id: str | None = None, stream: str = AUDIT_STREAM) -> list[dict[str, Any]]:
    """Records of the requests received in [since, until], newest first: one per request and service.

    A record: `request_id`, `service`, `request_type`, `caller` (`host`, `user`), `received` (Unix s), `request`,
    `statuses` (`action`, `message`, `timestamp`, `result` if any), `outcome` (the final action, or `running`),
    `result` (the final one), `ended`. Entries are read from the newest back to `since`.
    """
    records: dict[tuple[str, str], dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    start = "+"
    floor = "-" if since is None else str(int(since * 1000))
    while len(done) < limit:
        chunk = client.xrevrange(stream, max=start, min=floor, count=_SCAN_CHUNK)
        if not chunk:
            break
        for _, raw in chunk:
            fields = cast(dict[str, str], raw or {})  # the client decodes responses to str
            if service and fields.get("service") != service or request_id and fields.get("request_id") != request_id:
                continue
            key = (fields.get("request_id", ""), fields.get("service", ""))
            record = records.get(key)
            if record is None:
                record = records[key] = _new_record(*key)
            _add_entry(record, fields)
            if fields.get("event") == "request_received":
                del records[key]
                if _selected(record, request_type, since, until):
                    done.append(record)
                    if len(done) >= limit:
                        break
        start = f"({cast(str, chunk[-1][0])}"
        if len(chunk) < _SCAN_CHUNK:
            break
    return done


def _new_record(request_id: str, service: str) -> dict[str, Any]:
    return {"request_id": request_id, "service": service, "request_type": None, "caller": None, "received": None,
            "request": None, "statuses": [], "outcome": "running", "result": None, "ended": None}


def _add_entry(record: dict[str, Any], fields: dict[str, str]) -> None:
    """Add one entry (read newest first) to its record."""
    event = fields.get("event", "")
    timestamp = float(fields.get("timestamp") or 0)
    result = json.loads(fields["result"]) if "result" in fields else None
    step: dict[str, Any] = {"action": event, "message": fields.get("message", ""), "timestamp": timestamp}
    if result is not None:
        step["result"] = result
    if event == "kill":
        step["caller"] = {"host": fields.get("caller_host", ""), "user": fields.get("caller_user", "")}
    record["statuses"].insert(0, step)
    record["request_type"] = record["request_type"] or fields.get("request_type") or None
    if event in ("request_success", "request_fail", "request_killed") and record["ended"] is None:
        record.update(outcome=event, result=result, ended=timestamp)
    if event == "request_received":
        record.update(received=timestamp,
                      caller={"host": fields.get("caller_host", ""), "user": fields.get("caller_user", "")})
        raw = fields.get("request", "")
        try:
            record["request"] = json.loads(raw)
        except ValueError:  # the raw body of a request that was not valid JSON
            record["request"] = raw


def _selected(record: dict[str, Any], request_type: str | None, since: float | None, until: float | None) -> bool:
    received = record["received"]
    return ((not request_type or record["request_type"] == request_type)
            and (since is None or received >= since) and (until is None or received <= until))
