"""Tail-and-publish benchmark of the node agent, next to raw file read and raw ZMQ rates of the same run.

Usage: .venv/bin/python benchmarks/bench_agent.py [--modules 4] [--rate-hz 25000] [--seconds 10] [--scrape-metrics]
           [--dp img16|ph256] [--frames-per-write N] [--tmp-dir DIR] [--no-pin] [--dump FILE.npz]
       (--rate-hz 0: each module's writer appends as fast as it can; --scrape-metrics: the agent serves its
       Prometheus metrics and they are scraped every second during the run; --frames-per-write 1 --rate-hz 1000:
       small writes, as Hashpipe's pulse-height files flush every few KiB)

A synthetic Hashpipe appends real Lick frames (img16 or ph256) for N modules into data_dir/module_N/obs_*/ in
writes of exactly 1 MiB (as Hashpipe's stdio buffer flushes: about 412.8 img16 frames, so each write ends in a torn
frame), or of `--frames-per-write` whole frames, logging the time of each write. The agent (a
subprocess, config in Redis, init_hp_io over RabbitMQ) tails and publishes; a SUB socket counts frames and
gaps in seq in a separate process;
latency = arrival of a message - time of the write that completed its last frame. Agent CPU
comes from /proc. Same-run references: raw read and raw ZMQ rates, and the CPU of a minimal relay (inotify, read
what is new, one ZMQ message per read, in one Python process) following the same writes. Needs Redis and
RabbitMQ (./setup_dev_env.sh).

By default the writer threads run on the first CPU; the agent, the subscriber and the relay go where the scheduler
puts them (the agent pinned to the other CPU, beside the subscriber, had p99 17-32 ms on /dev/shm, against 11-17 ms
unpinned in the same hour). On this VM a page-cache write costs 0.25-0.6 ms of CPU per MiB on memory the guest used
recently but 3-5 ms on memory the host took back (free page reporting), so the writers need anything from a tenth of
a core to a whole one at 4 x 25 kHz; unpinned, that swing starves the agent of CPU and made the latency tail come and
go (`--no-pin` shows it). Other work on the agent's CPU still starves it. The writers' own CPU and their writes that
took over 10 ms are reported.
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
from std_daq_service.pff import PffReader, data_product
from std_daq_service.protocol import (
    FrameBatch,
    InitHpIoRequest,
    StatusRequest,
    StreamRequest,
    decode_stream_message,
)

FLUSH = 1 << 20  # Hashpipe's stdio buffer for image files: the file grows by exactly 1 MiB at a time


def excerpt(dp: str) -> bytes:
    """The real frames of the embedded Lick excerpt for `dp`, back to back."""
    path = next((Path(std_daq_service.__file__).parent / "sample_data").glob(f"*/*/*dp_{dp}*module_1*.pff"))
    with PffReader(path) as reader:
        return reader.block().raw.tobytes()


def frame_size(dp: str) -> int:
    return data_product(dp).frame_size


def pin(cpus: set[int] | None) -> None:
    """Keep the calling thread on `cpus`; None leaves the scheduler free."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def hashpipe_writer(path: Path, dp: str, flush: int, rate_hz: float, seconds: float, stop: threading.Event,
                    log: list, cpu: list, cpus: set[int] | None = None) -> None:
    """Append real frames as Hashpipe's stdio buffer does: `flush` bytes per write (1 MiB: every write ends in a torn
    frame), at `rate_hz`; the rest at the end (its fclose). Log (whole frames in the file so far, time_ns after the
    write, time_ns before it) per write; add the thread's CPU seconds to `cpu`."""
    pin(cpus)
    frame = frame_size(dp)
    source = excerpt(dp)
    cycle = memoryview(source * (2 + flush // len(source)))  # slices without a copy
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    written = 0
    cpu0 = time.thread_time()
    start = time.monotonic()
    while not stop.is_set() and time.monotonic() - start < seconds:
        due = (written + flush) // frame / rate_hz - (time.monotonic() - start) if rate_hz else 0
        if due > 0:
            time.sleep(due)  # one wake per write (polling every 0.5 ms woke 4 writers 8000 times a second)
        offset = written % len(source)
        began = time.time_ns()
        os.write(fd, cycle[offset : offset + flush])
        written += flush
        log.append((written // frame, time.time_ns(), began))
    rest = -written % frame
    offset = written % len(source)
    began = time.time_ns()
    os.write(fd, cycle[offset : offset + rest])
    written += rest
    log.append((written // frame, time.time_ns(), began))
    os.close(fd)
    cpu.append(time.thread_time() - cpu0)


def relay(paths: list[str], endpoint: str, ready, done, results) -> None:
    """Run in a child process, the reference: the least a Python tailer does per write (inotify wakes it, it reads
    what is new of each file and sends it as one ZMQ message); report (messages, CPU seconds of the process)."""
    from inotify_simple import INotify
    from inotify_simple import flags as inotify_flags

    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(endpoint)
    notify = INotify()
    files = {notify.add_watch(p, inotify_flags.MODIFY): open(p, "rb") for p in paths}
    ready.set()
    messages = 0
    cpu0 = time.process_time()
    while not done.is_set():
        for event in notify.read(timeout=100):
            data = files[event.wd].read()
            if data:
                pub.send_multipart([b"relay.", data], copy=False)
                messages += 1
    results.put((messages, time.process_time() - cpu0))
    for f in files.values():
        f.close()
    pub.close(0)


def subscriber(endpoint: str, dp: str, ready, done, results) -> None:
    """Run in a child process: count frames and seq gaps from the headers; log (module, last seq, arrival)."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, f"{dp}.".encode())
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


def write_run(data_dir: Path, args) -> tuple[list[Path], dict[int, list]]:
    """Create the (empty) files of one run of N modules; return them and their empty write logs."""
    run = "obs_Bench.start_2026-11-23T00:00:00Z.runtype_bench.pffd"
    paths = []
    for m in range(1, args.modules + 1):
        (data_dir / f"module_{m}" / run).mkdir(parents=True)
        paths.append(data_dir / f"module_{m}" / run / f"start_2026-11-23T00:00:00Z.dp_{args.dp}.bpp_2.module_{m}"
                     f".seqno_0.pff")
    for path in paths:
        path.touch()
    return paths, {m: [] for m in range(1, args.modules + 1)}


def run_writers(paths: list[Path], logs: dict[int, list], args, stop: threading.Event) -> float:
    """Append to every file in its own thread (as `--dp`, `--frames-per-write`, `--rate-hz` say); when done, return
    the CPU seconds the writer threads used (system time of buffered writes included)."""
    flush = args.frames_per_write * frame_size(args.dp) if args.frames_per_write else FLUSH
    cpu: list[float] = []
    writers = [threading.Thread(target=hashpipe_writer, args=(p, args.dp, flush, args.rate_hz, args.seconds, stop,
                                                              logs[m], cpu, args.writer_cpus))
               for m, p in zip(logs, paths, strict=True)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    return sum(cpu)


def relay_reference(tmp: Path, args) -> tuple[float, int, int]:
    """The same writes followed by `relay` instead of the agent: (its CPU share of a core, messages sent, received)."""
    paths, logs = write_run(tmp / "relay", args)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ready, done, results = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
    child = multiprocessing.Process(target=relay, args=([str(p) for p in paths], endpoint, ready, done, results))
    child.start()
    ready.wait(10)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"relay.")
    received = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal received
        while not stop.is_set() or sub.poll(200):
            if sub.poll(100):
                sub.recv_multipart()
                received += 1

    counter = threading.Thread(target=count)
    counter.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    run_writers(paths, logs, args, stop)
    elapsed = time.monotonic() - t0
    done.set()
    messages, cpu = results.get(timeout=30)
    child.join(10)
    stop.set()
    counter.join()
    sub.close(0)
    return cpu / elapsed, messages, received


def agent_counters(caller: RequestCaller, name: str) -> dict:
    """Counters from the agent's status (absent in older code: 0)."""
    result = caller.call(name, StatusRequest(), 10).finals[name].result
    work = result.get("work") or {}
    return {"checkpoint_writes": work.get("checkpoint_writes", 0), "previews_encoded": work.get("previews_encoded", 0),
            "loop_rounds": work.get("loop_rounds", 0), "messages": result.get("messages_published", 0),
            "checkpoint_waits": work.get("checkpoint_waits", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", type=int, default=4)
    parser.add_argument("--rate-hz", type=float, default=25000, help="frames/s per module; 0 = as fast as possible")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--dp", choices=["img16", "ph256"], default="img16")
    parser.add_argument("--frames-per-write", type=int, default=0,
                        help="whole frames per write (default 0: 1 MiB writes, as Hashpipe's stdio buffer)")
    parser.add_argument("--idle-seconds", type=float, default=0,
                        help="after the run, measure the agent's CPU while nothing is written")
    parser.add_argument("--no-reference", action="store_true", help="skip the relay reference run")
    parser.add_argument("--tmp-dir", default=None, help="where the run is written (default: $TMPDIR or /tmp); "
                                                         "/dev/shm leaves the disk out")
    parser.add_argument("--scrape-metrics", action="store_true", help="serve and scrape the agent's metrics")
    parser.add_argument("--dump", help="save every message's (module, last seq, arrival, write end, write start) "
                                       "and the writers' logs (frames, end, start of each write; ns) to this .npz")
    parser.add_argument("--no-pin", action="store_true",
                        help="let the scheduler place everything (by default the synthetic Hashpipe's writer threads "
                             "run on the first CPU only, leaving the other to the agent: on a DAQ node Hashpipe "
                             "has cores of its own, and here its page-cache writes can take a whole core)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    args.writer_cpus = {cpus[0]} if not args.no_pin and len(cpus) > 1 else None
    name = f"bench.{uuid.uuid4().hex[:6]}.hp_io_agent"
    redis = connect_redis()
    idle_cpu = None
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        config = {"data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*"}
        if args.scrape_metrics:
            config["metrics_port"] = free_port()
        agent = start_service("hp_io_agent", name, config, redis)
        scrapes: list[int] = []
        try:
            caller = RequestCaller(None, "bench").start()
            assert caller.call(name, InitHpIoRequest(data_dir=str(data_dir)), 20).ok
            endpoint = caller.call(name, StreamRequest(), 20).finals[name].result["endpoints"]["data"]
            ready, done, results = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
            child = multiprocessing.Process(target=subscriber, args=(endpoint, args.dp, ready, done, results))
            child.start()
            ready.wait(10)
            time.sleep(0.5)
            stop = threading.Event()
            paths, logs = write_run(data_dir, args)
            time.sleep(0.5)  # the agent found the (empty) files
            scraper = threading.Thread(target=scrape_every_second, name="scraper", args=(
                f"http://127.0.0.1:{config.get('metrics_port')}/metrics", stop, scrapes))
            counters0 = agent_counters(caller, name)
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            if args.scrape_metrics:
                scraper.start()
            writers_cpu = run_writers(paths, logs, args, stop)
            stop.set()
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(agent.pid) - cpu0
            counters = {k: v - counters0[k] for k, v in agent_counters(caller, name).items()}
            if args.scrape_metrics:
                scraper.join()
            done.set()
            received, gaps, arrivals = results.get(timeout=120)
            child.join(10)
            if args.idle_seconds:
                time.sleep(1.0)
                idle0, i0 = cpu_seconds(agent.pid), time.monotonic()
                time.sleep(args.idle_seconds)
                idle_cpu = (cpu_seconds(agent.pid) - idle0) / (time.monotonic() - i0)
            caller.close()
            latencies, matched = [], []
            for module_id, seq_last, arrival in arrivals:
                log = logs[module_id]
                index = bisect.bisect_left(log, (seq_last + 1, 0))
                if index < len(log):
                    latencies.append((arrival - log[index][1]) / 1e6)
                    matched.append((module_id, seq_last, arrival, log[index][1], log[index][2]))
            if args.dump:
                np.savez(args.dump, messages=np.array(matched, dtype=np.int64), agent_pid=agent.pid,
                         bench_pid=os.getpid(), subscriber_pid=child.pid,
                         clock_offset_ns=time.time_ns() - time.monotonic_ns(),
                         **{f"writes_{m}": np.array(log, dtype=np.int64) for m, log in logs.items()})
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
        reference = None if args.no_reference else relay_reference(Path(tmp), args)
    raw_zmq = zmq_reference()
    lat = np.array(latencies)
    writes = f"{args.frames_per_write} frame(s) per write" if args.frames_per_write else "1 MiB writes"
    print(f"{args.dp}, {args.modules} modules, {'max' if not args.rate_hz else f'{args.rate_hz:g} Hz'} per module, "
          f"{writes}, {args.seconds:g} s" + (f", metrics scraped {len(scrapes)} times" if args.scrape_metrics else "")
          + (f", writers pinned to CPU {sorted(args.writer_cpus)}" if args.writer_cpus else ""))
    print("| measure | value |")
    print("|---|---:|")
    print(f"| frames written | {total:,} |")
    print(f"| frames delivered | {received:,} ({received / max(total, 1):.1%}) |")
    print(f"| frames lost (seq gaps + undelivered) | {gaps + total - received:,} |")
    print(f"| delivered frames/s (over the write period) | {received / elapsed:,.0f} |")
    print(f"| latency write to receive p50 / p99 / max | {np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f}"
          f" / {lat.max():.1f} ms |")
    print(f"| agent CPU | {cpu / elapsed:.1%} of one core |")
    mib = total * frame_size(args.dp) / FLUSH
    print(f"| synthetic Hashpipe (writer threads in this process) CPU | {writers_cpu / elapsed:.1%} of one core, "
          f"{writers_cpu / mib * 1e3:.2f} ms per MiB written |")
    slow = sum(1 for log in logs.values() for _, end, began in log if end - began > 10e6)
    print(f"| writes that took over 10 ms (writer starved of CPU or stalled) | {slow:,} of "
          f"{sum(map(len, logs.values())):,} |")
    print(f"| agent: checkpoint writes / previews encoded / loop rounds / messages, per second | "
          f"{counters['checkpoint_writes'] / elapsed:,.1f} / {counters['previews_encoded'] / elapsed:,.1f} / "
          f"{counters['loop_rounds'] / elapsed:,.0f} / {counters['messages'] / elapsed:,.0f} |")
    print(f"| agent: times frames waited for a checkpoint | {counters['checkpoint_waits']:,} |")
    if idle_cpu is not None:
        print(f"| agent CPU idle (nothing written, {args.idle_seconds:g} s) | {idle_cpu:.2%} of one core |")
    if reference is not None:
        print(f"| reference: minimal relay (inotify, read, 1 ZMQ message per read) CPU, same writes | "
              f"{reference[0]:.1%} of one core ({reference[1]:,} messages, {reference[2]:,} received) |")
    print(f"| reference: raw read of the same files | {raw_read:,.0f} frames/s |")
    print(f"| reference: raw ZMQ PUB/SUB, 1000-frame messages | {raw_zmq:,.0f} frames/s |")


if __name__ == "__main__":
    main()
