"""Blocks of up to SMALL_BLOCK_ROWS frames take a row-by-row path: its results are those of the vectorised path.

The vectorised reference for a few rows is the same rows at the start of a block too large for the row-by-row
path (every result is per row), so both paths run on the very same bytes: real frames, and real frames with odd
headers (10-digit `pkt_nsec`, quabos missing, clocks that disagree, early Hashpipe's widths, bytes the scanner
must reject in the numbers, in the fixed text or in the marker).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import SAMPLE_IMG16, SAMPLE_PH256_M1, SAMPLE_PH256_M3
from helpers.hashpipe import header_text, quabo_fields
from hypothesis import given, settings
from hypothesis import strategies as st

from std_daq_service.pff import FrameBlock, HeaderLayout, data_product, format_header, host_unix_ns, wr_unix_ns
from std_daq_service.pff.header import SMALL_BLOCK_ROWS
from std_daq_service.protocol import encode_frames

T0 = 1_721_882_092_779_007_488
BULK_ROWS = SMALL_BLOCK_ROWS + 1
INT64 = st.integers(-(2**63), 2**63 - 1)


def _rows(path, frame_size: int, n: int = 12) -> list[bytes]:
    data = path.read_bytes()
    return [data[i * frame_size : (i + 1) * frame_size] for i in range(n)]


def _made(dp: str, style: str = "file") -> list[bytes]:
    """Frames of Hashpipe's formats with odd values: a 10-digit pkt_nsec, WR and host a second and more apart,
    quabos missing (zeroed, so another quabo times the frame)."""
    image = bytes(data_product(dp).image_size)
    fields = [quabo_fields(T0 + k * 10**9 // 7, k) for k in range(6)]
    fields[1]["pkt_nsec"] += 10**9
    fields[2]["pkt_tai"] = (fields[2]["pkt_tai"] + 1) % 1024
    fields[3]["pkt_tai"] = (fields[3]["pkt_tai"] + 5) % 1024
    fields[4] = dict.fromkeys(fields[4], 0)
    return [header_text(dp, f, style) + image for f in fields]


def _three_quabos() -> list[bytes]:
    """img16 frames whose headers lack quabo_2 (its columns read as zeros)."""
    return [re.sub(rb',\s*"quabo_2": \{[^}]*\}', b"", row) for row in _made("img16")]


def _quabo_0_zeroed() -> list[bytes]:
    """img16 frames, every other one with quabo_0 zeroed (quabo_1 times it): blocks timed by two quabos."""
    image = bytes(data_product("img16").image_size)
    fields = [quabo_fields(T0 + k * 10**9 // 7, k) for k in range(6)]
    return [format_header({f"quabo_{q}": f for q in range(k % 2, 4)}) + image for k, f in enumerate(fields)]


IMG16 = _rows(SAMPLE_IMG16, 2540)
PH256 = _rows(SAMPLE_PH256_M1, 636) + _rows(SAMPLE_PH256_M3, 636)
SOURCES = {
    "img16": ("img16", IMG16),
    "ph256": ("ph256", PH256),
    "img16 made": ("img16", _made("img16")),
    "img16 snapshot": ("img16", _made("img16", "snapshot")),
    "img16 early": ("img16", _made("img16", "early")),
    "img16 three quabos": ("img16", _three_quabos()),
    "img16 quabo_0 zeroed": ("img16", _quabo_0_zeroed()),
    "ph256 made": ("ph256", _made("ph256")),
}
ODD_BYTES = b"0123456789 -x\n*{}\""


def _block(dp: str, rows: list[bytes], layout: HeaderLayout) -> FrameBlock:
    raw = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), -1)
    return FrameBlock(data_product(dp), raw, 40, layout)


def _results(block: FrameBlock) -> dict:
    """Everything the agent takes from a block."""
    return {"valid": block.valid_rows(), "text": block.header_layout.matches_text(block.headers_raw),
            "decoded": block.header_layout.decode(block.headers_raw), "timing": block.timing_fields,
            "wr": block.wr_timestamp_ns, "host": block.host_timestamp_ns}


def _message(block: FrameBlock, n: int) -> list[bytes]:
    """The frame message of the block's first n frames, from the columns of the whole block."""
    return encode_frames(
        source="s", origin="file", module_id=1, dp=block.dp.name, shape=block.dp.shape, run="r", file="f", seqno=0,
        frame_number=block.frame_numbers[:n], seq=block.frame_numbers[:n] + 7,
        wr_timestamp_ns=block.wr_timestamp_ns[:n], host_timestamp_ns=block.host_timestamp_ns[:n],
        pff_fields={k: v[:n] for k, v in block.fields.items()},
        image_bytes=block.raw[:n, block.header_size :].tobytes())


