"""The service side of RabbitMQ: consume requests and kills, publish statuses, survive broker restarts."""

from __future__ import annotations

import collections
import logging
import threading

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from std_daq_service.broker.audit import AuditTrail, Caller
from std_daq_service.broker.dispatcher import Dispatcher, Handler
from std_daq_service.broker.topology import (
    STATUS_EXCHANGE,
    connection_parameters,
    declare_service_queues,
    kill_queue,
    request_queue,
)
from std_daq_service.lifecycle import BackgroundThread, Lifecycle
from std_daq_service.protocol import (
    PROTOCOL_VERSION,
    InvalidRequest,
    Request,
    Status,
    decode_kill,
    decode_request,
    encode_status,
    status_routing_key,
)

log = logging.getLogger(__name__)

_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 3.0)
_OUTBOX_LIMIT = 100_000
_CANCEL_WAIT_S = 2.0
MAX_REQUEST_BYTES = 1 << 20
"""A request body longer than this (no valid request comes close) is refused unread: request_fail, 400."""


class RequestConsumer(Lifecycle):
    """Consume a service's request and kill queues on one connection owned by one I/O thread.

    The consumer builds the `Dispatcher` that runs `handlers` and publishes through this consumer's outbox.
    A request is acknowledged once its `request_received` status is confirmed by the broker, so a
    request is never lost (not acknowledged before that) and never run twice (redeliveries of an
    accepted request id are dropped). Statuses from handler threads go through an outbox that the
    I/O thread drains; while the broker is away they wait there and are sent after reconnecting.
    With an `audit` trail, every request received (with its caller), status and kill is recorded there.
    """

    def __init__(self, broker_url: str | None, service_name: str, handlers: dict[str, Handler],
                 audit: AuditTrail | None = None):
        self.broker_url = broker_url
        self.service_name = service_name
        self.audit = audit
        self.dispatcher = Dispatcher(service_name, handlers, self.publish)
        self.connected = threading.Event()
        self.reconnects = 0
        self._outbox: collections.deque[Status] = collections.deque()
        self._accepting = threading.Event()
        self._consumer_tags: list[str] = []
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._io = BackgroundThread(f"broker-{service_name}", self._run, wake=self._wake)

    def publish(self, status: Status) -> None:
        """Queue a status for publication (thread-safe)."""
        if self.audit is not None:
            self.audit.status(status)
        if len(self._outbox) >= _OUTBOX_LIMIT:
            dropped = self._outbox.popleft()
            log.error("status outbox full while the broker is away; dropped %s %s", dropped.action, dropped.request_id)
        self._outbox.append(status)
        self._call_soon(self._drain)

    def _call_soon(self, callback) -> None:
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(callback)
            except (pika.exceptions.AMQPError, RuntimeError):
                pass  # connection closing: the outbox is drained after reconnecting

    def _wake(self) -> None:
        self._call_soon(lambda: None)

    def _open(self) -> None:
        self._accepting.set()
        self._io.start()

    def _release(self) -> None:
        """Stop taking requests, end the running ones, send their final statuses, then disconnect.

        Requests not taken yet stay in the durable queue for the next start; the running ones are
        cancelled and report `request_killed` (or their own end) before the connection closes.
        """
        self._accepting.clear()
        cancelled = threading.Event()

        def stop_consuming() -> None:  # in the I/O thread, which owns the channel
            try:
                self._cancel_consumers()
            finally:
                cancelled.set()

        self._call_soon(stop_consuming)
        if self.connected.is_set():
            cancelled.wait(_CANCEL_WAIT_S)
        self.dispatcher.close()
        self._io.close()

    def _cancel_consumers(self) -> None:
        """Messages delivered but not yet handled go back to the queue (pika nacks them)."""
        tags, self._consumer_tags = self._consumer_tags, []
        for tag in tags:
            if self._channel is None:
                return  # connection gone: the broker requeues what was not acknowledged
            try:
                self._channel.basic_cancel(tag)
            except pika.exceptions.AMQPError:
                return

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def _run(self, stop: threading.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                self._serve(stop)
                attempt = 0
            except pika.exceptions.AMQPError as exc:
                self.connected.clear()
                delay = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                level = logging.WARNING if attempt == 0 else logging.DEBUG
                log.log(level, "%s: broker connection lost or refused (%s); reconnecting in %.1f s",
                        self.service_name, type(exc).__name__, delay)
                attempt += 1
                self.reconnects += 1
                stop.wait(delay)
            finally:
                self._close_connection()

    def _serve(self, stop: threading.Event) -> None:
        params = connection_parameters(self.broker_url, f"std_daq:{self.service_name}")
        self._connection = pika.BlockingConnection(params)
        channel = self._channel = self._connection.channel()
        channel.confirm_delivery()
        declare_service_queues(channel, self.service_name)
        channel.basic_qos(prefetch_count=50)
        if self._accepting.is_set():
            self._consumer_tags = [channel.basic_consume(request_queue(self.service_name), self._on_request),
                                   channel.basic_consume(kill_queue(self.service_name), self._on_kill)]
        log.info("%s: consuming %s and %s", self.service_name, request_queue(self.service_name),
                 kill_queue(self.service_name))
        self.connected.set()
        self._drain()
        while not stop.is_set():
            self._connection.process_data_events(time_limit=0.25)
            self._drain()
        self._drain()

    def _close_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self.connected.clear()
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass  # already broken; nothing to close cleanly

    def _send(self, channel: BlockingChannel, status: Status) -> None:
        body, headers = encode_status(status)
        channel.basic_publish(
            exchange=STATUS_EXCHANGE,
            routing_key=status_routing_key(status.source, status.action),
            body=body,
            properties=pika.BasicProperties(
                correlation_id=status.request_id,
                headers=headers,
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type="application/json",
            ),
        )

    def _drain(self) -> None:
        while self._outbox and self._channel is not None:
            self._send(self._channel, self._outbox[0])
            self._outbox.popleft()

    def _on_request(self, channel, method, properties, body: bytes) -> None:
        if not self._accepting.is_set():  # delivered while closing: left for the next start
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        request_id = properties.correlation_id
        if not request_id:
            log.warning("%s: request without correlation_id dropped: %r", self.service_name, body[:200])
            channel.basic_ack(method.delivery_tag)
            return
        if self.dispatcher.already_accepted(request_id):
            log.info("%s: request %s delivered again; already accepted, not run twice", self.service_name, request_id)
            channel.basic_ack(method.delivery_tag)
            return
        version = (properties.headers or {}).get("protocol_version")
        if version not in (None, PROTOCOL_VERSION):
            log.warning("request %s uses protocol version %s, this service speaks %s", request_id, version,
                        PROTOCOL_VERSION)
        try:
            if len(body) > MAX_REQUEST_BYTES:
                raise InvalidRequest(f"request body of {len(body)} bytes; the limit is {MAX_REQUEST_BYTES}")
            request: Request | InvalidRequest = decode_request(body)
        except InvalidRequest as exc:
            request = exc
        self._drain()
        received = self.dispatcher.received(request_id, request)
        if self.audit is not None:
            self.audit.received(received, Caller.from_headers(properties.headers), body)
        self._send(channel, received)
        channel.basic_ack(method.delivery_tag)
        self.dispatcher.submit(request_id, request)

    def _on_kill(self, channel, method, properties, body: bytes) -> None:
        """The correlation_id names the request to stop (std-daq's rule); a body, if valid, must agree."""
        channel.basic_ack(method.delivery_tag)
        target = properties.correlation_id
        try:
            named = decode_kill(body).request_id
        except InvalidRequest as exc:
            named = None
            if not target:
                log.warning("%s: kill ignored: no correlation_id and %s: %r", self.service_name, exc, body[:200])
                return
        if target and named and named != target:
            log.warning("%s: kill ignored: its body names %s, its correlation_id %s", self.service_name, named,
                        target)
            return
        if self.audit is not None:
            self.audit.kill(str(target or named), Caller.from_headers(properties.headers))
        self.dispatcher.kill(str(target or named))
