"""`std_daq`: the command line of the PANOSETI DAQ service; one subcommand per task.

Every failure is one line on stderr (`std_daq: error: ...`) and an exit code: 2 for usage errors, 1 for the
others, 130 for Ctrl-C. An unexpected error (a bug) shows its traceback only with `--log-level DEBUG`.
"""

from __future__ import annotations

import logging
import sys

from std_daq_service import __version__
from std_daq_service.broker import broker_url
from std_daq_service.cli import (
    agent_commands,
    client_commands,
    config_commands,
    h5_commands,
    history_commands,
    pff_commands,
)
from std_daq_service.cli.errors import ArgumentParser, error_line, print_error
from std_daq_service.config import redis_url

COMMAND_GROUPS = (pff_commands, h5_commands, config_commands, agent_commands, client_commands, history_commands)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

log = logging.getLogger("std_daq")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="std_daq",
        description="Command line of the PANOSETI live DAQ service: inspect PFF files, manage configs, "
        "drive agents and writers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL or redis://127.0.0.1:6379/0)")
    parser.add_argument("--broker-url", help="RabbitMQ URL (default: $BROKER_URL or amqp://guest:guest@127.0.0.1:5672/%%2F)")
    parser.add_argument("--log-level", default="WARNING", type=str.upper, choices=LOG_LEVELS,
                        help="DEBUG, INFO, WARNING (default) or ERROR")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.redis_url, args.broker_url = redis_url(args.redis_url), broker_url(args.broker_url)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pika logs every returned (unroutable) request and every lost connection, which std_daq reports itself
    logging.getLogger("pika").setLevel(logging.DEBUG if args.log_level == "DEBUG" else logging.CRITICAL)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = error_line(exc, args.redis_url, args.broker_url)
        if message is None:
            log.debug("unexpected error", exc_info=True)
            message = f"unexpected {type(exc).__name__}: {exc} (--log-level DEBUG shows where)"
        print_error(message)
        return 1


if __name__ == "__main__":
    sys.exit(main())
