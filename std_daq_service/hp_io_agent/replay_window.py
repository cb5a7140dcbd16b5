"""Which frames of a stream's PFF files lie in a past time window, and the `seq` a replay gives them.

Files are chosen by the time of their first frame (a file holds frames from there until the next file's first
frame), with `MARGIN_NS` to spare; within a file the reader's time seek (host time, in file order) finds the frames
near the window, and each frame's own time (`frame_time_ns`: WR, else host, the writer's rule) decides.

The `seq` of a replayed frame: the one the live stream gave it, where this agent published it since its current
tracking began (`SeqIndex`); a frame the live stream never published gets the `seq` that continues the nearest
frame examined with a known one (counted backwards before it, forwards after it); a stream without any such frame
is numbered from 0 at the first frame examined (the first of its run when the window holds the whole run). So
`seq` is continuous across the seam of a replay and the live stream, and equal to the live `seq` wherever that is
known. Receivers that join a replay to the live stream rely on the frame's identity (run, seqno, frame_number),
which is exact in every case.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from std_daq_service.hp_io_agent.run_discovery import StreamFile
from std_daq_service.hp_io_agent.seq_index import SeqIndex
from std_daq_service.pff import HEADER_END, FrameBlock, PffError, PffReader, data_product
from std_daq_service.pff.frame_scanner import MAX_HEADER
from std_daq_service.protocol import frame_time_ns

MARGIN_NS = 2_000_000_000
"""WR and host time of a frame agree within a second where WR time is valid."""


@dataclass
class Piece:
    """The frames of one file near the window (`start` to `stop`, exclusive), the window's own among them.

    Attributes:
        start_ns, stop_ns: the window; `blocks` yields only frames whose time lies in it.
    """

    file: StreamFile
    reader: PffReader
    start: int
    stop: int
    start_ns: int
    stop_ns: int

    def __len__(self) -> int:
        return self.stop - self.start

    def blocks(self, size: int) -> Iterator[tuple[int, FrameBlock]]:
        """(offset in the piece, block) of the window's frames in file order, blocks of at most `size` frames.

        Frames are selected one by one by their time: pulse-height frames are not always in time order.
        """
        for block in _blocks_between(self.reader, self.start, self.stop, size):
            times = frame_time_ns(block.wr_timestamp_ns, block.host_timestamp_ns)
            inside = np.flatnonzero((times >= self.start_ns) & (times < self.stop_ns))
            if not len(inside):
                continue
            if len(inside) == len(block):  # the usual case: the block itself, its decoded headers reused
                yield block.first_frame_number - self.start, block
                continue
            breaks = np.flatnonzero(np.diff(inside) > 1) + 1
            for run in np.split(inside, breaks):
                offset = block.first_frame_number - self.start + int(run[0])
                yield offset, block[int(run[0]) : int(run[-1]) + 1]


def _blocks_between(reader: PffReader, start: int, stop: int, size: int) -> Iterator[FrameBlock]:
    for block in reader.iter_blocks(size):
        first = block.first_frame_number
        a, b = max(start, first), min(stop, first + len(block))
        if a < b:
            yield block[a - first : b - first]


def _first_time_ns(file: StreamFile) -> int | None:
    """Host time of the file's first frame (read from its first bytes), None if it has no whole frame."""
    product = data_product(file.dp)
    try:
        with open(file.path, "rb") as f:
            head = f.read(MAX_HEADER)
            end = head.find(HEADER_END)
            if not head.startswith(b"{") or end < 0:
                return None
            size = end + len(HEADER_END) + product.image_size
            frame = head + f.read(max(0, size - len(head)))
    except OSError:
        return None
    if len(frame) < size:
        return None
    try:
        block = FrameBlock(product, np.frombuffer(frame[:size], np.uint8).reshape(1, size))
        return int(block.host_timestamp_ns[0])
    except (PffError, ValueError):
        return None


def candidate_files(files: list[StreamFile], start_ns: int, stop_ns: int) -> list[StreamFile]:
    """The files of one stream (in stream order) that may hold frames of [start_ns, stop_ns).

    A file holds the frames from its first frame's time until the next file's first frame (each read from the
    file's first bytes, not its name: names have whole seconds and say when a file was opened); files without a
    whole frame hold nothing.
    """
    timed = [(f, t) for f in files if (t := _first_time_ns(f)) is not None]
    ends = [t for _, t in timed[1:]] + [np.iinfo(np.int64).max]
    return [f for (f, first), end in zip(timed, ends, strict=True)
            if first <= stop_ns + MARGIN_NS and end >= start_ns - MARGIN_NS]


def file_piece(file: StreamFile, start_ns: int, stop_ns: int) -> Piece | None:
    """The frames of `file` near [start_ns, stop_ns) (found with the reader's host-time seek, `MARGIN_NS` to
    spare), its reader left open; None if there are none.

    Raises:
        PffError: the file cannot be read as PFF (or is gone).
    """
    reader = PffReader(file.path, file.dp).open()
    start, stop = reader.seek_time(start_ns - MARGIN_NS), reader.seek_time(stop_ns + MARGIN_NS)
    if stop <= start:
        reader.close()
        return None
    return Piece(file, reader, start, stop, start_ns, stop_ns)


def replay_seq(pieces: list[Piece], index: SeqIndex) -> list[np.ndarray]:
    """Per piece, the `seq` of its frames by the rule of this module."""
    known_parts, seq_parts = [], []
    for piece in pieces:
        seq, known = index.lookup(str(piece.file.path), np.arange(piece.start, piece.stop, dtype=np.int64))
        seq_parts.append(seq)
        known_parts.append(known)
    if not pieces:
        return []
    seq, known = np.concatenate(seq_parts), np.concatenate(known_parts)
    position = np.arange(len(seq), dtype=np.int64)
    if not known.any():
        seq = position
    else:
        previous = np.maximum.accumulate(np.where(known, position, -1))
        following = np.minimum.accumulate(np.where(known, position, len(seq))[::-1])[::-1]
        anchor = np.where(previous >= 0, previous, following)
        seq = np.where(known, seq, seq[anchor] + (position - anchor))
    bounds = np.cumsum([0, *(len(p) for p in pieces)])
    return [seq[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
