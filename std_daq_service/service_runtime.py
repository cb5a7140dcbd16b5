"""What every service does at start: arguments, logging, config from Redis, beacon, broker, SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import redis

from std_daq_service import __version__
from std_daq_service.broker import Handler, RequestConsumer, broker_url
from std_daq_service.config import ConfigStore, LivenessBeacon, ServiceConfig, connect_redis, redis_url
from std_daq_service.protocol import DaqError

log = logging.getLogger(__name__)

EXIT_BAD_CONFIG = 2
_BROKER_WAIT_S = 10.0


class ServiceRuntime:
    """Parse the common options, set up logging and load the validated configuration.

    Exits with code 2 and a message on stderr when the configuration is missing or invalid.
    """

    def __init__(self, kind: str, config_model: type[ServiceConfig], description: str,
                 argv: list[str] | None = None):
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
        parser.add_argument("--version", action="version", version=__version__)
        args = parser.parse_args(argv)
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("pika").setLevel(max(logging.WARNING, logging.getLogger().level))
        if not args.service_name:
            parser.exit(EXIT_BAD_CONFIG, f"{parser.prog}: error: set SERVICE_NAME or --service_name\n")
        if not args.service_name.endswith(f".{kind}"):
            parser.exit(EXIT_BAD_CONFIG, f"{parser.prog}: error: SERVICE_NAME {args.service_name!r} must end "
                                         f"in .{kind} (<site>.<node>.{kind})\n")
        self.service_name: str = args.service_name
        self.redis_url = redis_url(args.redis_url)
        self.broker_url = broker_url(args.broker_url)
        self.redis = connect_redis(self.redis_url)
        try:
            self.config = ConfigStore(self.redis).load(self.service_name)
        except DaqError as exc:
            parser.exit(EXIT_BAD_CONFIG, f"{parser.prog}: refusing to start: {exc}\n")
        except redis.RedisError as exc:
            parser.exit(EXIT_BAD_CONFIG, f"{parser.prog}: refusing to start: Redis at {self.redis_url}: {exc}\n")
        if not isinstance(self.config, config_model):
            parser.exit(EXIT_BAD_CONFIG, f"{parser.prog}: refusing to start: config is not a {kind} config\n")
        self._stopped = threading.Event()
        self._parser = parser

    def refuse(self, reason: str) -> None:
        """Exit with code 2 and `reason` on stderr (the service cannot start)."""
        log.error("refusing to start: %s", reason)
        self._parser.exit(EXIT_BAD_CONFIG, f"{self._parser.prog}: refusing to start: {reason}\n")

    def serve(self, stack: ExitStack, handlers: dict[str, Handler],
              state: Callable[[], dict[str, Any]]) -> int:
        """Consume requests and keep the beacon alive until SIGTERM or SIGINT; then leave `stack`."""
        consumer = RequestConsumer(self.broker_url, self.service_name, handlers)
        dispatcher = consumer.dispatcher

        def beacon_state() -> dict[str, Any]:
            running = dispatcher.running()
            return {**state(), "running_requests": running, "broker_connected": consumer.connected.is_set(),
                    "broker_reconnects": consumer.reconnects}

        stack.callback(dispatcher.close)
        stack.enter_context(consumer)
        if not consumer.wait_connected(_BROKER_WAIT_S):  # a live beacon means its request queue exists
            log.warning("broker %s not reachable yet; serving without it and retrying", self.broker_url)
        stack.enter_context(LivenessBeacon(self.redis, self.service_name, self.config, beacon_state))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopped.set())
        log.info("%s %s started (pid %d)", self.service_name, __version__, os.getpid())
        self._stopped.wait()
        log.info("%s stopping", self.service_name)
        return 0
