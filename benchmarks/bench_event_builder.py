"""Event builder throughput and latency: two ph256 streams with injected coincidences, next to a raw sorted merge.

Usage: .venv/bin/python benchmarks/bench_event_builder.py [--rates 2000 10000 50000] [--seconds 10]

Two PUB sockets in this process play two agents (modules 1 and 3, different domes): every --batch-ms they
send one pre-encoded ph256 message per module holding the random hits of that interval (Poisson, --rate per
module) plus injected coincidences (--events-hz, module 3 300 ns after module 1); WR times follow this
process's clock, so the frames are "live". The builder (subprocess, config in Redis, max_latency_ms
--budget-ms) publishes events; a SUB socket here counts them and takes latency = arrival of the event -
WR time of its latest member (the reorder budget, batching and transport included). CPU is the builder's
(from /proc). In the same run, the same timestamps go through (a) a raw numpy sorted merge (concatenate,
argsort, one searchsorted for the window) and (b) the builder's own matching code (`group_hits`, `find_events`)
offline, for hits/s without transport. Needs Redis and RabbitMQ.
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
import zmq
from bench_common import cpu_seconds, start_service

from std_daq_service.broker import RequestCaller
from std_daq_service.config import connect_redis
from std_daq_service.event_builder.coincidence import MatchRules, find_events, group_hits
from std_daq_service.protocol import EVENT_TOPIC, StatusRequest, decode_event, encode_frames

WINDOW_NS = 1000


def schedule(rate_hz: float, events_hz: float, seconds: float, rng) -> dict[int, np.ndarray]:
    """Hit offsets (ns from the start) per module: Poisson randoms plus the injected coincidences."""
    injected = np.sort(rng.uniform(0, seconds * 1e9, int(events_hz * seconds))).astype(np.int64)
    return {m: np.sort(np.concatenate((rng.uniform(0, seconds * 1e9, int(rate_hz * seconds)).astype(np.int64),
                                       injected + (300 if m == 3 else 0)))) for m in (1, 3)}


def batch_message(module_id: int, times: np.ndarray, seq0: int) -> list[bytes]:
    n = len(times)
    images = np.zeros((n, 16, 16), dtype="<i2")
    images[:, 8, 8] = 100
    return encode_frames(source=f"bench.{module_id}.hp_io_agent", origin="file", module_id=module_id, dp="ph256",
                         shape=(16, 16), run="obs_bench", file=None, seqno=0, frame_number=np.arange(seq0, seq0 + n),
                         seq=np.arange(seq0, seq0 + n), wr_timestamp_ns=times, host_timestamp_ns=times,
                         pff_fields={"quabo_num": np.zeros(n, np.int64)}, image_bytes=images.tobytes())


def raw_merge(offsets: dict[int, np.ndarray]) -> tuple[float, int]:
    """Seconds of a bare sorted merge with a window lookup, and the pairs it sees."""
    began = time.perf_counter()
    times = np.concatenate(list(offsets.values()))
    modules = np.repeat(list(offsets), [len(v) for v in offsets.values()])
    order = np.argsort(times, kind="stable")
    t, m = times[order], modules[order]
    end = np.searchsorted(t, t + WINDOW_NS, side="right")
    nxt = np.minimum(np.arange(len(t)) + 1, len(t) - 1)
    pairs = int(np.count_nonzero((end > np.arange(len(t)) + 1) & (m[nxt] != m)))
    return time.perf_counter() - began, pairs


def builder_matching(offsets: dict[int, np.ndarray]) -> tuple[float, int]:
    """Seconds of the builder's grouping and matching over the same timestamps, and the events."""
    began = time.perf_counter()
    times = np.concatenate(list(offsets.values()))
    modules = np.repeat(list(offsets), [len(v) for v in offsets.values()])
    hits = group_hits(modules, times, 100)
    events = find_events(hits.time_ns, hits.module, MatchRules(WINDOW_NS, domes={1: "a", 3: "b"}))
    return time.perf_counter() - began, len(events)


