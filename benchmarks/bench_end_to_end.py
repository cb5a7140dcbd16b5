"""End to end: synthetic Hashpipe -> PFF files -> agent -> ZMQ -> writer -> HDF5, next to the raw limits.

Usage: .venv/bin/python benchmarks/bench_end_to_end.py [--modules 2] [--rate-hz 10000] [--ph-rate-hz 1000]
                                                       [--seconds 10] [--tmp-dir /dev/shm]

Per module a thread appends real Lick img16 frames at --rate-hz and ph256 frames at --ph-rate-hz into
data_dir/module_N/obs_*/ in the flushes of Hashpipe's stdio buffers (HASHPIPE.md: 1 MiB for images, libc's default
4 KiB for ph256), logging each flush's time. The agent
and the writer run as subprocesses (configs in Redis, requests over RabbitMQ); an open-ended `write` records
everything; a subscriber in its own process counts what the stream delivers. Latency to the stream: arrival -
time of the flush that completed a message's last frame. Latency to the HDF5 row: a SWMR reader in its own
process opens the recording's live files (`*.part`, parts too) and reads every stream's `counts` every 20 ms, as a
user's reader would; a flush's frames count as in the file when the reader first sees that many rows of their
stream (the time a row became visible to readers). CPU per service from /proc. Raw limits of the same machine in the
same run: file read, ZMQ PUB/SUB loopback, h5py batched append. Needs Redis and RabbitMQ.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from bench_agent import subscriber, zmq_reference
from bench_common import cpu_seconds, start_service
from bench_writer import raw_h5py_rate

import std_daq_service
from std_daq_service.broker import RequestCaller
from std_daq_service.config import connect_redis
from std_daq_service.pff import PffReader
from std_daq_service.protocol import InitHpIoRequest, StreamRequest, WriteRequest

SAMPLES = Path(std_daq_service.__file__).parent / "sample_data"
RUN = "obs_Bench.start_2026-11-23T00:00:00Z.runtype_bench.pffd"


def source_frames(dp: str) -> bytes:
    with PffReader(next(SAMPLES.glob(f"*/*/*dp_{dp}*module_1*.pff"))) as reader:
        return reader.block().raw.tobytes()


FLUSH_BYTES = {"img16": 1 << 20, "ph256": 4096}
"""Hashpipe's stdio buffer per data product: `setvbuf` 1 MiB for image files, libc's default for ph256."""


def hashpipe(path: Path, source: bytes, frame_size: int, rate_hz: float, seconds: float, log: list,
             flush_bytes: int) -> None:
    """Append `source` frames at `rate_hz` in `flush_bytes` flushes; log (frames written, time_ns) per flush."""
    per_flush = max(1, flush_bytes // frame_size)
    looped = source * (per_flush // (len(source) // frame_size) + 2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    n, start = 0, time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            due = (n + per_flush) / rate_hz - (time.monotonic() - start)
            if due > 0:
                time.sleep(min(due, 0.01))
                continue
            offset = (n % (len(source) // frame_size)) * frame_size
            os.write(fd, looped[offset : offset + per_flush * frame_size])
            n += per_flush
            log.append((n, time.time_ns()))
    finally:
        os.close(fd)


def file_watcher(out_dir: str, done, results, period_s: float = 0.02) -> None:
    """Run in a child process: read the live files' `counts` like a SWMR reader every `period_s`; report, per stream
    (`<module>/<dp>`), (time_ns, rows visible over all parts) whenever that grows."""
    import h5py
    import hdf5plugin  # noqa: F401  (the recording is bitshuffle/LZ4)

    files: dict[Path, tuple[h5py.File, dict[str, h5py.Dataset]]] = {}
    rows: dict[tuple[Path, str], int] = {}
    seen: dict[str, list[tuple[int, int]]] = {}
    while True:
        finished = done.is_set()
        for live in Path(out_dir).glob("*.part"):
            if live not in files:
                try:
                    f = h5py.File(live, "r", swmr=True, libver="latest")
                except OSError:  # not in SWMR mode yet
                    continue
                counts = {f"{m.removeprefix('module_')}/{dp}": f[m][dp]["counts"]
                          for m in f if m.startswith("module_") for dp in f[m]}
                files[live] = (f, counts)
        for live, (f, counts) in list(files.items()):
            closed = not live.exists()  # renamed: what it holds now is final
            now = time.time_ns()
            for stream, dataset in counts.items():
                dataset.refresh()
                n = int(dataset[()]["n_frames"])
                if n > rows.get((live, stream), 0):
                    rows[(live, stream)] = n
                    total = sum(v for (_, s), v in rows.items() if s == stream)
                    seen.setdefault(stream, []).append((total, now))
            if closed:
                f.close()
                del files[live]
        if finished:
            break
        time.sleep(period_s)
    for f, _ in files.values():
        f.close()
    results.put(seen)


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    a = np.array(values)
    return f"{np.percentile(a, 50):.1f} / {np.percentile(a, 99):.1f} / {a.max():.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", type=int, default=2)
    parser.add_argument("--rate-hz", type=float, default=10000, help="img16 frames/s per module")
    parser.add_argument("--ph-rate-hz", type=float, default=1000, help="ph256 frames/s per module (0: none)")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--tmp-dir", default=None, help="where data and output go (default $TMPDIR or /tmp)")
    args = parser.parse_args()
    redis = connect_redis()
    tag = uuid.uuid4().hex[:6]
    agent_name, writer_name = f"bench.{tag}.hp_io_agent", f"bench.{tag}.writer"
    streams = [("img16", args.rate_hz)] + ([("ph256", args.ph_rate_hz)] if args.ph_rate_hz else [])
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        data_dir, out_dir = Path(tmp) / "data", Path(tmp) / "out"
        data_dir.mkdir()
        processes = []
        try:
            agent = start_service("hp_io_agent", agent_name, {"data_bind": "tcp://127.0.0.1:*",
                                                              "preview_bind": "tcp://127.0.0.1:*"}, redis)
            processes.append(agent)
            with RequestCaller(None, "bench-e2e") as caller:
                assert caller.call(agent_name, InitHpIoRequest(data_dir=str(data_dir)), 20).ok
                endpoint = caller.call(agent_name, StreamRequest(), 20).finals[agent_name].result["endpoints"]["data"]
                writer = start_service("writer", writer_name, {
                    "agents": [{"name": agent_name, "data": endpoint}], "output_root": str(out_dir),
                    "compression": "bitshuffle_lz4"}, redis)
                processes.append(writer)
                ready, done, results = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
                child = multiprocessing.Process(target=subscriber, args=(endpoint, "img16", ready, done, results))
                child.start()
                ready.wait(10)
                rows_seen = multiprocessing.Queue()
                watcher = multiprocessing.Process(target=file_watcher, args=(str(out_dir), done, rows_seen),
                                                  daemon=True)
                watcher.start()
                progress: list[tuple[float, dict]] = []

                def on_status(status) -> None:
                    if status.action == "request_progress":
                        progress.append((time.time_ns(), status.result["streams"]))

                request_id = caller.publish(writer_name, WriteRequest(output_file="e2e.h5", timeout_seconds=60))
                caller.wait(request_id, [writer_name], 10, until_action="request_start")
                time.sleep(0.5)  # the subscriber's and writer's subscriptions settle
                logs: dict[tuple[int, str], list] = {}
                threads = []
                for m in range(1, args.modules + 1):
                    run_dir = data_dir / f"module_{m}" / RUN
                    run_dir.mkdir(parents=True)
                    for dp, rate in streams:
                        source = source_frames(dp)
                        frame_size = 2540 if dp == "img16" else 636
                        log = logs[(m, dp)] = []
                        path = run_dir / f"start_2026-11-23T00:00:00Z.dp_{dp}.bpp_2.module_{m}.seqno_0.pff"
                        threads.append(threading.Thread(target=hashpipe, args=(path, source, frame_size, rate,
                                                                                args.seconds, log, FLUSH_BYTES[dp])))
                budget = {"agent": processes[0].pid, "writer": processes[1].pid, "synthetic Hashpipe (this process)":
                          os.getpid(), "stream subscriber": child.pid, "SWMR reader": watcher.pid}
                cpu0 = {name: cpu_seconds(pid) for name, pid in budget.items()}
                t0, t0_ns = time.monotonic(), time.time_ns()
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads):
                    caller.wait(request_id, [writer_name], 0.2, on_status)
                written = sum(log[-1][0] for log in logs.values() if log)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    caller.wait(request_id, [writer_name], 0.3, on_status)
                    rows = sum(s["rows_in_file"] for s in progress[-1][1].values()) if progress else 0
                    if rows >= written:
                        break
                elapsed = time.monotonic() - t0
                used = {name: cpu_seconds(pid) - cpu0[name] for name, pid in budget.items()}
                caller.kill(writer_name, request_id)
                final = caller.wait(request_id, [writer_name], 30).finals[writer_name]
                done.set()
                received, gaps, arrivals = results.get(timeout=60)
                child.join(10)
                visible = rows_seen.get(timeout=60)
                watcher.join(10)
        finally:
            for process in processes:
                process.terminate()
                process.wait(20)
            redis.delete(f"config.{agent_name}", f"config.{writer_name}")
        stream_latency = []
        for module_id, seq_last, arrival in arrivals:
            log = logs[(module_id, "img16")]
            index = bisect.bisect_left(log, (seq_last + 1, 0))
            if index < len(log):
                stream_latency.append((arrival - log[index][1]) / 1e6)
        row_latency: dict[str, list[float]] = {"all": [], "img16": [], "ph256": [], "after the first 2 s": []}
        never_seen = 0
        for (module_id, dp), log in logs.items():
            seen = visible.get(f"{module_id}/{dp}", [])
            for n, written_at in log:
                index = bisect.bisect_left(seen, (n, 0))
                if index == len(seen):
                    never_seen += 1
                    continue
                lag = (seen[index][1] - written_at) / 1e6
                for key in ("all", dp) + (("after the first 2 s",) if written_at - t0_ns > 2e9 else ()):
                    row_latency[key].append(lag)
        in_file = final.result["frames"]
        images = np.frombuffer(source_frames("img16"), dtype=np.uint8).reshape(-1, 2540)[:, 492:].copy()
        images = images.view("<u2").reshape(-1, 32, 32)
        raw_h5, _ = raw_h5py_rate(images[:1000], 200_000, "bitshuffle_lz4", Path(tmp))
        start = time.perf_counter()
        total_bytes = 0
        for path in data_dir.rglob("*.pff"):
            with open(path, "rb") as f:
                while chunk := f.read(16 << 20):
                    total_bytes += len(chunk)
        raw_read = total_bytes / 2540 / (time.perf_counter() - start)
    raw_zmq = zmq_reference()
    img_written = sum(log[-1][0] for (m, dp), log in logs.items() if dp == "img16" and log)
    print(f"{args.modules} modules x (img16 at {args.rate_hz:g} Hz" +
          (f" + ph256 at {args.ph_rate_hz:g} Hz" if args.ph_rate_hz else "") + f"), {args.seconds:g} s, "
          f"writer compression bitshuffle_lz4, data in {args.tmp_dir or tempfile.gettempdir()}")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| frames written (all streams) | {written:,} |")
    print(f"| img16 frames delivered to a stream subscriber | {received:,} of {img_written:,} (seq gaps {gaps}) |")
    print(f"| frames in the HDF5 file | {in_file:,} of {written:,} (missing_frames {final.result['missing_frames']}) |")
    print(f"| mean frames/s into the file (writes + drain) | {in_file / elapsed:,.0f} |")
    print(f"| the write's warnings | {'; '.join(final.result['warnings']) or 'none'} |")
    print(f"| latency write -> stream receive, img16 p50 / p99 / max | {percentiles(stream_latency)} |")
    for key, lags in row_latency.items():
        lag = percentiles(lags) if in_file == written else "not measurable: rows are matched by count"
        print(f"| latency write -> row visible to a SWMR reader (20 ms polls), {key}: p50 / p99 / max | {lag} |")
    print(f"| flushes whose rows a reader never saw | {never_seen} |")
    agent_cpu, writer_cpu = used["agent"], used["writer"]
    print(f"| CPU agent / writer, from the first write until the file holds every frame (or 30 s after the last "
          f"write) | {agent_cpu / elapsed:.0%} / {writer_cpu / elapsed:.0%} of one core over {elapsed:.1f} s |")
    print(f"| CPU seconds per million frames written, agent / writer | {agent_cpu / written * 1e6:.1f} / "
          f"{writer_cpu / written * 1e6:.1f} |")
    print(f"| CPU of every process over that span, % of one core (the machine has {os.cpu_count()}) | " +
          ", ".join(f"{name} {seconds / elapsed:.0%}" for name, seconds in used.items()) +
          f"; all {sum(used.values()) / elapsed:.0%} |")
    print(f"| raw: file read | {raw_read:,.0f} img16 frames/s |")
    print(f"| raw: ZMQ PUB/SUB loopback, 1000-frame messages | {raw_zmq:,.0f} frames/s |")
    print(f"| raw: h5py batched append, bitshuffle_lz4 | {raw_h5:,.0f} frames/s |")


if __name__ == "__main__":
    main()
