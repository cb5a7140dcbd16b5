"""`std_daq config ...`: read and store service configurations in Redis."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from std_daq_service.config import ConfigStore, connect_redis, validate_config
from std_daq_service.protocol import InvalidRequest


def add_commands(commands) -> None:
    config = commands.add_parser(
        "config", help="read and store service configurations in Redis",
        description="Service configurations live in Redis under config.<SERVICE_NAME>; every one is "
        "validated before it is stored.",
    )
    sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    get = sub.add_parser("get", help="print a service's configuration")
    get.add_argument("service_name")
    get.set_defaults(run=run_get)
    put = sub.add_parser("set", help="validate and store a configuration from a JSON file ('-' for stdin)")
    put.add_argument("service_name")
    put.add_argument("file")
    put.add_argument("--if-absent", action="store_true",
                     help="validate, but keep a configuration that is stored already (seed on first start)")
    put.set_defaults(run=run_set)
    load = sub.add_parser(
        "load", help="store every <SERVICE_NAME>.json of a directory (or the files given)",
        description="Validate all files first; store them only if every one is valid.",
    )
    load.add_argument("paths", nargs="+", help="directories of <SERVICE_NAME>.json files, or such files")
    load.set_defaults(run=run_load)
    names = sub.add_parser("list", help="list the services that have a configuration")
    names.set_defaults(run=run_list)


def run_get(args) -> int:
    store = ConfigStore(connect_redis(args.redis_url))
    print(json.dumps(store.load(args.service_name).model_dump(mode="json"), indent=2))
    return 0


def run_set(args) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    store = ConfigStore(connect_redis(args.redis_url))
    if args.if_absent and not store.seed(args.service_name, text):
        print(f"kept the stored config.{args.service_name} ({args.file} is valid)")
        return 0
    if not args.if_absent:
        store.save(args.service_name, text)
    print(f"stored config.{args.service_name}")
    return 0


def run_load(args) -> int:
    files: list[Path] = []
    for name in args.paths:
        path = Path(name)
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    store = ConfigStore(connect_redis(args.redis_url))
    configs = {}
    for path in files:
        try:
            configs[path.stem] = validate_config(path.stem, path.read_text())
        except OSError as exc:
            raise InvalidRequest(f"{path}: {exc.strerror}") from exc
    for name, config in configs.items():
        store.save(name, config.model_dump(mode="json", exclude_unset=True))
        print(f"stored config.{name}", file=sys.stderr)
    return 0


def run_list(args) -> int:
    for name in ConfigStore(connect_redis(args.redis_url)).service_names():
        print(name)
    return 0
