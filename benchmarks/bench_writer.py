"""Writer throughput: img16 frames arriving on ZMQ to rows in the HDF5 file, next to raw batched h5py appends.

Usage: .venv/bin/python benchmarks/bench_writer.py [--frames 200000] [--compression none bitshuffle_lz4 ...]
       [--swmr on off]

A PUB socket in this process plays the agent: it sends one pre-encoded 1000-frame message of real Lick img16 at
--rate-hz (non-blocking; what the writer cannot take is dropped and not counted). The writer
(subprocess, config in Redis) gets a `write` request for --frames img16 frames of module 1; its rate is
frames / (request_success - request_start). The reference appends the same frames to an h5py dataset in
batches of 1000 with the same compression and chunks, in this process, in the same run. The compression ratio
is measured on the real Lick img16 frames (the full file of ../shared/data when present, else the excerpt).
`--swmr on off` runs each compression with the writer's files in SWMR mode (the default) and without.
Needs Redis and RabbitMQ.
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
from std_daq_service.protocol import WriteRequest, encode_frames
from std_daq_service.writer.h5_recording import compression_options

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


def raw_h5py_rate(images: np.ndarray, n_frames: int, compression: str, directory: Path) -> tuple[float, float]:
    """(frames/s, compression ratio) appending `images` repeatedly in batches of 1000."""
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
    ratio_path = directory / "ratio.h5"
    with h5py.File(ratio_path, "w") as f:
        f.create_dataset("data", data=images, chunks=(CHUNK_FRAMES, 32, 32), **compression_options(compression))
    ratio = images.nbytes / ratio_path.stat().st_size
    ratio_path.unlink()
    return rate, ratio


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
    args = parser.parse_args()
    images, source = lick_frames()
    parts = message(images[:1000] if len(images) >= 1000 else images)
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
