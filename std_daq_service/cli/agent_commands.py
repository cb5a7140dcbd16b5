"""`std_daq list-hosts|init|init-sim|stop|status|stream`: drive node agents."""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict

import zmq
from rich.console import Console
from rich.live import Live

from std_daq_service.cli.arguments import module_ids
from std_daq_service.cli.tables import answer_table
from std_daq_service.client import DaqDataClient
from std_daq_service.client.discovery import load_json_arg
from std_daq_service.config import connect_redis, live_services, service_beacon
from std_daq_service.protocol import (
    ControlHeader,
    InitSimRequest,
    NoServiceAnswered,
    Request,
    StatusRequest,
    StopHpIoRequest,
    StreamRequest,
    UnknownTarget,
    decode_request,
    decode_stream_message,
    stream_subscriber,
)


def add_commands(commands) -> None:
    hosts = commands.add_parser("list-hosts", help="services whose liveness beacon is alive")
    hosts.add_argument("--kind", help="only this kind: hp_io_agent, writer, rest")
    hosts.set_defaults(run=run_list_hosts)
    health = commands.add_parser(
        "health", help="is a service live? (its liveness beacon; no request is sent)",
        description="Exit 0 when the service's liveness beacon in Redis is fresh and it is connected to the "
        "broker, else 1 with the reason: a container healthcheck that leaves no request history behind.")
    health.add_argument("service_name")
    health.set_defaults(run=run_health)

    def agent_parser(name: str, help_text: str):
        parser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("agent", help="SERVICE_NAME of the agent, e.g. lick.daq1.hp_io_agent")
        parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for the answer (default 30)")
        return parser

    init = agent_parser("init", "start tracking a data dir, from a panoseti hp_io_config.json")
    init.add_argument("config_file", help="JSON with data_dir, update_interval_seconds, force, module_ids, "
                                          "simulate_daq")
    init.set_defaults(run=run_init)
    sim = agent_parser("init-sim", "replay an archived run (default: the embedded Lick excerpt) as a live run")
    sim.add_argument("--source-dir", help="archived run dir to replay")
    sim.add_argument("--module-ids", help="comma-separated module ids to simulate")
    sim.add_argument("--movie-rate-hz", type=float, default=1000.0, help="image frames/s per module (default 1000)")
    sim.add_argument("--ph-rate-hz", type=float, default=100.0, help="pulse-height frames/s per module (default 100)")
    sim.add_argument("--update-interval", type=float, default=1.0, help="preview period in s (default 1)")
    sim.add_argument("--force", action="store_true", help="re-initialise even while consumers are subscribed")
    sim.set_defaults(run=run_init_sim)
    stop = agent_parser("stop", "stop tracking (and the simulator)")
    stop.set_defaults(run=run_stop)
    status = agent_parser("status", "what an agent or writer is doing: a table on a terminal, JSON otherwise")
    status.add_argument("--json", action="store_true", help="JSON even on a terminal")
    status.add_argument("--watch", type=float, metavar="S", help="on a terminal: ask again every S seconds, "
                                                                 "in a live table, until Ctrl-C")
    status.set_defaults(run=run_status)
    stream = agent_parser("stream", "subscribe to an agent's frames and print a summary per second")
    stream.add_argument("--module-ids", help="comma-separated module ids (default: all)")
    stream.add_argument("--no-movie", action="store_true", help="leave out image data products")
    stream.add_argument("--no-pulse-height", action="store_true", help="leave out pulse-height data products")
    stream.add_argument("--preview", action="store_true", help="the preview stream instead of every frame")
    stream.add_argument("--seconds", type=float, default=0, help="stop after this long (default: until Ctrl-C)")
    stream.add_argument("--refresh-period", type=float, default=1.0, help="seconds between summaries (default 1)")
    stream.set_defaults(run=run_stream)


def run_list_hosts(args) -> int:
    services = live_services(connect_redis(args.redis_url), args.kind)
    for name, beacon in services.items():
        print(f"{name}\thost={beacon.get('host')}\tpid={beacon.get('pid')}\tstate={beacon.get('state', '-')}")
    if not services:
        print("no live services", file=sys.stderr)
    return 0