def run(rate_hz: float, args, redis) -> dict:
    rng = np.random.default_rng(16)
    offsets = schedule(rate_hz, args.events_hz, args.seconds, rng)
    context = zmq.Context.instance()
    pubs = {}
    for m in offsets:
        pubs[m] = context.socket(zmq.PUB)
        pubs[m].setsockopt(zmq.SNDHWM, 0)
        pubs[m].bind("tcp://127.0.0.1:*")
    name = f"bench.{uuid.uuid4().hex[:6]}.event_builder"
    config = {"agents": [{"name": f"bench.{m}.hp_io_agent", "data": pubs[m].getsockopt_string(zmq.LAST_ENDPOINT)}
                         for m in offsets],
              "events_bind": "tcp://127.0.0.1:*", "coincidence_window_ns": WINDOW_NS, "domes": {1: "a", 3: "b"},
              "max_latency_ms": args.budget_ms}
    process = start_service("event_builder", name, config, redis)
    try:
        endpoint = redis.hget(f"status.{name}", "events_endpoint")
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC)
        time.sleep(1.0)  # slow joiners: let the SUB sockets connect before the first frame
        cpu0, t_start = cpu_seconds(process.pid), time.time_ns()
        sent = dict.fromkeys(offsets, 0)
        latencies, events = [], 0
        step_ns = int(args.batch_ms * 1e6)
        horizon = 0
        while horizon < args.seconds * 1e9:
            horizon = min(time.time_ns() - t_start, int(args.seconds * 1e9))
            for m, times in offsets.items():
                stop = int(np.searchsorted(times, horizon, side="right"))
                if stop > sent[m]:
                    pubs[m].send_multipart(batch_message(m, t_start + times[sent[m] : stop], sent[m]))
                    sent[m] = stop
            deadline = time.monotonic() + step_ns / 1e9
            while sub.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                event = decode_event(sub.recv_multipart())
                events += 1
                latencies.append((time.time_ns() - max(m.wr_timestamp_ns for m in event.header.members)) / 1e6)
        wall = (time.time_ns() - t_start) / 1e9
        cpu = (cpu_seconds(process.pid) - cpu0) / wall
        drain_until = time.monotonic() + args.budget_ms / 1000 * 3 + 2
        while time.monotonic() < drain_until:
            if sub.poll(100):
                event = decode_event(sub.recv_multipart())
                events += 1
                latencies.append((time.time_ns() - max(m.wr_timestamp_ns for m in event.header.members)) / 1e6)
        with RequestCaller(None, "bench-event-builder") as caller:
            status = caller.call(name, StatusRequest(), 10).finals[name].result
        sub.close()
    finally:
        process.terminate()
        process.wait(20)
        for pub in pubs.values():
            pub.close()
    merge_s, pairs = raw_merge(offsets)
    match_s, offline_events = builder_matching(offsets)
    n_hits = sum(len(v) for v in offsets.values())
    return {"rate_per_module": rate_hz, "hits": n_hits, "hits_per_s": n_hits / wall,
            "frames_received": sum(status["frames_received"].values()), "events": events,
            "offline_events": offline_events, "events_per_s": events / wall, "late": status["late_frames"],
            "lost": status["lost_frames"],
            "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "latency_p99_ms": float(np.percentile(latencies, 99)) if latencies else None,
            "builder_latency": status["latency_ms"], "cpu": cpu,
            "raw_merge_hits_per_s": n_hits / merge_s, "raw_pairs": pairs, "matching_hits_per_s": n_hits / match_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[2000, 10000, 50000], help="hits/s per module")
    parser.add_argument("--events-hz", type=float, default=100.0, help="injected coincidences per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-ms", type=float, default=10.0, help="one message per module this often")
    parser.add_argument("--budget-ms", type=float, default=200.0, help="the builder's max_latency_ms")
    args = parser.parse_args()
    redis = connect_redis()
    print("| hits/s per module | hits sent | received (seq gaps) | events (offline) | events/s | late "
          "| latency p50 / p99 (ms, WR time to event) | builder CPU | matching code offline, hits/s "
          "| raw sorted merge, hits/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rate in args.rates:
        r = run(rate, args, redis)
        print(f"| {rate:,.0f} | {r['hits']:,} | {r['frames_received']:,} ({r['lost']:,}) "
              f"| {r['events']:,} ({r['offline_events']:,}) | {r['events_per_s']:,.0f} | {r['late']} "
              f"| {r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f} | {r['cpu']:.0%} "
              f"| {r['matching_hits_per_s']:,.0f} | {r['raw_merge_hits_per_s']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
