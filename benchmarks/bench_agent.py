"""Tail-and-publish benchmark of the node agent, next to raw file read and raw ZMQ rates of the same run.

Usage: .venv/bin/python benchmarks/bench_agent.py [--modules 4] [--rate-hz 25000] [--seconds 10] [--scrape-metrics]
       (--rate-hz 0: each module's writer appends as fast as it can; --scrape-metrics: the agent serves its
       Prometheus metrics and they are scraped every second during the run)

A synthetic Hashpipe appends real Lick img16 frames for N modules into data_dir/module_N/obs_*/ in writes of
exactly 1 MiB (as Hashpipe's stdio buffer flushes: about 412.8 frames, so each write ends in a torn frame),
logging the time of each write. The agent (a
subprocess, config in Redis, init_hp_io over RabbitMQ) tails and publishes; a SUB socket counts frames and
gaps in seq in a separate process;
latency = arrival of a message - time of the write that completed its last frame. Agent CPU
comes from /proc. Needs Redis and RabbitMQ (./setup_dev_env.sh).
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import os
import socket
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import zmq
from bench_common import cpu_seconds, start_service

import std_daq_service
from std_daq_service.broker import RequestCaller
from std_daq_service.config import connect_redis
from std_daq_service.pff import PffReader
from std_daq_service.protocol import FrameBatch, InitHpIoRequest, StreamRequest, decode_stream_message

EXCERPT = next((Path(std_daq_service.__file__).parent / "sample_data").glob("*/*/*dp_img16*.pff"))
FRAME = 2540


FLUSH = 1 << 20  # Hashpipe's stdio buffer for image files: the file grows by exactly 1 MiB at a time


def hashpipe_writer(path: Path, rate_hz: float, seconds: float, stop: threading.Event, log: list) -> None:
    """Append real frames as Hashpipe's stdio buffer does: exactly 1 MiB per write, so every write ends in a torn
    frame, at `rate_hz`; the rest at the end (its fclose). Log (whole frames in the file so far, time_ns) per write."""
    with PffReader(EXCERPT) as reader:
        source = reader.block().raw.tobytes()
    cycle = source * 2
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    written = 0
    start = time.monotonic()
    while not stop.is_set() and time.monotonic() - start < seconds:
        if rate_hz and (written + FLUSH) // FRAME / rate_hz > time.monotonic() - start:
            time.sleep(0.0005)
            continue
        offset = written % len(source)
        os.write(fd, cycle[offset : offset + FLUSH])
        written += FLUSH
        log.append((written // FRAME, time.time_ns()))
    rest = -written % FRAME
    offset = written % len(source)
    os.write(fd, cycle[offset : offset + rest])
    written += rest
    log.append((written // FRAME, time.time_ns()))
    os.close(fd)


def subscriber(endpoint: str, ready, done, results) -> None:
    """Run in a child process: count frames and seq gaps from the headers; log (module, last seq, arrival)."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"img16.")
    ready.set()
    received, gaps, next_seq, arrivals = 0, 0, {}, []
    quiet_since = None
    while True:
        if not sub.poll(100):
            if done.is_set():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 1.5:
                    break
            continue
        quiet_since = None
        parts = sub.recv_multipart()
        arrival = time.time_ns()
        message = decode_stream_message(parts)  # binary columns: no parsing of per-frame fields
        if not isinstance(message, FrameBatch):
            continue
        seq, module_id = message.seq.tolist(), message.module_id
        gaps += seq[0] - next_seq.get(module_id, seq[0])
        next_seq[module_id] = seq[-1] + 1
        received += len(seq)
        arrivals.append((module_id, seq[-1], arrival))
    results.put((received, gaps, arrivals))
    sub.close(0)


def zmq_reference(n_messages: int = 300, batch: int = 1000) -> float:
    ctx = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    time.sleep(0.3)
    payload = bytes(batch * 2048)
    start = time.perf_counter()
    for _ in range(n_messages):
        pub.send_multipart([b"img16.001.", b"{}", payload], copy=False)
    for _ in range(n_messages):
        sub.recv_multipart()
    elapsed = time.perf_counter() - start
    pub.close(0)
    sub.close(0)
    return n_messages * batch / elapsed


