"""Per-block cost of a small block (1..8 frames): the row-by-row path next to the vectorised one, in one run.

Usage: .venv/bin/python benchmarks/bench_small_blocks.py [--blocks 3000] [--rounds 5] [--frames 1 2 3 8]

Each block is what the agent does for one small write of real Lick frames: the scanner finds the frames in a
buffer holding just them, checks their headers and decodes them, the block's timestamps are derived and the
frame message encoded. The same-run reference is the same blocks through the vectorised path (blocks of every
size take it when `SMALL_BLOCK_ROWS` is 0); rounds of both alternate and the best round of each is reported,
with a check that both paths encode byte-identical messages.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import std_daq_service
from std_daq_service.pff import FrameScanner, PffReader, data_product, frame_block, header, timestamps
from std_daq_service.protocol import encode_frames

_SWITCHED = (header, frame_block, timestamps)
"""Modules that choose their path by `SMALL_BLOCK_ROWS`."""
_ROW_BY_ROW = header.SMALL_BLOCK_ROWS


def use_path(small: bool) -> None:
    """Blocks of up to `_ROW_BY_ROW` frames take the row-by-row path (small), or every block the vectorised one."""
    for module in _SWITCHED:
        module.SMALL_BLOCK_ROWS = _ROW_BY_ROW if small else 0


def real_frames(dp: str) -> bytes:
    path = next((Path(std_daq_service.__file__).parent / "sample_data").glob(f"*/*/*dp_{dp}*module_1*.pff"))
    with PffReader(path) as reader:
        return reader.block().raw.tobytes()


def handle(scanner: FrameScanner, buf: np.ndarray, seq: int) -> list[bytes]:
    """One small write as the agent handles it: scan, check, decode, time and encode its frames."""
    block = scanner.step(buf).block
    assert block is not None and len(block) * block.frame_size == len(buf)
    return encode_frames(
        source="bench", origin="file", module_id=1, dp=block.dp.name, shape=block.dp.shape, run="run", file="f.pff",
        seqno=0, frame_number=block.frame_numbers, seq=np.arange(seq, seq + len(block), dtype=np.int64),
        wr_timestamp_ns=block.wr_timestamp_ns, host_timestamp_ns=block.host_timestamp_ns, pff_fields=block.fields,
        image_bytes=block.image_bytes)


def run(dp: str, n: int, blocks: int, small: bool) -> tuple[float, list[list[bytes]]]:
    """Seconds per block, and the messages of the first blocks (to compare the paths)."""
    use_path(small)
    product = data_product(dp)
    data = real_frames(dp)
    frames = len(data) // product.frame_size
    bufs = [np.frombuffer(data, np.uint8, n * product.frame_size, (k * n % (frames - n)) * product.frame_size)
            for k in range(64)]
    scanner = FrameScanner(product)
    scanner.step(bufs[0])  # the layout is learnt once per file
    messages = [handle(scanner, buf, 0) for buf in bufs[:8]]
    start = time.perf_counter()
    for k in range(blocks):
        handle(scanner, bufs[k % len(bufs)], k * n)
    return (time.perf_counter() - start) / blocks, messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=3000, help="blocks per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 2, 3, 8], help="frames per block")
    args = parser.parse_args()
    print(f"{'dp':6} {'frames':>6} {'row-by-row us':>14} {'vectorised us':>14} {'ratio':>6}  identical")
    for dp in ("ph256", "img16"):
        for n in args.frames:
            best = {True: float("inf"), False: float("inf")}
            messages = {}
            for _ in range(args.rounds):
                for small in (True, False):
                    seconds, messages[small] = run(dp, n, args.blocks, small)
                    best[small] = min(best[small], seconds)
            same = messages[True] == messages[False]
            print(f"{dp:6} {n:6d} {best[True] * 1e6:14.1f} {best[False] * 1e6:14.1f} "
                  f"{best[True] / best[False]:6.2f}  {same}")
    use_path(True)


if __name__ == "__main__":
    main()