def run_health(args) -> int:
    found = service_beacon(connect_redis(args.redis_url), args.service_name)
    if found is None:
        raise UnknownTarget(f"{args.service_name} has no live beacon (status.{args.service_name} is gone: "
                            "the service is not running, or cannot reach Redis)")
    if not found.get("broker_connected", True):
        raise NoServiceAnswered(f"{args.service_name} is running but not connected to the broker")
    age = time.time() - float(found.get("heartbeat_timestamp", 0))
    print(f"{args.service_name} live: pid {found.get('pid')} on {found.get('host')}, heartbeat {age:.1f} s ago")
    return 0


def _request(args, request: Request) -> dict:
    with DaqDataClient(broker_url=args.broker_url, redis_url=args.redis_url) as client:
        return client.request(args.agent, request, args.timeout)[args.agent]


def run_init(args) -> int:
    config = load_json_arg(args.config_file)
    print(json.dumps(_request(args, decode_request({**config, "request_type": "init_hp_io"})), indent=2))
    return 0


def run_init_sim(args) -> int:
    request = InitSimRequest(source_dir=args.source_dir, module_ids=module_ids(args.module_ids),
                             movie_rate_hz=args.movie_rate_hz, pulse_height_rate_hz=args.ph_rate_hz,
                             update_interval_seconds=args.update_interval, force=args.force)
    print(json.dumps(_request(args, request), indent=2))
    return 0


def run_stop(args) -> int:
    print(json.dumps(_request(args, StopHpIoRequest()), indent=2))
    return 0


def run_status(args) -> int:
    console = Console()
    if args.json or not sys.stdout.isatty():  # JSON into pipes and files
        print(json.dumps(_request(args, StatusRequest()), indent=2))
        return 0
    with DaqDataClient(broker_url=args.broker_url, redis_url=args.redis_url) as client:
        def table():
            return answer_table(client.request(args.agent, StatusRequest(), args.timeout)[args.agent], args.agent)

        if not args.watch:
            console.print(table())
            return 0
        with Live(table(), console=console, auto_refresh=False) as live:
            while True:
                client.caller.pump(args.watch)  # waits, answering the broker's heartbeats
                live.update(table(), refresh=True)


def run_stream(args) -> int:
    answer = _request(args, StreamRequest(stream_movie_data=not args.no_movie,
                                          stream_pulse_height_data=not args.no_pulse_height,
                                          module_ids=module_ids(args.module_ids)))
    endpoint = answer["endpoints"]["preview" if args.preview else "data"]
    sock = stream_subscriber(zmq.Context.instance())
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    for topic in answer["topics"]:
        sock.setsockopt_string(zmq.SUBSCRIBE, topic)
    print(f"subscribed to {endpoint} topics {' '.join(answer['topics'])}", flush=True)
    totals: dict[str, int] = defaultdict(int)
    window: dict[str, int] = defaultdict(int)
    gaps: dict[str, int] = defaultdict(int)
    next_seq: dict[str, int] = {}
    start = last = time.monotonic()
    try:
        while not args.seconds or time.monotonic() - start < args.seconds:
            if sock.poll(100):
                message = decode_stream_message(sock.recv_multipart())
                if isinstance(message, ControlHeader):
                    print(f"[{message.event}] {message.message}", flush=True)
                    continue
                key = f"module {message.module_id:3d} {message.dp:6s}"
                seq = message.seq
                if key in next_seq and seq[0] > next_seq[key] and not args.preview:
                    gaps[key] += seq[0] - next_seq[key]
                next_seq[key] = seq[-1] + 1
                totals[key] += len(message)
                window[key] += len(message)
            now = time.monotonic()
            if now - last >= args.refresh_period:
                for key in sorted(totals):
                    print(f"{key}  {window[key] / (now - last):9.1f} frames/s  total {totals[key]:9d}"
                          f"  lost {gaps[key]}", flush=True)
                window.clear()
                last = now
    finally:
        sock.close(linger=0)
    return 0
