"""What every service does at start: arguments, logging, config from Redis, beacon, broker, metrics, SIGTERM.

A `start.py` enters `ServiceRuntime.boot` (options, logging, Redis, configuration), enters its own objects
into the stack it yields and calls `serve`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import redis
from prometheus_client import CollectorRegistry
from pythonjsonlogger.json import JsonFormatter

from std_daq_service import __version__
from std_daq_service.broker import AuditTrail, Handler, RequestConsumer, broker_url
from std_daq_service.broker.audit import DEFAULT_MAXLEN
from std_daq_service.config import ConfigStore, LivenessBeacon, ServiceConfig, connect_redis, redis_url
from std_daq_service.lifecycle import Lifecycle
from std_daq_service.metrics import Families, MetricsServer, RuntimeState, StateCollector
from std_daq_service.protocol import DaqError

log = logging.getLogger(__name__)

EXIT_BAD_CONFIG = 2
LOG_FORMATS = ("text", "json")
_BROKER_WAIT_S = 10.0

_Config = TypeVar("_Config", bound=ServiceConfig)
_Owner = TypeVar("_Owner", bound=Lifecycle)


@dataclass(frozen=True)
class ServiceOptions:
    """The command-line options every service has."""

    kind: str
    service_name: str
    redis_url: str
    broker_url: str
    log_level: str
    log_format: str = "text"
    audit_maxlen: int = DEFAULT_MAXLEN

    @property
    def prog(self) -> str:
        return f"std_daq_{self.kind}"


def parse_options(kind: str, description: str, argv: list[str] | None = None) -> ServiceOptions:
    """Parse the common options of a service of `kind`.

    Exits with code 2 and a message on stderr when SERVICE_NAME is missing or not `<site>.<node>.<kind>`.
    """
    parser = argparse.ArgumentParser(
        prog=f"std_daq_{kind}",
        description=f"{description.strip()} Configuration: Redis key config.<SERVICE_NAME>.",
    )
    parser.add_argument("--service_name", "--service-name", default=os.environ.get("SERVICE_NAME"),
                        help=f"<site>.<node>.{kind} (default: $SERVICE_NAME)")
    parser.add_argument("--redis-url", default=None, help="default: $REDIS_URL or redis://127.0.0.1:6379/0")
    parser.add_argument("--broker-url", default=None,
                        help="default: $BROKER_URL or amqp://guest:guest@127.0.0.1:5672/%%2F")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"), help="default: INFO")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=os.environ.get("LOG_FORMAT", "text"),
                        help="text (default: $LOG_FORMAT or text) or json: one JSON object per line with service, "
                             "request_id, level, host, time, logger, message")
    parser.add_argument("--audit-maxlen", type=int, default=int(os.environ.get("AUDIT_MAXLEN", DEFAULT_MAXLEN)),
                        help=f"entries kept in the Redis stream audit.requests (default: $AUDIT_MAXLEN or "
                             f"{DEFAULT_MAXLEN})")
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    if args.log_format not in LOG_FORMATS:
        parser.exit(EXIT_BAD_CONFIG, f"{parser.prog}: error: LOG_FORMAT {args.log_format!r} is not text or json\n")
    if not args.service_name:
        parser.exit(EXIT_BAD_CONFIG, f"{parser.prog}: error: set SERVICE_NAME or --service_name\n")
    if not args.service_name.endswith(f".{kind}"):
        parser.exit(EXIT_BAD_CONFIG, f"{parser.prog}: error: SERVICE_NAME {args.service_name!r} must end "
                                     f"in .{kind} (<site>.<node>.{kind})\n")
    return ServiceOptions(kind, args.service_name, redis_url(args.redis_url), broker_url(args.broker_url),
                          args.log_level, args.log_format, args.audit_maxlen)


class _TextFormatter(logging.Formatter):
    """`time level service [request_id] logger: message`; the request id only when the record has one."""

    def __init__(self, service_name: str):
        super().__init__("%(asctime)s %(levelname)s %(service_tag)s: %(message)s")
        self.service_name = service_name

    def formatMessage(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.service_tag = f"{self.service_name} [{request_id}] {record.name}" if request_id else \
            f"{self.service_name} {record.name}"
        return super().formatMessage(record)


def _json_formatter(service_name: str) -> logging.Formatter:
    """One JSON object per line (for Grafana Alloy / Loki): time, level, service, host, logger, message, and
    request_id and any other `extra` a record carries."""
    return JsonFormatter(["levelname", "name", "message"], timestamp="time", json_ensure_ascii=False,
                         rename_fields={"levelname": "level", "name": "logger"},
                         static_fields={"service": service_name, "host": socket.gethostname()})


def configure_logging(level: str, log_format: str = "text", service_name: str = "") -> None:
    """Log to stderr at `level` (pika at WARNING or above), as text or JSON lines (`log_format`).

    Warnings and uncaught exceptions (of any thread) go through logging too, so a JSON log stays JSON.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_json_formatter(service_name) if log_format == "json" else _TextFormatter(service_name))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("pika").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, traceback: Any) -> None:
    log.critical("uncaught exception", exc_info=(kind, exc, traceback))


