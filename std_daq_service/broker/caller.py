"""The caller side of RabbitMQ: send requests and kills with confirms, and wait for statuses."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from std_daq_service.broker.audit import Caller
from std_daq_service.broker.call_result import CallResult
from std_daq_service.broker.status_store import StatusStore
from std_daq_service.broker.topology import (
    KILL_EXCHANGE,
    REQUEST_EXCHANGE,
    STATUS_EXCHANGE,
    connection_parameters,
    declare_exchanges,
)
from std_daq_service.lifecycle import Lifecycle
from std_daq_service.protocol import (
    PROTOCOL_VERSION,
    InvalidMessage,
    KillRequest,
    NoServiceAnswered,
    Request,
    Status,
    UnknownTarget,
    decode_status,
    encode_request,
)

log = logging.getLogger(__name__)


class RequestCaller(Lifecycle):
    """Publish requests and collect their statuses on one blocking connection (one thread).

    The status queue is bound when the caller starts, and a request is registered in the status store
    before it is published, so no status of it can be missed. Methods start the caller if needed.

    Args:
        listener: called with every status received (of any request), from the thread that pumps.
        store: where statuses are kept (a `SharedCaller` passes its own); by default one of this caller.
        caller: who the requests come from, for the services' audit trail; by default this host and user.
    """

    def __init__(self, broker_url: str | None = None, name: str = "caller",
                 listener: Callable[[Status], None] | None = None, store: StatusStore | None = None,
                 caller: Caller | None = None):
        self.broker_url = broker_url
        self.name = name
        self.listener = listener
        self.store = store if store is not None else StatusStore()
        self.caller = caller
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def _open(self) -> None:
        params = connection_parameters(self.broker_url, f"std_daq:{self.name}:{uuid.uuid4().hex[:6]}")
        self._connection = pika.BlockingConnection(params)
        channel = self._channel = self._connection.channel()
        channel.confirm_delivery()
        declare_exchanges(channel)
        queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, STATUS_EXCHANGE, routing_key="#")
        channel.basic_consume(queue, self._on_status, auto_ack=True)

    def _open_channel(self) -> BlockingChannel:
        """The channel, connecting first if needed, and again if the connection was lost (a broker restart)."""
        if self._connection is not None and not self._connection.is_open:
            self.close()
        self.start()
        if self._channel is None:
            raise NoServiceAnswered(f"no connection to the broker at {self.broker_url or 'the default URL'}")
        return self._channel

    def _release(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass  # broker gone; nothing left to close

    @property
    def connection(self) -> pika.BlockingConnection | None:
        """The open connection (for `add_callback_threadsafe`), or None."""
        return self._connection

    def _on_status(self, channel, method, properties, body: bytes) -> None:
        try:
            status = decode_status(body)
        except InvalidMessage as exc:
            log.warning("ignored a message on the status exchange: %s", exc)
            return
        if self.listener is not None:
            self.listener(status)
        self.store.add(status)

    def pump(self, timeout: float) -> None:
        """Receive statuses for up to `timeout` seconds."""
        self._open_channel().connection.process_data_events(time_limit=timeout)

    def _caller_headers(self, caller: Caller | None) -> dict[str, str]:
        return (caller or self.caller or Caller.this_process()).headers()

    def publish(self, target: str, request: Request | bytes, request_id: str | None = None,
                caller: Caller | None = None) -> str:
        """Send a request to one service; return its request_id.

        `caller` (default: the caller's own) is sent as the `caller_host` / `caller_user` headers.

        Raises:
            UnknownTarget: no queue is bound for `target` (the service never ran on this broker).
        """
        request_id = request_id or str(uuid.uuid4())
        self.store.register(request_id)
        body = request if isinstance(request, bytes) else encode_request(request)
        request_type = "" if isinstance(request, bytes) else request.request_type
        try:
            self._publish(
                exchange=REQUEST_EXCHANGE,
                routing_key=target,
                body=body,
                properties=pika.BasicProperties(
                    correlation_id=request_id,
                    headers={"request_type": request_type, "protocol_version": PROTOCOL_VERSION,
                             **self._caller_headers(caller)},
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

    def _publish(self, **message) -> None:
        """Publish with the broker's confirm; a connection found lost (the broker restarted since the last use) is
        opened again and the message sent once more (a service runs a request id once, so a resend is harmless)."""
        try:
            self._open_channel().basic_publish(**message)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.ChannelWrongStateError) as exc:
            log.info("broker connection lost (%r); reconnecting to send again", exc)
            self.close()
            self._open_channel().basic_publish(**message)

    def kill(self, target: str, request_id: str, caller: Caller | None = None) -> None:
        """Ask `target` to stop request `request_id`."""
        try:
            self._publish(
                exchange=KILL_EXCHANGE,
                routing_key=target,
                body=encode_request(KillRequest(request_id=request_id)),
                properties=pika.BasicProperties(
                    correlation_id=request_id,
                    headers={"protocol_version": PROTOCOL_VERSION, **self._caller_headers(caller)},
                    delivery_mode=pika.DeliveryMode.Persistent,
                    content_type="application/json",
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
        """Wait until every target sent a final status (or `until_action`, if given) or `timeout` passes."""
        self.start()
        return self.store.wait(request_id, targets, timeout, on_status, until_action, pump=self.pump)

    def call(
        self,
        targets: str | Iterable[str],
        request: Request,
        timeout: float,
        on_status: Callable[[Status], None] | None = None,
    ) -> CallResult:
        """Send one request to each target (same request_id) and wait for every final status."""
        targets = [targets] if isinstance(targets, str) else list(targets)
        request_id = str(uuid.uuid4())
        for target in targets:
            self.publish(target, request, request_id)
        return self.wait(request_id, targets, timeout, on_status)
