"""Soak: the full stack at the Lick 2024 rate for a long time; memory, descriptors, queues and history per minute.

Usage: .venv/bin/python benchmarks/bench_soak.py [--minutes 60] [--out docs/soak]

An agent simulates the embedded Lick 2024 run (img16 + ph256 of module 1, ph256 of module 3) at 1 kHz per
stream; a writer records it, an event builder matches its ph256 frames, the REST proxy fronts them. Every minute:
a `write_sync` of 5 s through the proxy (the file checked complete and gap-free, then removed), a full-rate stream
client and a preview client that connect, read for 10 s and leave, and a sample of every process's RSS and open
descriptors (the shared Redis and RabbitMQ servers too), the RabbitMQ queues of these services (`rabbitmqctl`), the
length of the Redis audit stream and of the proxy's recent-request list. Writes `<out>.csv` and `<out>.png`
(matplotlib) and prints a summary.
Uses the machine's Redis and RabbitMQ (removing its keys and queues at the end), or, run by
benchmarks/soak_in_namespace.sh, private ones in a network namespace of its own, out of reach of anything else
that broadcasts on the machine's broker.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import h5py
import pika
import requests
from bench_common import process_tree, start_service

from std_daq_service.broker import AUDIT_STREAM, RequestCaller, connection_parameters
from std_daq_service.broker import broker_url as default_broker_url
from std_daq_service.client import DaqDataClient
from std_daq_service.config import connect_redis
from std_daq_service.protocol import InitSimRequest, StreamRequest

LICK_2024_HZ = 1000.0
WRITE_FRAMES = 5000
CLIENT_SECONDS = 10.0
STREAMS = 3
"""The embedded Lick excerpt relabelled to modules 1 and 3: img16 and ph256 of module 1, ph256 of module 3."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def server_pid(name: str) -> int | None:
    """The oldest process named `name` in this process's network namespace (the server the services use)."""
    here = os.stat("/proc/self/ns/net").st_ino
    for pid in subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split():
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == here:
                return int(pid)
        except OSError:
            continue
    return None


def queue_depths(prefix: str) -> dict[str, int]:
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages"], capture_output=True, text=True,
                         timeout=120).stdout
    depths = {}
    for line in out.splitlines():
        name, _, messages = line.partition("\t")
        if name.startswith(prefix) and messages.strip().isdigit():
            depths[name] = int(messages)
    return depths


def stream_client(agent: str, interval: float, counts: list[int]) -> None:
    """Connect, read frames for CLIENT_SECONDS, leave; append the frames read to `counts`."""
    stop = threading.Event()
    threading.Timer(CLIENT_SECONDS, stop.set).start()
    frames = 0
    with DaqDataClient(timeout=20) as client:
        for _ in client.stream_images(agent, update_interval_seconds=interval, parse_pano_images=False,
                                      stop_event=stop):
            frames += 1
    counts.append(frames)


def check_write(rest: str, out_dir: Path, minute: int) -> tuple[bool, float, int]:
    """A 5 s write through the proxy; (complete and gap-free, seconds, frames), the file removed afterwards."""
    name = f"soak_{minute:04d}.h5"
    t0 = time.monotonic()
    answer = requests.post(f"{rest}/write_sync", json={"output_file": name, "n_images": WRITE_FRAMES,
                                                        "timeout_seconds": 60}, timeout=120).json()
    seconds = time.monotonic() - t0
    response = answer.get("response", {})
    ok = answer.get("status") == "ok" and response.get("complete") is True and response.get("missing_frames") == 0
    frames = int(response.get("frames") or 0)
    path = out_dir / name
    if ok:
        with h5py.File(path, "r") as h5:
            counts = []
            h5.visititems(lambda _, item: counts.append((item.attrs["n_frames"], item.attrs["missing_frames"]))
                          if "n_frames" in item.attrs else None)
            ok = bool(h5.attrs["complete"]) and counts == [(WRITE_FRAMES, 0)] * STREAMS
    path.unlink(missing_ok=True)
    if not ok:
        print(f"minute {minute}: write not complete: {answer}", flush=True)
    return bool(ok), seconds, frames


