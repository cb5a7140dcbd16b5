"""Random access to the complete frames of a PFF file."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from std_daq_service.pff.data_products import HEADER_END, DataProduct, data_product
from std_daq_service.pff.errors import PffError
from std_daq_service.pff.frame_block import Frame, FrameBlock
from std_daq_service.pff.frame_scanner import MAX_HEADER, FrameScanner
from std_daq_service.pff.header import HeaderLayout
from std_daq_service.pff.names import DataFileName, parse_data_file_name


def resolve_data_product(path: Path, dp: str | None) -> tuple[DataProduct, DataFileName | None]:
    """Data product of a PFF file: given, or from the file name."""
    try:
        name = parse_data_file_name(path.name)
    except PffError:
        name = None
    if dp is None:
        if name is None:
            raise PffError(
                f"{path}: not a PFF data file name (start_<UTC>.dp_<dp>.bpp_<n>.module_<id>.seqno_<n>.pff); "
                "pass the data product explicitly"
            )
        dp = name.dp
    return data_product(dp), name


class PffReader:
    """Read the whole frames of a PFF file; a torn trailing frame is ignored and counted.

    Use as a context manager. The file is memory-mapped. A file of Hashpipe's fixed-width headers
    whose frames all have the size of its first one is one block viewing the mapping, checked only
    at the frame boundaries on open; any other file (a header a byte longer, an early Hashpipe
    version without field widths, corruption) is split by `FrameScanner` into blocks of one
    header layout each, with torn and corrupt bytes skipped and counted.

    Raises:
        PffError: on open, when the first frame's header is not a PFF header of the data product.
    """

    def __init__(self, path: str | os.PathLike, dp: str | None = None):
        self.path = Path(path)
        self._dp_arg = dp
        self._mmap: mmap.mmap | None = None
        self._segments: list[FrameBlock] = []
        self._starts = np.zeros(1, dtype=np.int64)
        self.layout: HeaderLayout | None = None
        self.corrupt_bytes = 0
        self.lost_frames = 0

    def open(self) -> PffReader:
        self.dp, self.name = resolve_data_product(self.path, self._dp_arg)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except OSError as exc:
            raise PffError(f"{self.path}: cannot read: {exc.strerror}") from exc
        self.file_size = size
        data = np.frombuffer(self._mmap, dtype=np.uint8) if self._mmap else np.zeros(0, np.uint8)
        self.header_size = self.dp.header_size
        if size:
            end = bytes(data[:MAX_HEADER]).find(HEADER_END)
            if not data[0] == ord("{") or end < 0:
                raise PffError(f"{self.path}: does not start with a PFF frame header")
            self.header_size = end + len(HEADER_END)
            if size >= self.frame_size:
                self.layout = HeaderLayout(bytes(data[: self.header_size]))
        self._decided = self._split(data)
        self._starts = np.cumsum([0, *(len(b) for b in self._segments)])
        return self

    def _split(self, data: np.ndarray) -> int:
        """Fill `_segments` with the file's whole frames; return the bytes decided (the rest is torn)."""
        n = len(data) // self.frame_size
        rows = data[: n * self.frame_size].reshape(n, self.frame_size)
        marker = len(HEADER_END)
        uniform = n and self.layout is not None and self.layout.is_fixed_width and (rows[:, 0] == ord("{")).all() and (
            rows[:, self.header_size - marker : self.header_size] == np.frombuffer(HEADER_END, np.uint8)).all()
        tail = data[n * self.frame_size :]
        if uniform and (not len(tail) or tail[0] == ord("{")):
            self._segments = [FrameBlock(self.dp, rows, 0, self.layout)]
            return n * self.frame_size
        scanner, position, first = FrameScanner(self.dp), 0, 0
        while position < len(data):
            step = scanner.step(data[position:], final=True)
            self.corrupt_bytes += step.skipped
            self.lost_frames += step.lost_frames
            if step.block is not None:
                step.block.first_frame_number = first
                first += len(step.block)
                self._segments.append(step.block)
            if step.end == 0:
                break
            position += step.end
        return position

    def close(self) -> None:
        self._segments = []
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # blocks handed out still view the mapping; it is unmapped with the last one
            self._mmap = None

    def __enter__(self) -> PffReader:
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def frame_size(self) -> int:
        """Size of the first frame (of every frame where headers are fixed-width)."""
        return self.header_size + self.dp.image_size

    @property
    def n_frames(self) -> int:
        """Number of whole frames."""
        return int(self._starts[-1])

    @property
    def variable_headers(self) -> bool:
        """Do frames of this file have headers of different sizes (or was corruption skipped)?"""
        return len(self._segments) > 1

    @property
    def trailing_bytes(self) -> int:
        """Bytes of a torn frame after the last whole one."""
        return self.file_size - self._decided

    def __len__(self) -> int:
        return self.n_frames

    def _segment(self, index: int) -> tuple[FrameBlock, int]:
        which = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._segments[which], index - int(self._starts[which])

    def block(self, start: int = 0, stop: int | None = None) -> FrameBlock:
        """Frames `start` to `stop` (exclusive) as one block viewing the mapped file.

        Raises:
            PffError: the frames have headers of different sizes (use `iter_blocks`).
        """
        start, stop, _ = slice(start, stop).indices(self.n_frames)
        if stop <= start:
            return FrameBlock(self.dp, np.zeros((0, self.frame_size), np.uint8), start, self.layout)
        segment, local = self._segment(start)
        if local + (stop - start) > len(segment):
            raise PffError(f"{self.path}: frames {start}..{stop} have headers of different sizes; use iter_blocks()")
        return segment[local : local + stop - start]

    def iter_blocks(self, size: int = 4096) -> Iterator[FrameBlock]:
        """The whole frames in order, in blocks of at most `size` frames of one header layout each."""
        for segment in self._segments:
            for start in range(0, len(segment), size):
                yield segment[start : start + size]

    def __getitem__(self, index: int) -> Frame:
        if not -self.n_frames <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range: {self.path} has {self.n_frames} frames")
        segment, local = self._segment(index % self.n_frames)
        return segment.frame(local)

    def __iter__(self) -> Iterator[Frame]:
        for block in self.iter_blocks():
            for i in range(len(block)):
                yield block.frame(i)

    def seek_time(self, unix_ns: int) -> int:
        """Index of the first frame whose host time is at or after `unix_ns` (n_frames if none).

        Host time is used because it is valid in every frame, also where WR time is not; frames
        are in host-time order as Hashpipe writes them.
        """
        lo, hi = 0, self.n_frames
        while lo < hi:
            mid = (lo + hi) // 2
            segment, local = self._segment(mid)
            if int(segment[local : local + 1].host_timestamp_ns[0]) < unix_ns:
                lo = mid + 1
            else:
                hi = mid
        return lo
