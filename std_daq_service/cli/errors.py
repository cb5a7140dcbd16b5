"""The one line `std_daq` prints for each failure an operator can meet, and its usage errors."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import pika.exceptions
import pydantic
import redis

from std_daq_service.protocol import DaqError, describe_validation_error

_START_SERVERS = "start it with ./setup_dev_env.sh (or ./run.sh)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors on one line (`std_daq: error: ...`, exit code 2) instead of usage and error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"std_daq: error: {message} (see '{self.prog} --help')\n")


def without_password(url: str) -> str:
    """`url` with its password replaced by `***`, to be printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def error_line(exc: BaseException, redis_url: str, broker_url: str) -> str | None:
    """The message for a failure an operator can meet, or None for an unexpected one (a bug)."""
    if isinstance(exc, DaqError):
        return str(exc)
    if isinstance(exc, pydantic.ValidationError):
        return describe_validation_error(exc)
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return f"Redis at {redis_url} does not answer ({exc}); {_START_SERVERS}, or give --redis-url"
    if isinstance(exc, redis.RedisError):
        return f"Redis at {redis_url}: {exc}"
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError):
        return f"RabbitMQ at {without_password(broker_url)} refused the login; check the user and password"
    if isinstance(exc, pika.exceptions.ConnectionClosed):
        return f"RabbitMQ at {without_password(broker_url)} closed the connection ({exc}); try again"
    if isinstance(exc, pika.exceptions.AMQPConnectionError):
        return (f"RabbitMQ at {without_password(broker_url)} does not answer; {_START_SERVERS}, "
                f"or give --broker-url")
    if isinstance(exc, pika.exceptions.AMQPError):
        return f"RabbitMQ at {without_password(broker_url)}: {exc!r}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, OSError):
        return str(exc)
    return None


def print_error(message: str) -> None:
    """Print `message` as one line: `std_daq: error: ...`."""
    print(f"std_daq: error: {' '.join(message.split())}", file=sys.stderr)
