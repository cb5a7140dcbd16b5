"""Exchanges, queues and connection settings shared by services and callers."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

import pika

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
REQUEST_EXCHANGE = "request"
KILL_EXCHANGE = "kill"
STATUS_EXCHANGE = "status"


def broker_url(explicit: str | None = None) -> str:
    """The RabbitMQ URL: the explicit one, else `BROKER_URL`, else the local default."""
    return explicit or os.environ.get("BROKER_URL") or DEFAULT_BROKER_URL


def connection_parameters(url: str | None, connection_name: str) -> pika.URLParameters:
    """Parameters for one connection attempt, named so operators see who is connected.

    Heartbeats every 30 s unless the URL sets `?heartbeat=S`.
    """
    url = broker_url(url)
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 30
    if "heartbeat" not in parse_qs(urlsplit(url).query):
        params.heartbeat = 30
    params.client_properties = {"connection_name": connection_name}
    return params


def declare_exchanges(channel) -> None:
    """Declare the three durable topic exchanges (idempotent)."""
    for exchange in (REQUEST_EXCHANGE, KILL_EXCHANGE, STATUS_EXCHANGE):
        channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)


def request_queue(service_name: str) -> str:
    return f"{service_name}.request"


def kill_queue(service_name: str) -> str:
    return f"{service_name}.kill"


def declare_service_queues(channel, service_name: str) -> None:
    """Durable queues of a service, bound by its SERVICE_NAME; they keep requests while it restarts."""
    declare_exchanges(channel)
    for queue, exchange in ((request_queue(service_name), REQUEST_EXCHANGE), (kill_queue(service_name), KILL_EXCHANGE)):
        channel.queue_declare(queue=queue, durable=True)
        channel.queue_bind(queue=queue, exchange=exchange, routing_key=service_name)
