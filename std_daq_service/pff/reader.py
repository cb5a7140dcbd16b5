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
from std_daq_service.pff.header import HeaderLayout
from std_daq_service.pff.names import DataFileName, parse_data_file_name

_HEADER_SEARCH = 4096


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
    """Read the complete frames of a PFF file; a torn trailing frame is ignored and counted.

    Use as a context manager. The file is memory-mapped, so opening is cheap for any size.

    Raises:
        PffError: on open, when the first frame's header is not a PFF header of the data product.
    """

    def __init__(self, path: str | os.PathLike, dp: str | None = None):
        self.path = Path(path)
        self._dp_arg = dp
        self._mmap: mmap.mmap | None = None
        self._frames: np.ndarray | None = None
        self.layout: HeaderLayout | None = None

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
            end = bytes(data[:_HEADER_SEARCH]).find(HEADER_END)
            if not data[0] == ord("{") or end < 0:
                raise PffError(f"{self.path}: does not start with a PFF frame header")
            self.header_size = end + len(HEADER_END)
            if self.header_size != self.dp.header_size:
                raise PffError(
                    f"{self.path}: first header is {self.header_size} bytes, "
                    f"{self.dp.name} headers are {self.dp.header_size}"
                )
            if size >= self.frame_size:
                self.layout = HeaderLayout(bytes(data[: self.header_size]))
        n = size // self.frame_size
        self._frames = data[: n * self.frame_size].reshape(n, self.frame_size)
        return self

    def close(self) -> None:
        self._frames = None
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
        return self.header_size + self.dp.image_size

    @property
    def n_frames(self) -> int:
        """Number of complete frames."""
        return self._frames.shape[0]

    @property
    def trailing_bytes(self) -> int:
        """Bytes of a torn frame after the last complete one."""
        return self.file_size - self.n_frames * self.frame_size

    def __len__(self) -> int:
        return self.n_frames

    def block(self, start: int = 0, stop: int | None = None) -> FrameBlock:
        """Frames `start` to `stop` (exclusive) as one block viewing the mapped file."""
        start, stop, _ = slice(start, stop).indices(self.n_frames)
        return FrameBlock(self.dp, self._frames[start:stop], start, self.layout)

    def iter_blocks(self, size: int = 4096) -> Iterator[FrameBlock]:
        for start in range(0, self.n_frames, size):
            yield self.block(start, start + size)

    def __getitem__(self, index: int) -> Frame:
        if not -self.n_frames <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range: {self.path} has {self.n_frames} frames")
        return self.block(index % self.n_frames, index % self.n_frames + 1).frame(0)

    def __iter__(self) -> Iterator[Frame]:
        for block in self.iter_blocks():
            for i in range(len(block)):
                yield block.frame(i)

    def bad_frames(self) -> np.ndarray:
        """Indices of frames whose header does not close with `\\n\\n*` or breaks the layout."""
        bad = [np.flatnonzero(~b.valid_rows()) + b.first_frame_number for b in self.iter_blocks(65536)]
        return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)

    def seek_time(self, unix_ns: int) -> int:
        """Index of the first frame whose host time is at or after `unix_ns` (n_frames if none).

        Host time is used because it is valid in every frame, also where WR time is not; frames
        are in host-time order as Hashpipe writes them.
        """
        lo, hi = 0, self.n_frames
        while lo < hi:
            mid = (lo + hi) // 2
            if int(self.block(mid, mid + 1).host_timestamp_ns[0]) < unix_ns:
                lo = mid + 1
            else:
                hi = mid
        return lo