def plot(rows: list[dict], names: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["minute"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    for name in names:
        axes[0].plot(minutes, [r[f"{name}_rss_mb"] for r in rows], label=name)
        axes[1].plot(minutes, [r[f"{name}_fds"] for r in rows], label=name)
    axes[0].set_ylabel("RSS (MB)")
    axes[1].set_ylabel("open file descriptors")
    axes[2].plot(minutes, [r["queued_messages"] for r in rows], label="messages in our RabbitMQ queues")
    axes[2].plot(minutes, [r["proxy_recent"] for r in rows], label="proxy /status requests (bound 50)")
    ax2 = axes[2].twinx()
    ax2.plot(minutes, [r["audit_stream_len"] for r in rows], "k--", label="Redis audit stream (bound ~100k)")
    ax2.set_ylabel("audit stream entries")
    axes[2].set_ylabel("messages / requests")
    axes[2].set_xlabel("minute")
    for ax in axes[:2]:
        ax.legend(fontsize=7, ncol=3)
    axes[2].legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    fig.suptitle(f"Soak at the Lick 2024 rate: {len(rows) - 1} minutes")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "soak")
    args = parser.parse_args()
    redis = connect_redis()
    tag = uuid.uuid4().hex[:6]
    prefix = f"soak.{tag}."
    names = {kind: f"{prefix}{kind}" for kind in ("hp_io_agent", "writer", "event_builder", "rest")}
    processes: dict[str, subprocess.Popen] = {}
    rows: list[dict] = []
    writes_ok, write_seconds, client_frames, preview_frames = 0, [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            processes["agent"] = start_service("hp_io_agent", names["hp_io_agent"], {
                "data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*",
                "sim_data_dir": f"{tmp}/sim", "min_update_interval_seconds": 0.05}, redis)
            with RequestCaller(None, "bench-soak") as caller:
                agent = names["hp_io_agent"]
                data = caller.call(agent, StreamRequest(), 30).finals[agent].result["endpoints"]["data"]
                assert caller.call(agent, InitSimRequest(module_ids=[1, 3], movie_rate_hz=LICK_2024_HZ,
                                                         pulse_height_rate_hz=LICK_2024_HZ,
                                                         max_file_size_mb=200), 30).ok
            agents = [{"name": agent, "data": data}]
            processes["writer"] = start_service("writer", names["writer"], {
                "agents": agents, "output_root": f"{tmp}/out", "ring_buffer_seconds": 6}, redis)
            processes["event_builder"] = start_service("event_builder", names["event_builder"], {
                "agents": agents, "events_bind": "tcp://127.0.0.1:*"}, redis)
            port = 20000 + int(tag, 16) % 20000
            processes["rest"] = start_service("rest", names["rest"], {
                "host": "127.0.0.1", "port": port, "writers": [names["writer"]], "agents": [agent]}, redis)
            rest = f"http://127.0.0.1:{port}"
            Path(f"{tmp}/out").mkdir(exist_ok=True)
            shared = {"redis_server": server_pid("redis-server"), "rabbitmq": server_pid("beam.smp")}
            measured = {**{k: p.pid for k, p in processes.items()}, "bench": os.getpid(),
                        **{k: v for k, v in shared.items() if v}}
            start = time.monotonic()
            for minute in range(args.minutes + 1):
                row = {"minute": minute, "elapsed_s": round(time.monotonic() - start, 1)}
                for key, pid in measured.items():
                    pids = [pid] if key in shared else process_tree(pid)
                    row[f"{key}_rss_mb"] = round(sum(rss_mb(p) for p in pids), 1)
                    row[f"{key}_fds"] = sum(open_fds(p) for p in pids)
                row["queued_messages"] = sum(queue_depths(prefix).values())
                row["audit_stream_len"] = redis.xlen(AUDIT_STREAM)
                row["proxy_recent"] = len(requests.get(f"{rest}/status", timeout=30).json().get("requests", []))
                if minute == args.minutes:
                    rows.append(row)
                    break
                clients = [threading.Thread(target=stream_client, args=(agent, 0, client_frames)),
                           threading.Thread(target=stream_client, args=(agent, 1.0, preview_frames))]
                for thread in clients:
                    thread.start()
                ok, seconds, frames = check_write(rest, Path(f"{tmp}/out"), minute)
                writes_ok += ok
                write_seconds.append(seconds)
                row.update(write_ok=int(ok), write_s=round(seconds, 2), write_frames=frames)
                for thread in clients:
                    thread.join(60)
                rows.append(row)
                print(row, flush=True)
                for process in processes.values():
                    assert process.poll() is None, "a service exited"
                time.sleep(max(0.0, start + 60 * (minute + 1) - time.monotonic()))
        finally:
            for process in reversed(processes.values()):
                process.terminate()
                process.wait(30)
            redis.delete(*(f"{kind}.{name}" for kind in ("config", "status", "checkpoint") for name in names.values()))
            connection = pika.BlockingConnection(connection_parameters(default_broker_url(), "bench-soak-cleanup"))
            channel = connection.channel()
            for name in names.values():
                for suffix in ("request", "kill"):
                    channel.queue_delete(f"{name}.{suffix}")
            connection.close()
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k != "minute", k))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, list(measured), args.out.with_suffix(".png"))
    first, last = rows[0], rows[-1]
    print(f"\n{len(rows) - 1} minutes at {LICK_2024_HZ:g} Hz per stream (img16 + ph256 of module 1, ph256 of 3)")
    print(f"writes complete and gap-free: {writes_ok} of {len(write_seconds)}; "
          f"write_sync {min(write_seconds):.1f}-{max(write_seconds):.1f} s")
    print(f"full-rate clients: frames {min(client_frames, default=0):,}-{max(client_frames, default=0):,}; "
          f"preview clients: {min(preview_frames, default=0)}-{max(preview_frames, default=0)}")
    print("| process | RSS first / last / max (MB) | fds first / last / max |")
    print("|---|---|---|")
    for key in measured:
        rss = [r[f"{key}_rss_mb"] for r in rows]
        fds = [r[f"{key}_fds"] for r in rows]
        print(f"| {key} | {first[f'{key}_rss_mb']} / {last[f'{key}_rss_mb']} / {max(rss)} "
              f"| {first[f'{key}_fds']} / {last[f'{key}_fds']} / {max(fds)} |")
    print(f"queued messages max {max(r['queued_messages'] for r in rows)}; audit stream length "
          f"{first['audit_stream_len']} -> {last['audit_stream_len']}; proxy recent requests max "
          f"{max(r['proxy_recent'] for r in rows)}")


if __name__ == "__main__":
    main()
