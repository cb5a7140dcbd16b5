"""Reachability checks of Redis and RabbitMQ, for setup scripts: `python -m std_daq_service.dev_servers`."""

from __future__ import annotations

import sys

import pika
import pika.exceptions
import redis

from std_daq_service.broker import connection_parameters
from std_daq_service.config import connect_redis


def redis_answers(url: str) -> bool:
    try:
        with connect_redis(url) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def broker_answers(url: str) -> bool:
    try:
        pika.BlockingConnection(connection_parameters(url, "std_daq:check")).close()
        return True
    except pika.exceptions.AMQPError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    checks = {"check-redis": redis_answers, "check-broker": broker_answers}
    if len(argv) != 2 or argv[0] not in checks:
        print("usage: python -m std_daq_service.dev_servers check-redis|check-broker URL", file=sys.stderr)
        return 2
    return 0 if checks[argv[0]](argv[1]) else 1


if __name__ == "__main__":
    sys.exit(main())
