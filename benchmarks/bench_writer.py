"""Writer throughput: img16 frames arriving on ZMQ to rows in the HDF5 file, next to raw batched h5py appends.

Usage: .venv/bin/python benchmarks/bench_writer.py [--frames 200000] [--compression none bitshuffle_lz4 ...]
       [--swmr on off] [--recording-only [--repeat 5]]

A PUB socket in this process plays the agent: it sends one pre-encoded 1000-frame message of real Lick img16 at
--rate-hz (non-blocking; what the writer cannot take is dropped and not counted). The writer
(subprocess, config in Redis) gets a `write` request for --frames img16 frames of module 1; its rate is
frames / (request_success - request_start). The reference appends the same frames to an h5py dataset in
batches of 1000 with the same compression and chunks, in this process, in the same run. The compression ratio
is measured on the real Lick img16 frames (the full file of ../shared/data when present, else the excerpt).
`--swmr on off` runs each compression with the writer's files in SWMR mode (the default) and without.
Needs Redis and RabbitMQ.

`--recording-only` measures the writer's file code alone, in this process, without ZMQ or services: the same
decoded 1000-frame messages go to `H5Recording.append` (a `flush()` every 50 messages, i.e. every 0.5 s at 100 k
frames/s; SWMR as --swmr says) and, alternating with it, to the plain batched h5py append above; --repeat runs of
each, medians and the ratio of the medians reported. No Redis or RabbitMQ needed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import zmq
from bench_common import cpu_seconds, start_service

import std_daq_service
from std_daq_service.broker import RequestCaller
from std_daq_service.config import connect_redis
from std_daq_service.pff import PffReader
from std_daq_service.protocol import WriteRequest, decode_frames, encode_frames
from std_daq_service.writer.h5_recording import H5Recording, compression_options

EXCERPT = next((Path(std_daq_service.__file__).parent / "sample_data").glob("*/*/*dp_img16*.pff"))
SHARED = Path(os.environ.get("PANOSETI_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CHUNK_FRAMES = 256  # 512 KiB img16 chunks, as the writer makes them


def lick_frames() -> tuple[np.ndarray, str]:
    full = sorted(SHARED.glob("lick_2024-07-25/*/*dp_img16*.pff"))
    path = full[0] if full else EXCERPT
    with PffReader(path) as reader:
        return reader.block().images(), path.name


def message(images: np.ndarray) -> list[bytes]:
    with PffReader(EXCERPT) as reader:
        block = reader.block(0, len(images))
    return encode_frames(source="bench.local.hp_io_agent", origin="file", module_id=1, dp="img16",
                         shape=(32, 32), run="obs_Bench", file=EXCERPT.name, seqno=0,
                         frame_number=block.frame_numbers, seq=block.frame_numbers,
                         wr_timestamp_ns=block.wr_timestamp_ns, host_timestamp_ns=block.host_timestamp_ns,
                         pff_fields=block.fields, image_bytes=block.image_bytes)


def raw_h5py_rate(images: np.ndarray, n_frames: int, compression: str, directory: Path,
                  ratio: bool = True) -> tuple[float, float]:
    """(frames/s, compression ratio: of `images` in one go, unless not `ratio`) appending `images` repeatedly in
    batches of 1000."""
    path = directory / f"raw_{compression}.h5"
    batch = images[:1000]
    start = time.perf_counter()
    with h5py.File(path, "w") as f:
        data = f.create_dataset("data", shape=(0, 32, 32), maxshape=(None, 32, 32), dtype=batch.dtype,
                                chunks=(CHUNK_FRAMES, 32, 32), **compression_options(compression))
        for offset in range(0, n_frames, len(batch)):
            data.resize(offset + len(batch), axis=0)
            data[offset:] = batch
    rate = n_frames / (time.perf_counter() - start)
    path.unlink()
    if not ratio:
        return rate, 0.0
    ratio_path = directory / "ratio.h5"
    with h5py.File(ratio_path, "w") as f:
        f.create_dataset("data", data=images, chunks=(CHUNK_FRAMES, 32, 32), **compression_options(compression))
    compression_ratio = images.nbytes / ratio_path.stat().st_size
    ratio_path.unlink()
    return rate, compression_ratio


def recording_rate(parts: list[bytes], n_frames: int, compression: str, directory: Path, swmr: bool) -> float:
    """frames/s of `H5Recording` appending the decoded message `parts` until `n_frames`, flushing every 50
    messages."""
    path = directory / f"rec_{compression}.h5"
    batch = decode_frames([memoryview(p) for p in parts])
    start = time.perf_counter()
    with H5Recording(path, compression, {}, swmr=swmr, overwrite=True) as recording:
        for i in range(n_frames // len(batch)):
            recording.append("bench.local.hp_io_agent", batch, slice(None))
            if i % 50 == 49:
                recording.flush()
        recording.commit(True, "done")
    rate = n_frames // len(batch) * len(batch) / (time.perf_counter() - start)
    path.unlink()
    return rate


def recording_only(args: argparse.Namespace, parts: list[bytes]) -> None:
    same = decode_frames([memoryview(p) for p in parts]).images  # the very frames the recording gets
    print(f"recording alone (no ZMQ), img16, {args.frames:,} frames per run, median of {args.repeat} alternating "
          "runs each")
    print("| compression | SWMR | H5Recording frames/s | plain batched h5py frames/s | recording / plain | "
          "CPU µs per frame, recording / plain (all threads) |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for compression in args.compression:
            for swmr in args.swmr:
                recording, plain, cpu = [], [], {"recording": [], "plain": []}
                for _ in range(args.repeat):
                    cpu0 = time.process_time()
                    recording.append(recording_rate(parts, args.frames, compression, Path(tmp), swmr == "on"))
                    cpu1 = time.process_time()
                    plain.append(raw_h5py_rate(same, args.frames, compression, Path(tmp), ratio=False)[0])
                    cpu["recording"].append((cpu1 - cpu0) / args.frames * 1e6)
                    cpu["plain"].append((time.process_time() - cpu1) / args.frames * 1e6)
                rec, raw = float(np.median(recording)), float(np.median(plain))
                print(f"| {compression} | {swmr} | {rec:,.0f} | {raw:,.0f} | {rec / raw:.0%} | "
                      f"{np.median(cpu['recording']):.2f} / {np.median(cpu['plain']):.2f} |", flush=True)


def writer_rate(compression: str, n_frames: int, parts: list[bytes], directory: Path,
                rate_hz: float, swmr: bool = True) -> tuple[float, float]:
    """(frames/s recorded, CPU share of the writer while the stream runs and no write does)."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 50)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    agent, name = "bench.local.hp_io_agent", f"bench.{uuid.uuid4().hex[:6]}.writer"
    redis = connect_redis()
    writer = start_service("writer", name, {"agents": [{"name": agent, "data": f"tcp://127.0.0.1:{port}"}],
                                            "output_root": str(directory), "compression": compression,
                                            "swmr": swmr}, redis)
    stop = threading.Event()

    def publish() -> None:
        sent, start = 0, time.monotonic()
        while not stop.is_set():
            if rate_hz and sent >= (time.monotonic() - start) * rate_hz:
                time.sleep(0.001)
                continue
            try:
                pub.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                sent += 1000
            except zmq.Again:
                time.sleep(0.0005)

    sender = threading.Thread(target=publish)
    try:
        sender.start()
        cpu0 = cpu_seconds(writer.pid)
        time.sleep(3)  # streaming, no write running: what an idle writer costs
        idle_cpu = (cpu_seconds(writer.pid) - cpu0) / 3
        times = {}
        with RequestCaller(None, "bench-writer") as caller:
            request = WriteRequest(output_file=f"w_{compression}_{'swmr' if swmr else 'plain'}.h5", module_ids=[1],
                                   data_products=["img16"], n_images=n_frames, overwrite=True)
            result = caller.call(name, request, 600, on_status=lambda s: times.setdefault(s.action, time.monotonic()))
        final = result.finals[name]
        assert final.action == "request_success", final.message
        return n_frames / (times["request_success"] - times["request_start"]), idle_cpu
    finally:
        stop.set()
        if sender.is_alive():
            sender.join()
        pub.close(0)
        writer.terminate()
        writer.wait(30)
        redis.delete(f"config.{name}", f"status.{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--rate-hz", type=float, default=150_000,
                        help="frames/s offered (default 150000, 1.5x four img16 modules at 25 kHz); 0: flood")
    parser.add_argument("--compression", nargs="+", default=["none", "bitshuffle_lz4", "blosc_lz4", "gzip"])
    parser.add_argument("--swmr", nargs="+", choices=["on", "off"], default=["on"],
                        help="write files in SWMR mode (on, the writer's default) or not; both: on off")
    parser.add_argument("--recording-only", action="store_true",
                        help="H5Recording alone against plain h5py, in this process (no services)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each, with --recording-only")
    args = parser.parse_args()
    images, source = lick_frames()
    parts = message(images[:1000] if len(images) >= 1000 else images)
    if args.recording_only:
        recording_only(args, parts)
        return
    print(f"img16, {args.frames:,} frames per run; compression ratio on {len(images):,} frames of {source}")
    print("| compression | SWMR | writer frames/s | writer MB/s | raw h5py batched frames/s | writer / raw | ratio | "
          "idle writer CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for compression in args.compression:
            _, real_ratio = raw_h5py_rate(images, 1000, compression, Path(tmp))
            for swmr in args.swmr:
                raw, _ = raw_h5py_rate(images[:1000], args.frames, compression, Path(tmp))
                rate, idle_cpu = writer_rate(compression, args.frames, parts, Path(tmp), args.rate_hz, swmr == "on")
                print(f"| {compression} | {swmr} | {rate:,.0f} | {rate * 2048 / 1e6:,.0f} | {raw:,.0f} | "
                      f"{rate / raw:.0%} | {real_ratio:.2f} | {idle_cpu:.0%} |", flush=True)


if __name__ == "__main__":
    main()
