"""PFF read/parse throughput next to the raw sequential read of the same file, measured in one run.

Usage: .venv/bin/python benchmarks/bench_pff.py [--frames N] [--repeat R]

Builds an img16 file of N frames from the embedded Lick excerpt (real headers and pixels), then
times, median of R runs, from the page cache:
  raw read          os.read of the whole file in 16 MiB chunks (the ceiling)
  reader, bulk      PffReader blocks: vectorised header decode + WR/host timestamps + image view
  tailer, bulk      PffTailer.read_new() over the finished file (validation + decode + timestamps)
  json per frame    json.loads of every header, for comparison
  tailer, early     PffTailer over the same frames in early Hashpipe's format (no field widths: the
                    header size changes from frame to frame, so every frame takes the slow path)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import std_daq_service
from std_daq_service.pff import PffReader, PffTailer, format_header

EXCERPT = next((Path(std_daq_service.__file__).parent / "sample_data").glob("*/*/*dp_img16*.pff"))


def make_file(directory: Path, n_frames: int) -> Path:
    with PffReader(EXCERPT) as reader:
        frames = reader.block().raw.tobytes()
        per = reader.n_frames
    path = directory / "start_2024-07-25T04:34:46Z.dp_img16.bpp_2.module_1.seqno_0.pff"
    with open(path, "wb") as f:
        for _ in range(n_frames // per):
            f.write(frames)
        f.write(frames[: (n_frames % per) * 2540])
    return path


def make_early_file(directory: Path, n_frames: int) -> Path:
    with PffReader(EXCERPT) as reader:
        block = reader.block()
        frames = b"".join(format_header(block.header(i), "early") + block.raw[i, block.header_size :].tobytes()
                          for i in range(len(block)))
        per = reader.n_frames
    path = directory / "start_2024-07-25T04:34:46Z.dp_img16.bpp_2.module_2.seqno_0.pff"
    with open(path, "wb") as f:
        for _ in range(max(1, n_frames // per)):
            f.write(frames)
    return path


def raw_read(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    total = 0
    while chunk := os.read(fd, 16 << 20):
        total += len(chunk)
    os.close(fd)
    return total // 2540


def reader_bulk(path: Path) -> int:
    n = 0
    with PffReader(path) as reader:
        for block in reader.iter_blocks(8192):
            decoded = (block.wr_timestamp_ns, block.host_timestamp_ns, block.images())
            n += len(decoded[2])
    return n


def tailer_bulk(path: Path) -> int:
    n = 0
    with PffTailer(path) as tailer:
        while (block := tailer.read_new()) is not None:
            decoded = (block.wr_timestamp_ns, block.host_timestamp_ns)
            n += len(decoded[0])
    return n


def json_per_frame(path: Path) -> int:
    n = 0
    with PffReader(path) as reader:
        headers = reader.block().headers_raw
        for row in headers:
            json.loads(row.tobytes()[:-3])
            n += 1
    return n


def measure(fn, path: Path, repeat: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        n = fn(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200_000, help="img16 frames in the test file (default 200000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; the median is shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_file(Path(tmp), args.frames)
        raw_read(path)  # warm the page cache
        rows = []
        for name, fn in (("raw read", raw_read), ("reader, bulk", reader_bulk), ("tailer, bulk", tailer_bulk),
                         ("json per frame", json_per_frame)):
            seconds, n = measure(fn, path, args.repeat)
            rows.append((name, n / seconds, n * 2540 / seconds / 1e6))
        if hasattr(std_daq_service.pff, "FrameScanner"):  # the code before the slow path existed cannot read these
            early = make_early_file(Path(tmp), args.frames // 20)
            seconds, n = measure(tailer_bulk, early, args.repeat)
            rows.append(("tailer, early format (slow path)", n / seconds, early.stat().st_size / seconds / 1e6))
    reference = rows[0][1]
    print(f"img16, {args.frames} frames ({args.frames * 2540 / 1e6:.0f} MB), median of {args.repeat} runs")
    print("| path | frames/s | MB/s | of raw read |")
    print("|---|---:|---:|---:|")
    for name, fps, mbps in rows:
        print(f"| {name} | {fps:,.0f} | {mbps:,.0f} | {fps / reference:.0%} |")


if __name__ == "__main__":
    main()