def scrape_every_second(url: str, stop: threading.Event, scrapes: list) -> None:
    """Scrape the agent's metrics as Prometheus would, a lot more often (it scrapes every 5-15 s)."""
    while not stop.wait(1.0):
        with urllib.request.urlopen(url, timeout=5) as response:
            scrapes.append(len(response.read()))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", type=int, default=4)
    parser.add_argument("--rate-hz", type=float, default=25000, help="frames/s per module; 0 = as fast as possible")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--tmp-dir", default=None, help="where the run is written (default: $TMPDIR or /tmp); "
                                                         "/dev/shm leaves the disk out")
    parser.add_argument("--scrape-metrics", action="store_true", help="serve and scrape the agent's metrics")
    args = parser.parse_args()
    name = f"bench.{uuid.uuid4().hex[:6]}.hp_io_agent"
    redis = connect_redis()
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        data_dir = Path(tmp)
        config = {"data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*"}
        if args.scrape_metrics:
            config["metrics_port"] = free_port()
        agent = start_service("hp_io_agent", name, config, redis)
        scrapes: list[int] = []
        try:
            with RequestCaller(None, "bench") as caller:
                assert caller.call(name, InitHpIoRequest(data_dir=str(data_dir)), 20).ok
                endpoint = caller.call(name, StreamRequest(), 20).finals[name].result["endpoints"]["data"]
            ready, done, results = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
            child = multiprocessing.Process(target=subscriber, args=(endpoint, ready, done, results))
            child.start()
            ready.wait(10)
            time.sleep(0.5)
            run = "obs_Bench.start_2026-11-23T00:00:00Z.runtype_bench.pffd"
            paths = []
            for m in range(1, args.modules + 1):
                (data_dir / f"module_{m}" / run).mkdir(parents=True)
                name_m = f"start_2026-11-23T00:00:00Z.dp_img16.bpp_2.module_{m}.seqno_0.pff"
                paths.append(data_dir / f"module_{m}" / run / name_m)
            stop = threading.Event()
            logs: dict[int, list] = {m: [] for m in range(1, args.modules + 1)}
            writers = [threading.Thread(target=hashpipe_writer, args=(p, args.rate_hz, args.seconds, stop, logs[m]))
                       for m, p in zip(logs, paths, strict=True)]
            scraper = threading.Thread(target=scrape_every_second, name="scraper", args=(
                f"http://127.0.0.1:{config.get('metrics_port')}/metrics", stop, scrapes))
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            for w in writers:
                w.start()
            if args.scrape_metrics:
                scraper.start()
            for w in writers:
                w.join()
            stop.set()
            if args.scrape_metrics:
                scraper.join()
            done.set()
            received, gaps, arrivals = results.get(timeout=120)
            child.join(10)
            latencies = []
            for module_id, seq_last, arrival in arrivals:
                log = logs[module_id]
                index = bisect.bisect_left(log, (seq_last + 1, 0))
                if index < len(log):
                    latencies.append((arrival - log[index][1]) / 1e6)
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(agent.pid) - cpu0
        finally:
            agent.terminate()
            agent.wait(20)
            redis.delete(f"config.{name}")
        total = sum(log[-1][0] for log in logs.values() if log)
        start = time.perf_counter()
        for p in paths:
            with open(p, "rb") as f:
                while f.read(16 << 20):
                    pass
        raw_read = total / (time.perf_counter() - start)
    raw_zmq = zmq_reference()
    lat = np.array(latencies)
    print(f"img16, {args.modules} modules, {'max' if not args.rate_hz else f'{args.rate_hz:g} Hz'} per module, "
          f"{args.seconds:g} s" + (f", metrics scraped {len(scrapes)} times" if args.scrape_metrics else ""))
    print("| measure | value |")
    print("|---|---:|")
    print(f"| frames written | {total:,} |")
    print(f"| frames delivered | {received:,} ({received / max(total, 1):.1%}) |")
    print(f"| frames lost (seq gaps + undelivered) | {gaps + total - received:,} |")
    print(f"| delivered frames/s (over the write period) | {received / elapsed:,.0f} |")
    print(f"| latency write to receive p50 / p99 / max | {np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f}"
          f" / {lat.max():.1f} ms |")
    print(f"| agent CPU | {cpu / elapsed:.0%} of one core |")
    print(f"| reference: raw read of the same files | {raw_read:,.0f} frames/s |")
    print(f"| reference: raw ZMQ PUB/SUB, 1000-frame messages | {raw_zmq:,.0f} frames/s |")


if __name__ == "__main__":
    main()