def _assert_same(small, bulk, n: int) -> None:
    """`small` (of n rows) equals the first n rows of `bulk`: values, dtypes and shapes."""
    if isinstance(small, dict):
        assert small.keys() == bulk.keys()
        for key in small:
            _assert_same(small[key], bulk[key], n)
    elif isinstance(small, tuple):
        for a, b in zip(small, bulk, strict=True):
            _assert_same(a, b, n)
    else:
        assert small.dtype == bulk.dtype and small.shape == bulk[:n].shape
        assert np.array_equal(small, bulk[:n])


def _check(dp: str, rows: list[bytes], example: bytes) -> None:
    layout = HeaderLayout(example[: len(example) - data_product(dp).image_size])
    small, bulk = _block(dp, rows, layout), _block(dp, (rows * BULK_ROWS)[:BULK_ROWS], layout)
    n = len(rows)
    _assert_same(_results(small), _results(bulk), n)
    assert _message(small, n) == _message(bulk, n)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_small_block_gives_what_the_vectorised_path_gives_for_the_same_rows(data):
    dp, pool = SOURCES[data.draw(st.sampled_from(sorted(SOURCES)), label="source")]
    picks = data.draw(st.lists(st.sampled_from(range(len(pool))), min_size=1, max_size=SMALL_BLOCK_ROWS))
    example = pool[picks[0]]
    size = len(example)
    rows = [pool[i] for i in picks]
    rows = [row for row in rows if len(row) == size]  # a 10-digit pkt_nsec makes a header of its own size
    header = size - data_product(dp).image_size
    for _ in range(data.draw(st.integers(0, 3), label="odd bytes")):
        which = data.draw(st.integers(0, len(rows) - 1))
        at = data.draw(st.integers(0, header - 1))
        byte = data.draw(st.sampled_from(ODD_BYTES))
        rows[which] = rows[which][:at] + bytes([byte]) + rows[which][at + 1 :]
    _check(dp, rows, example)


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("n", range(1, SMALL_BLOCK_ROWS + 1))
def test_every_small_block_size_gives_what_the_vectorised_path_gives(source, n):
    dp, pool = SOURCES[source]
    rows = [row for row in pool if len(row) == len(pool[0])]
    _check(dp, (rows * n)[:n], rows[0])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(INT64, INT64, INT64), min_size=1, max_size=SMALL_BLOCK_ROWS),
       st.sampled_from([0, 1, 37, 1023, 1024]))
def test_small_timestamp_vectors_give_what_the_vectorised_path_gives(rows, tai_offset):
    """Also at int64's limits, where the vectorised arithmetic wraps around."""
    tv_sec, tai, ns = (np.array(column, dtype=np.int64) for column in zip(*rows, strict=True))
    tai = np.where(np.arange(len(rows)) % 2 == 0, (tv_sec + tai_offset) % 1024, tai)  # clocks agreeing, or not
    n = len(rows)
    big = [np.resize(column, BULK_ROWS) for column in (tv_sec, tai, ns)]
    _assert_same(wr_unix_ns(tv_sec, tai, ns), wr_unix_ns(*big), n)
    _assert_same(host_unix_ns(tv_sec, ns), host_unix_ns(big[0], big[2]), n)