def _log_uncaught_in_thread(hook: Any) -> None:
    if not issubclass(hook.exc_type, SystemExit):
        log.critical("uncaught exception in thread %s", hook.thread.name if hook.thread else "?",
                     exc_info=(hook.exc_type, hook.exc_value, hook.exc_traceback))


class ServiceRuntime(Lifecycle):
    """Redis, configuration, beacon, broker and SIGTERM of one service; `start()` creates the Redis client."""

    def __init__(self, options: ServiceOptions):
        self.options = options
        self._stopped = threading.Event()

    @classmethod
    @contextmanager
    def boot(cls, kind: str, description: str, config_model: type[_Config],
             argv: list[str] | None = None) -> Iterator[tuple[ServiceRuntime, ExitStack, _Config]]:
        """Parse the options, configure logging, connect Redis and load the config (or exit with code 2).

        Yields the runtime, the stack the service enters its owners into (closed on leaving, the runtime
        last) and the validated config.
        """
        options = parse_options(kind, description, argv)
        configure_logging(options.log_level, options.log_format, options.service_name)
        with ExitStack() as stack:
            runtime = stack.enter_context(cls(options))
            yield runtime, stack, runtime.load_config(config_model)

    def _open(self) -> None:
        self.redis = connect_redis(self.options.redis_url)

    def _release(self) -> None:
        self.redis.close()

    def load_config(self, config_model: type[_Config]) -> _Config:
        """Read and validate `config.<SERVICE_NAME>`; exit with code 2 and a message if it is missing or invalid."""
        try:
            config = ConfigStore(self.redis).load(self.options.service_name)
        except DaqError as exc:
            self.refuse(str(exc))
        except redis.RedisError as exc:
            self.refuse(f"Redis at {self.options.redis_url}: {exc}")
        if not isinstance(config, config_model):
            self.refuse(f"config is not a {self.options.kind} config")
        self.config = config
        return config

    def refuse(self, reason: str) -> NoReturn:
        """Exit with code 2 and `reason` on stderr (the service cannot start)."""
        sys.stderr.write(f"{self.options.prog}: refusing to start: {reason}\n")
        sys.exit(EXIT_BAD_CONFIG)

    def start_or_refuse(self, stack: ExitStack, owner: _Owner, reason: str,
                        errors: type[Exception] | tuple[type[Exception], ...] = OSError) -> _Owner:
        """Enter `owner` into `stack`; if its start raises one of `errors`, refuse to start with `reason: error`."""
        try:
            return stack.enter_context(owner)
        except errors as exc:
            self.refuse(f"{reason}: {exc}")

    def serve(self, stack: ExitStack, handlers: dict[str, Handler], state: Callable[[], dict[str, Any]],
              metrics: Callable[[Families], None] | None = None) -> int:
        """Consume requests, keep the beacon alive and serve the metrics until SIGTERM or SIGINT.

        The audit trail, the consumer, the beacon and the metrics server (if `metrics_port` is set) are entered
        into `stack`: they stop when the caller leaves it (the audit trail last, so it records the final statuses of
        the requests the consumer ends).

        Args:
            metrics: adds the service's own metrics at each scrape (read from its state).
        """
        name = self.options.service_name
        audit = stack.enter_context(AuditTrail(self.redis, name, self.options.audit_maxlen))
        consumer = RequestConsumer(self.options.broker_url, name, handlers, audit)
        dispatcher = consumer.dispatcher

        def beacon_state() -> dict[str, Any]:
            running = dispatcher.running()
            return {**state(), "running_requests": running, "broker_connected": consumer.connected.is_set(),
                    "broker_reconnects": consumer.reconnects}

        beacon = LivenessBeacon(self.redis, name, self.config, beacon_state)
        if self.config.metrics_port:  # first: a port that is taken refuses the start before any request is taken
            registry = CollectorRegistry()
            registry.register(dispatcher.durations)
            registry.register(StateCollector(RuntimeState(
                name, self.options.kind, __version__, consumer.connected.is_set, lambda: consumer.reconnects,
                beacon.age, dispatcher.running).fill))
            if metrics is not None:
                registry.register(StateCollector(metrics))
            server = self.start_or_refuse(
                stack, MetricsServer(registry, self.config.metrics_host, self.config.metrics_port),
                f"cannot serve metrics on {self.config.metrics_host}:{self.config.metrics_port}")
            log.info("metrics at %s", server.url)
        stack.enter_context(consumer)
        if not consumer.wait_connected(_BROKER_WAIT_S):  # a live beacon means its request queue exists
            log.warning("broker %s not reachable yet; serving without it and retrying", self.options.broker_url)
        stack.enter_context(beacon)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopped.set())
        log.info("%s %s started (pid %d)", name, __version__, os.getpid())
        self._stopped.wait()
        log.info("%s stopping", name)
        return 0
