"""`std_daq`: the command line of the PANOSETI DAQ service; one subcommand per task."""

from __future__ import annotations

import argparse
import logging
import sys

from std_daq_service import __version__
from std_daq_service.cli import (
    agent_commands,
    client_commands,
    config_commands,
    h5_commands,
    history_commands,
    pff_commands,
)
from std_daq_service.protocol import DaqError

COMMAND_GROUPS = (pff_commands, h5_commands, config_commands, agent_commands, client_commands, history_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="std_daq",
        description="Command line of the PANOSETI live DAQ service: inspect PFF files, manage configs, "
        "drive agents and writers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL or redis://127.0.0.1:6379/0)")
    parser.add_argument("--broker-url", help="RabbitMQ URL (default: $BROKER_URL or amqp://guest:guest@127.0.0.1:5672/%%2F)")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pika warns about every returned (unroutable) request, which std_daq reports itself
    logging.getLogger("pika").setLevel(max(logging.ERROR, logging.getLogger().level))
    try:
        return args.run(args) or 0
    except DaqError as exc:
        print(f"std_daq: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
