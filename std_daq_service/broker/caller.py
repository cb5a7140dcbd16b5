"""The caller side of RabbitMQ: send requests and kills with confirms, and wait for statuses."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pika
import pika.exceptions

from std_daq_service.broker.topology import (
    KILL_EXCHANGE,
    REQUEST_EXCHANGE,
    STATUS_EXCHANGE,
    connection_parameters,
    declare_exchanges,
)
from std_daq_service.protocol import (
    PROTOCOL_VERSION,
    InvalidMessage,
    NoServiceAnswered,
    RequestBase,
    Status,
    UnknownTarget,
    decode_status,
)

log = logging.getLogger(__name__)


@dataclass
class CallResult:
    """What the named services answered to one request."""

    request_id: str
    targets: list[str]
    finals: dict[str, Status] = field(default_factory=dict)
    history: list[Status] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(t in self.finals for t in self.targets)

    @property
    def ok(self) -> bool:
        return self.complete and all(s.action == "request_success" for s in self.finals.values())

    def missing(self) -> list[str]:
        return [t for t in self.targets if t not in self.finals]

    def received_by(self) -> set[str]:
        return {s.source for s in self.history}


class RequestCaller:
    """Publish requests and collect their statuses on one blocking connection (one thread).

    The status queue is bound when the caller opens, and a request's status history is registered
    before the request is published, so no status of it can be missed.

    Args:
        watch_all: also keep statuses of requests this caller did not send (for monitors).
        listener: called with every status received (of any request), from the thread that pumps.
    """

    def __init__(self, broker_url: str | None = None, name: str = "caller", watch_all: bool = False,
                 listener: Callable[[Status], None] | None = None):
        self.broker_url = broker_url
        self.name = name
        self.watch_all = watch_all
        self.listener = listener
        self._connection: pika.BlockingConnection | None = None
        self._channel = None
        self._queue: str | None = None
        self._history: dict[str, list[Status]] = {}
        self._others: list[Status] = []

    def open(self) -> RequestCaller:
        if self._connection is None:
            params = connection_parameters(self.broker_url, f"std_daq:{self.name}:{uuid.uuid4().hex[:6]}")
            self._connection = pika.BlockingConnection(params)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
            declare_exchanges(self._channel)
            self._queue = self._channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
            self._channel.queue_bind(self._queue, STATUS_EXCHANGE, routing_key="#")
            self._channel.basic_consume(self._queue, self._on_status, auto_ack=True)
        return self

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass  # broker gone; nothing left to close

    def __enter__(self) -> RequestCaller:
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _on_status(self, channel, method, properties, body: bytes) -> None:
        try:
            status = decode_status(body)
        except InvalidMessage as exc:
            log.warning("ignored a message on the status exchange: %s", exc)
            return
        if self.listener is not None:
            self.listener(status)
        history = self._history.get(status.request_id)
        if history is not None:
            history.append(status)
        elif self.watch_all:
            self._others.append(status)

    def pump(self, timeout: float) -> None:
        """Receive statuses for up to `timeout` seconds."""
        self.open()._connection.process_data_events(time_limit=timeout)

    def other_statuses(self, timeout: float) -> list[Status]:
        """With `watch_all`: statuses of requests this caller did not send, waiting up to `timeout`."""
        if not self._others:
            self.pump(timeout)
        out, self._others = self._others, []
        return out

    def history(self, request_id: str) -> list[Status]:
        """Statuses received so far for a request this caller sent."""
        return list(self._history.get(request_id, ()))

    def forget(self, request_id: str) -> None:
        self._history.pop(request_id, None)

    def publish(self, target: str, request: RequestBase | bytes, request_id: str | None = None) -> str:
        """Send a request to one service; return its request_id.

        Raises:
            UnknownTarget: no queue is bound for `target` (the service never ran on this broker).
        """
        self.open()
        request_id = request_id or str(uuid.uuid4())
        self._history.setdefault(request_id, [])
        body = request if isinstance(request, bytes) else request.model_dump_json().encode()
        request_type = "" if isinstance(request, bytes) else request.request_type
        try:
            self._channel.basic_publish(
                exchange=REQUEST_EXCHANGE,
                routing_key=target,
                body=body,
                properties=pika.BasicProperties(
                    correlation_id=request_id,
                    headers={"request_type": request_type, "protocol_version": PROTOCOL_VERSION},
                    delivery_mode=pika.DeliveryMode.Persistent,
                    content_type="application/json",
                ),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            raise UnknownTarget(
                f"no service named {target!r} consumes requests on this broker; "
                "check the name with 'std_daq list-hosts'"
            ) from None
        except pika.exceptions.NackError:
            raise NoServiceAnswered(f"the broker refused the request for {target!r}") from None
        return request_id

    def kill(self, target: str, request_id: str) -> None:
        """Ask `target` to stop request `request_id`."""
        self.open()
        try:
            self._channel.basic_publish(
                exchange=KILL_EXCHANGE,
                routing_key=target,
                body=f'{{"request_id": "{request_id}"}}'.encode(),
                properties=pika.BasicProperties(
                    correlation_id=request_id,
                    headers={"protocol_version": PROTOCOL_VERSION},
                    delivery_mode=pika.DeliveryMode.Persistent,
                ),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            raise UnknownTarget(f"no service named {target!r} takes kills on this broker") from None

    def wait(
        self,
        request_id: str,
        targets: Iterable[str],
        timeout: float,
        on_status: Callable[[Status], None] | None = None,
        until_action: str | None = None,
    ) -> CallResult:
        """Wait until every target sent a final status (or `until_action`, if given) or `timeout` passes.

        Returns:
            The request's whole history so far and the final status of each target that sent one.
        """
        result = CallResult(request_id, list(targets))
        history = self._history.setdefault(request_id, [])
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for status in history[seen:]:
                if status.is_final and status.source in result.targets:
                    result.finals[status.source] = status
                if on_status is not None:
                    on_status(status)
            seen = len(history)
            reached = any(s.action == until_action for s in history) if until_action else result.complete
            remaining = deadline - time.monotonic()
            if reached or remaining <= 0:
                break
            self.pump(min(remaining, 0.2))
        result.history = list(history)
        return result

    def call(
        self,
        targets: str | Iterable[str],
        request: RequestBase,
        timeout: float,
        on_status: Callable[[Status], None] | None = None,
    ) -> CallResult:
        """Send one request to each target (same request_id) and wait for every final status."""
        targets = [targets] if isinstance(targets, str) else list(targets)
        request_id = str(uuid.uuid4())
        for target in targets:
            self.publish(target, request, request_id)
        return self.wait(request_id, targets, timeout, on_status)
