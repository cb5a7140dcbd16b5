"""Socket hook benchmark: a fake Hashpipe sends img16 frames into the agent's Unix socket; N subscribers count.

Usage: .venv/bin/python benchmarks/bench_socket_hook.py [--rate-hz 10000] [--subscribers 10]
           [--seconds 10] [--format snapshot|file] [--sends-per-second 1000]
       (--rate-hz 1000 --subscribers 1: one record per send at 1 kHz, the low-rate case)

The fake Hashpipe sends `[2-byte module_id][PFF frame]` records of real Lick img16 frames, their headers
in Hashpipe's snapshot format (478-byte text, as snapshot.c writes it; `--format file` keeps the files'
489), `--sends-per-second` sends (rate/sends frames each), logging the time of each send. The agent
(subprocess, config in Redis, socket_hook on) publishes them; a separate process holds N SUB sockets
plus one stuck subscriber that never reads, and records per subscriber the frames received and seq gaps,
and for the first the arrival time of each message (latency = arrival - send time of its last frame, and of its first
frame: what the frames gathered longest in one message waited).
Same-run reference: the CPU of a minimal relay (one Python process: receive from the Unix socket, one ZMQ message
per receive) fed the same sends. Needs Redis and RabbitMQ.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import zmq
from bench_common import cpu_seconds, start_service

import std_daq_service
from std_daq_service import protocol
from std_daq_service.broker import RequestCaller
from std_daq_service.config import connect_redis
from std_daq_service.pff import PffReader, format_header
from std_daq_service.protocol import FrameBatch, StatusRequest, StreamRequest, decode_stream_message

TOPIC = getattr(protocol, "SOCKET_TOPIC_PREFIX", b"") + b"img16."  # socket frames have their own topics now

EXCERPT = next((Path(std_daq_service.__file__).parent / "sample_data").glob("*/*/*dp_img16*.pff"))


def subscribers(endpoint: str, n: int, ready, done, results) -> None:
    """Run in a child process: n counting SUB sockets and one stuck one; report counts through `results`."""
    ctx = zmq.Context()
    socks = []
    for _ in range(n):
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
        socks.append(sock)
    stuck = ctx.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 10)
    stuck.setsockopt(zmq.RCVBUF, 65536)
    stuck.connect(endpoint)
    stuck.setsockopt(zmq.SUBSCRIBE, TOPIC)
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    frames, gaps, next_seq, arrivals = [0] * n, [0] * n, [None] * n, []
    ready.set()
    quiet_since = None
    while True:
        events = dict(poller.poll(100))
        if not events:
            if done.is_set():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 1.5:
                    break
            continue
        quiet_since = None
        for i, sock in enumerate(socks):
            if sock not in events:
                continue
            message = decode_stream_message(sock.recv_multipart())  # the columns are views: nothing parsed
            if not isinstance(message, FrameBatch):
                continue
            seq = message.seq.tolist()
            if next_seq[i] is not None:
                gaps[i] += seq[0] - next_seq[i]
            next_seq[i] = seq[-1] + 1
            frames[i] += len(seq)
            if i == 0:
                arrivals.append((seq[0], seq[-1], time.time_ns()))
    results.put((frames, gaps, arrivals))
    for sock in [*socks, stuck]:
        sock.close(0)
    ctx.term()


def relay(path: str, endpoint: str, ready, done, results) -> None:
    """Run in a child process, the reference: receive from a Unix socket and send what came as one ZMQ message;
    report (messages, CPU seconds)."""
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(endpoint)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    ready.set()
    connection, _ = listener.accept()
    messages, cpu0 = 0, time.process_time()
    while data := connection.recv(1 << 20):
        pub.send_multipart([b"relay.", data])
        messages += 1
    results.put((messages, time.process_time() - cpu0))
    connection.close()
    listener.close()
    pub.close(0)


def offer(path: str, rows: list[bytes], rate_hz: float, per_send: int, seconds: float) -> tuple[int, float, list]:
    """Send `rows` into the Unix socket at `path` at `rate_hz`, `per_send` records per send: (sent, seconds, log)."""
    hashpipe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hashpipe.connect(path)
    sender_log, sent, t0 = [], 0, time.monotonic()
    while (elapsed := time.monotonic() - t0) < seconds:
        if sent >= elapsed * rate_hz:
            time.sleep(sent / rate_hz - elapsed)
            continue
        hashpipe.sendall(b"".join(rows[(sent + i) % len(rows)] for i in range(per_send)))
        sent += per_send
        sender_log.append((sent - 1, time.time_ns()))
    hashpipe.close()
    return sent, time.monotonic() - t0, sender_log


def relay_reference(hook_dir: str, rows: list[bytes], args, per_send: int) -> tuple[float, int]:
    """The same sends into `relay`: (its CPU share of one core, messages)."""
    path = f"{hook_dir}/relay.sock"
    ready, done, results = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
    child = multiprocessing.Process(target=relay, args=(path, f"tcp://127.0.0.1:{free_port()}", ready, done, results))
    child.start()
    ready.wait(10)
    _, seconds, _ = offer(path, rows, args.rate_hz, per_send, args.seconds)
    messages, cpu = results.get(timeout=30)
    child.join(10)
    os.unlink(path)
    return cpu / seconds, messages


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-hz", type=float, default=10000, help="frames/s offered")
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--format", choices=["snapshot", "file"], default="snapshot",
                        help="header format of the records (default: Hashpipe's snapshot format)")
    parser.add_argument("--sends-per-second", type=float, default=1000)
    parser.add_argument("--no-reference", action="store_true", help="skip the relay reference run")
    args = parser.parse_args()
    name = f"bench.{uuid.uuid4().hex[:6]}.hp_io_agent"
    hook_dir = tempfile.mkdtemp(prefix="hook", dir="/tmp")
    template = f"{hook_dir}/hp.dp_{{dp}}.sock"
    redis = connect_redis()
    with PffReader(EXCERPT) as reader:
        block = reader.block()
        if args.format == "snapshot":
            frames = [format_header(block.header(i), "snapshot") + block.raw[i, block.header_size :].tobytes()
                      for i in range(len(block))]
        else:
            frames = [row.tobytes() for row in block.raw]
        rows = [(1).to_bytes(2, "big") + frame for frame in frames]
    per_send = max(1, round(args.rate_hz / args.sends_per_second))
    agent = start_service("hp_io_agent", name, {"data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*",
                                                "socket_hook": True, "socket_path_template": template}, redis)
    try:
        with RequestCaller(None, "bench") as caller:
            endpoint = caller.call(name, StreamRequest(), 20).finals[name].result["endpoints"]["data"]
            ready, done, results = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
            child = multiprocessing.Process(target=subscribers, args=(endpoint, args.subscribers, ready, done, results))
            child.start()
            ready.wait(10)
            while caller.call(name, StatusRequest(), 10).finals[name].result["subscribers"] < args.subscribers + 1:
                time.sleep(0.1)
            status0 = caller.call(name, StatusRequest(), 10).finals[name].result
            cpu0 = cpu_seconds(agent.pid)
            sent, send_time, sender_log = offer(template.format(dp="img16"), rows, args.rate_hz, per_send,
                                                args.seconds)
            cpu = cpu_seconds(agent.pid) - cpu0
            status1 = caller.call(name, StatusRequest(), 10).finals[name].result
            done.set()
            frames, gaps, arrivals = results.get(timeout=60)
            child.join(10)
            hook = caller.call(name, StatusRequest(), 10).finals[name].result["socket_hook"]
    finally:
        agent.terminate()
        agent.wait(20)
        redis.delete(f"config.{name}")
    reference = None if args.no_reference else relay_reference(hook_dir, rows, args, per_send)
    os.rmdir(hook_dir)
    messages = status1["messages_published"] - status0["messages_published"]
    rounds = (status1.get("work") or {}).get("loop_rounds", 0) - (status0.get("work") or {}).get("loop_rounds", 0)
    sent_at = dict(sender_log)
    last_seqs = np.array(sorted(sent_at))
    latencies, first_latencies = [], []
    for seq_first, seq_last, arrival in arrivals:
        first, last = np.searchsorted(last_seqs, [seq_first, seq_last])  # the sends that completed these frames
        if last < len(last_seqs):
            latencies.append((arrival - sent_at[int(last_seqs[last])]) / 1e6)
            first_latencies.append((arrival - sent_at[int(last_seqs[first])]) / 1e6)
    lat, first_lat = np.array(latencies), np.array(first_latencies)
    print(f"socket hook, img16 ({args.format} headers), {args.rate_hz:g} frames/s offered for {args.seconds:g} s, "
          f"{args.subscribers} subscribers + 1 stuck")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| frames offered / accepted by the agent | {sent:,} / {hook['frames_received']:,} |")
    print(f"| offered rate achieved | {sent / send_time:,.0f} frames/s |")
    print(f"| delivered per subscriber (min / max) | {min(frames):,} / {max(frames):,} |")
    print(f"| seq gaps per subscriber (max) | {max(gaps)} |")
    print(f"| latency send to receive p50 / p99 / max | {np.percentile(lat, 50):.2f} / "
          f"{np.percentile(lat, 99):.2f} / {lat.max():.2f} ms |")
    print(f"| latency of each message's first frame p50 / p99 / max | {np.percentile(first_lat, 50):.2f} / "
          f"{np.percentile(first_lat, 99):.2f} / {first_lat.max():.2f} ms |")
    print(f"| agent CPU | {cpu / send_time:.1%} of one core |")
    print(f"| agent: messages / loop rounds per second | {messages / send_time:,.0f} / {rounds / send_time:,.0f} |")
    if reference is not None:
        print(f"| reference: minimal relay (receive, 1 ZMQ message per receive) CPU, same sends | "
              f"{reference[0]:.1%} of one core ({reference[1]:,} messages) |")


if __name__ == "__main__":
    main()
