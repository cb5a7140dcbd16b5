"""Load: concurrent writes and many stream clients against one simulating agent; what each got, in numbers.

Usage: .venv/bin/python benchmarks/bench_load.py [--writes 20] [--clients 50] [--seconds 12] [--rate-hz 2000]

The agent (a subprocess) simulates a run at --rate-hz img16 and a quarter of that ph256 per module, with
previews every 0.2 s; the writer (a subprocess) runs --writes writes of 4000 frames per stream at once; a
child process holds --clients subscribers for --seconds, half on the full-rate data socket and half on the
preview socket, half of each subscribed to img16 only. Printed: writes that succeeded and their time, frames
missing from the files, frames and seq gaps per full-rate client, frames per preview client, and what the
agent published. tests/integration/test_load.py asserts the behaviour of the same load. Needs Redis and RabbitMQ.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid

from bench_common import mixed_subscribers, start_service

from std_daq_service.broker import RequestCaller
from std_daq_service.config import connect_redis
from std_daq_service.protocol import (
    FrameBatch,
    InitSimRequest,
    StatusRequest,
    StreamRequest,
    WriteRequest,
)


def clients(data: str, preview: str, n: int, seconds: float, results) -> None:
    """Run in a child process: `n` subscribers; report (frames, seq gaps) of each."""
    frames, gaps, next_seq = [0] * n, [0] * n, [{} for _ in range(n)]

    def count(i: int, batch: FrameBatch) -> None:
        key = (batch.module_id, batch.dp)
        if i % 2 == 0 and key in next_seq[i]:
            gaps[i] += int(batch.seq[0]) - next_seq[i][key]
        next_seq[i][key] = int(batch.seq[-1]) + 1
        frames[i] += len(batch)

    mixed_subscribers(data, preview, n, seconds, count)
    results.put((frames, gaps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--rate-hz", type=float, default=2000)
    args = parser.parse_args()
    redis = connect_redis()
    tag = uuid.uuid4().hex[:6]
    agent_name, writer_name = f"bench.{tag}.hp_io_agent", f"bench.{tag}.writer"
    processes = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            processes.append(start_service("hp_io_agent", agent_name, {
                "data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*",
                "sim_data_dir": f"{tmp}/sim", "min_update_interval_seconds": 0.05}, redis))
            with RequestCaller(None, "bench-load") as caller:
                endpoints = caller.call(agent_name, StreamRequest(), 20).finals[agent_name].result["endpoints"]
                assert caller.call(agent_name, InitSimRequest(movie_rate_hz=args.rate_hz,
                                                              pulse_height_rate_hz=args.rate_hz / 4,
                                                              update_interval_seconds=0.2), 20).ok
                processes.append(start_service("writer", writer_name, {
                    "agents": [{"name": agent_name, "data": endpoints["data"]}], "output_root": f"{tmp}/out",
                    "ring_buffer_seconds": 6, "max_concurrent_writes": args.writes}, redis))
                results = multiprocessing.Queue()
                child = multiprocessing.Process(target=clients, args=(endpoints["data"], endpoints["preview"],
                                                                      args.clients, args.seconds, results))
                child.start()
                t0 = time.monotonic()
                ids = [caller.publish(writer_name, WriteRequest(output_file=f"load_{i}.h5", n_images=4000,
                                                                timeout_seconds=30)) for i in range(args.writes)]
                finals = [caller.wait(rid, [writer_name], 120).finals.get(writer_name) for rid in ids]
                writes_s = time.monotonic() - t0
                status = caller.call(agent_name, StatusRequest(), 20).finals[agent_name].result
                frames, gaps = results.get(timeout=args.seconds + 60)
                child.join(10)
        finally:
            for process in processes:
                process.terminate()
                process.wait(20)
            redis.delete(*(f"{kind}.{name}" for kind in ("config", "status", "checkpoint")
                           for name in (agent_name, writer_name)))
    done = [f for f in finals if f is not None and f.action == "request_success"]
    full, preview = frames[0::2], frames[1::2]
    published = status["modules"]["1"]["img16"]["frames_published"]
    print(f"{args.writes} writes of 4000 frames per stream, {args.clients} clients for {args.seconds:g} s, "
          f"simulated img16 at {args.rate_hz:g} Hz")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| writes succeeded | {len(done)} of {args.writes} in {writes_s:.1f} s |")
    print(f"| frames missing from the files (seq gaps) | {sum(f.result['missing_frames'] for f in done):,} |")
    print(f"| full-rate client frames min / max | {min(full):,} / {max(full):,} |")
    print(f"| full-rate client seq gaps max / total | {max(gaps[0::2]):,} / {sum(gaps[0::2]):,} |")
    print(f"| preview client frames min / max | {min(preview):,} / {max(preview):,} |")
    print(f"| img16 frames of module 1 published by the agent | {published:,} |")


if __name__ == "__main__":
    main()
