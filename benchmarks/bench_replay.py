"""Replay benchmark: how fast an agent publishes a past window from its PFF files, next to the raw read rate of
the same files in the same run, and what a replay does to the live stream's latency.

Usage: .venv/bin/python benchmarks/bench_replay.py [--frames 200000] [--live-rate-hz 10000] [--seconds 8]

An archived run of `--frames` real Lick img16 frames (1 kHz frame times, one module, rolled over every 1 GB) is
written to a temp dir. Replay rate: an agent without a rate limit replays the whole run to a SUB socket (frames
from the request to its `replay_end`), from the page cache and, where `/proc/sys/vm/drop_caches` may be written,
from the disk after dropping the caches (else the table says so); the raw read rate of the same files is measured
next to each. Live latency: bench_agent's synthetic Hashpipe writes one module live at `--live-rate-hz` while a
subscriber in another process measures write-to-receive latency, first alone, then while replays of the archive
run back to back on an agent with the default limit (`replay_max_frames_per_second`), then without a limit.
Needs Redis and RabbitMQ (./setup_dev_env.sh).
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import zmq
from bench_agent import FLUSH, hashpipe_writer, subscriber
from bench_common import cpu_seconds, start_service

import std_daq_service
from std_daq_service.broker import RequestCaller
from std_daq_service.config import HpIoAgentConfig, connect_redis
from std_daq_service.pff import PffReader, PffWriter, data_product, format_data_file_name, format_run_dir_name
from std_daq_service.protocol import (
    ControlHeader,
    FrameBatch,
    InitHpIoRequest,
    ReplayRequest,
    StreamRequest,
    decode_stream_message,
    subscriber_topic,
)

SECOND = 1_000_000_000
FILE_BYTES = 1 << 30
SAMPLES = Path(std_daq_service.__file__).parent / "sample_data"
UNLIMITED = {"replay_max_frames_per_second": 1e9, "replay_max_bytes_per_second": 1e12}


def write_archive(directory: Path, n: int) -> tuple[Path, int, int]:
    """A flat archived run of n img16 frames at 1 kHz; returns its dir and the time span [start, stop)."""
    start = datetime.now(timezone.utc) - timedelta(days=1)
    run_dir = directory / format_run_dir_name("Bench", start, "sci-data")
    run_dir.mkdir(parents=True)
    product = data_product("img16")
    with PffReader(next(SAMPLES.glob("*/*/*dp_img16*module_1*.pff"))) as reader:
        block = reader.block()
        images, header = block.raw[:, block.header_size :], block.header(0)
    first = int(start.timestamp()) * SECOND
    writer, seqno = None, 0
    for i in range(n):
        if writer is None or writer.tell() > FILE_BYTES:
            if writer is not None:
                writer.close()
                seqno += 1
            name = format_data_file_name(start + timedelta(seconds=seqno), "img16", 1, seqno)
            writer = PffWriter(run_dir / name, product).open()
        sec, ns = divmod(first + i * SECOND // 1000, SECOND)
        for q in range(4):
            header[f"quabo_{q}"].update(pkt_num=i % 2**32, pkt_tai=(sec + 37) % 1024, pkt_nsec=ns, tv_sec=sec,
                                        tv_usec=ns // 1000)
        writer.write_frame(header, images[i % len(images)].tobytes())
    writer.close()
    return run_dir, first, first + n * SECOND // 1000


def raw_read(run_dir: Path) -> tuple[int, float]:
    """(bytes, seconds) to read every file of the run."""
    total, start = 0, time.perf_counter()
    for path in sorted(run_dir.glob("*.pff")):
        with open(path, "rb") as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
    return total, time.perf_counter() - start


def drop_caches() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def replay(caller: RequestCaller, agent: str, endpoint: str, run_dir: Path, start: int, stop: int) -> tuple[int, float]:
    """Replay the archive to a SUB socket; (frames received, seconds from request to replay_end)."""
    replay_id = str(uuid.uuid4())
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    for topic in (b"img16.", b"control.", subscriber_topic("replay", replay_id)):
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    t0 = time.perf_counter()
    caller.publish(agent, ReplayRequest(start_time=start, stop_time=stop, data_dir=str(run_dir)), replay_id)
    frames = 0
    try:
        while sock.poll(30_000):
            message = decode_stream_message(sock.recv_multipart())
            if isinstance(message, FrameBatch) and message.replay_id == replay_id:
                frames += len(message)
            elif isinstance(message, ControlHeader) and message.replay_id == replay_id:
                print(f"# replay of {frames} frames: {time.perf_counter() - t0:.2f} s from the request, "
                      f"{message.result['seconds']:.2f} s publishing in the agent")
                return frames, time.perf_counter() - t0
        raise RuntimeError("the replay stopped without replay_end")
    finally:
        sock.close(0)


def live_latency(agent: str, data_dir: Path, rate_hz: float, seconds: float, busy=None) -> dict:
    """Write one module live for `seconds` (calling `busy(stop)` in a thread meanwhile); latency p50/p99/max ms."""
    with RequestCaller(None, "bench-replay-live") as caller:
        assert caller.call(agent, InitHpIoRequest(data_dir=str(data_dir)), 20).ok
        endpoint = caller.call(agent, StreamRequest(), 20).results()[agent]["endpoints"]["data"]
    ready, done, results = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
    child = multiprocessing.Process(target=subscriber, args=(endpoint, "img16", ready, done, results))
    child.start()
    ready.wait(10)
    time.sleep(0.5)  # the subscription reaches the agent
    run = data_dir / "module_1" / f"obs_Live.start_{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%S}Z.runtype_bench.pffd"
    run.mkdir(parents=True)
    path = run / f"start_{datetime.now(timezone.utc):%Y-%m-%dT%H_%M_%S}Z.dp_img16.bpp_2.module_1.seqno_0.pff"
    stop, log, replayed = threading.Event(), [], []
    helper = threading.Thread(target=busy, args=(stop, replayed)) if busy else None
    if helper:
        helper.start()
    hashpipe_writer(path, "img16", FLUSH, rate_hz, seconds, stop, log, [])
    stop.set()
    if helper:
        helper.join()
    done.set()
    received, gaps, arrivals = results.get(timeout=120)
    child.join(10)
    latencies = []
    for _, seq_last, arrival in arrivals:
        index = bisect.bisect_left(log, (seq_last + 1, 0))
        if index < len(log):
            latencies.append((arrival - log[index][1]) / 1e6)
    lat = np.array(latencies)
    return {"p50": np.percentile(lat, 50), "p99": np.percentile(lat, 99), "max": lat.max(),
            "lost": gaps + log[-1][0] - received, "replayed": sum(f for f, _ in replayed),
            "replay_seconds": sum(s for _, s in replayed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--live-rate-hz", type=float, default=10_000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--tmp-dir", default=None)
    args = parser.parse_args()
    redis = connect_redis()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        run_dir, start, stop = write_archive(Path(tmp) / "archive", args.frames)
        os.sync()  # no writeback of the fresh archive competes with the reads below
        agents = []

        def agent(limits: dict) -> tuple[str, int]:
            name = f"bench.{uuid.uuid4().hex[:6]}.hp_io_agent"
            config = {"data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*",
                      "replay_bind": "tcp://127.0.0.1:*", **limits}
            agents.append((name, start_service("hp_io_agent", name, config, redis)))
            return name, agents[-1][1].pid

        try:
            name, pid = agent(UNLIMITED)
            with RequestCaller(None, "bench-replay") as caller:
                endpoint = caller.call(name, StreamRequest(), 20).results()[name]["endpoints"]["replay"]
                raw_read(run_dir)  # into the page cache
                for medium in ("page cache", "disk"):
                    if medium == "disk" and not drop_caches():
                        rows.append(("disk", None, None, None))
                        continue
                    nbytes, seconds = raw_read(run_dir)
                    raw = nbytes / data_product("img16").frame_size / seconds
                    if medium == "disk":
                        drop_caches()
                    rates, cpus = [], []
                    for _ in range(1 if medium == "disk" else 3):
                        cpu0 = cpu_seconds(pid)
                        frames, seconds = replay(caller, name, endpoint, run_dir, start, stop)
                        assert frames == args.frames, f"{frames} of {args.frames} frames replayed"
                        rates.append(frames / seconds)
                        cpus.append((cpu_seconds(pid) - cpu0) / seconds)
                    rows.append((medium, statistics.median(rates), raw, statistics.median(cpus)))
            latency = {}
            for label in ("none", "limited", "unlimited"):
                name, _ = agent(UNLIMITED if label == "unlimited" else {})  # a fresh agent per case
                with RequestCaller(None, "bench-replay-busy") as caller:
                    endpoint = caller.call(name, StreamRequest(), 20).results()[name]["endpoints"]["replay"]

                def busy(stop_event, replayed, name=name, endpoint=endpoint):
                    with RequestCaller(None, "bench-replay-loop") as loop_caller:
                        while not stop_event.is_set():
                            replayed.append(replay(loop_caller, name, endpoint, run_dir, start, stop))

                live_dir = Path(tmp) / f"live_{label}"
                live_dir.mkdir()
                latency[label] = live_latency(name, live_dir, args.live_rate_hz, args.seconds,
                                              None if label == "none" else busy)
        finally:
            for name, process in agents:
                process.terminate()
                process.wait(20)
                redis.delete(f"config.{name}")
    limit = HpIoAgentConfig.model_fields["replay_max_frames_per_second"].default
    print(f"archive: {args.frames:,} img16 frames; live: one img16 module at {args.live_rate_hz:g} Hz, "
          f"{args.seconds:g} s per case")
    print("| replay of the whole archive | replay frames/s | raw read frames/s (same files, same run) | agent CPU |")
    print("|---|---:|---:|---:|")
    for medium, rate, raw, cpu in rows:
        if rate is None:
            print(f"| from {medium} | not measured: /proc/sys/vm/drop_caches is not writable | | |")
        else:
            print(f"| from {medium} | {rate:,.0f} | {raw:,.0f} | {cpu:.0%} of one core |")
    print("| replay running meanwhile | live p50 / p99 / max ms | live frames lost | replayed frames/s |")
    print("|---|---:|---:|---:|")
    for label, text in (("none", "none"), ("limited", f"back to back, limit {limit:,.0f} frames/s (default)"),
                        ("unlimited", "back to back, no limit")):
        r = latency[label]
        rate = f"{r['replayed'] / r['replay_seconds']:,.0f}" if r["replay_seconds"] else "-"
        print(f"| {text} | {r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.1f} | {r['lost']} | {rate} |")


if __name__ == "__main__":
    main()
