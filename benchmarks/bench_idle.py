"""Idle CPU of the writer, the event builder and the REST proxy: each started as a subprocess with nothing to do.

Usage: .venv/bin/python benchmarks/bench_idle.py [--seconds 20] [--services writer event_builder rest]

Each service gets a config naming a silent agent (an address nobody publishes on; the REST proxy names the
writer and the agent), waits --settle seconds after its liveness beacon, then its CPU time (user + system, all
threads, from /proc) is read over --seconds. Goal: under 1 % of a core each. Needs Redis and RabbitMQ.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
import uuid

from bench_common import cpu_seconds, start_service

from std_daq_service.config import connect_redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def configs(tag: str, output_root: str) -> dict[str, tuple[str, dict]]:
    """(kind, config) per service name."""
    agent = {"name": f"bench.{tag}.hp_io_agent", "data": f"tcp://127.0.0.1:{free_port()}"}
    writer = f"bench.{tag}.writer"
    return {
        writer: ("writer", {"agents": [agent], "output_root": output_root}),
        f"bench.{tag}.event_builder": ("event_builder", {"agents": [agent],
                                                         "events_bind": f"tcp://127.0.0.1:{free_port()}"}),
        f"bench.{tag}.rest": ("rest", {"port": free_port(), "writers": [writer], "agents": [agent["name"]]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--settle", type=float, default=5)
    parser.add_argument("--services", nargs="+", default=["writer", "event_builder", "rest"])
    args = parser.parse_args()
    redis = connect_redis()
    started = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, (kind, config) in configs(uuid.uuid4().hex[:6], tmp).items():
                if kind in args.services:
                    started[name] = (kind, start_service(kind, name, config, redis))
            time.sleep(args.settle)
            before = {name: cpu_seconds(p.pid) for name, (_, p) in started.items()}
            time.sleep(args.seconds)
            used = {name: cpu_seconds(p.pid) - before[name] for name, (_, p) in started.items()}
        finally:
            for name, (_, process) in started.items():
                process.terminate()
                process.wait(30)
                redis.delete(f"config.{name}", f"status.{name}")
    print(f"idle CPU over {args.seconds:g} s (goal: under 1 % of a core)")
    print("| service | CPU s | % of a core |")
    print("|---|---:|---:|")
    for name, (kind, _) in started.items():
        print(f"| {kind} | {used[name]:.2f} | {100 * used[name] / args.seconds:.2f} % |")


if __name__ == "__main__":
    main()
