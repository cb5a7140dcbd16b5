"""Incremental reading of a growing PFF file: every complete frame once, in order, never a torn one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from std_daq_service.pff.data_products import HEADER_END
from std_daq_service.pff.frame_block import FrameBlock
from std_daq_service.pff.header import HeaderLayout
from std_daq_service.pff.reader import resolve_data_product

log = logging.getLogger(__name__)

_BRACE = ord("{")


class PffTailer:
    """Follow a PFF file that Hashpipe is still writing.

    Each `read_new()` returns the complete frames appended since the last call as one block, or
    None. Appends of any size work: a partial frame stays unread until it is complete. A region
    that is not a valid frame (bad `*` marker, broken header) is skipped up to the next valid
    frame; the skipped bytes are counted in `corrupt_bytes` and `resyncs`.

    Attributes:
        offset: bytes consumed so far (valid frames and skipped corruption).
        frames_read: complete frames returned so far; the next frame's `frame_number`.
    """

    def __init__(self, path: str | os.PathLike, dp: str | None = None, max_bytes: int = 16 << 20):
        self.path = Path(path)
        self.dp, self.name = resolve_data_product(self.path, dp)
        self.header_size = self.dp.header_size
        self.frame_size = self.dp.frame_size
        self.max_frames = max(1, max_bytes // self.frame_size)
        self.offset = 0
        self.frames_read = 0
        self.corrupt_bytes = 0
        self.resyncs = 0
        self.truncated = False
        self._fd: int | None = None
        self._layout: HeaderLayout | None = None

    def open(self) -> PffTailer:
        """Open the file; reading continues from the descriptor even if the file is moved."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PffTailer:
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def skip_to_end(self) -> None:
        """Start after the last complete frame now in the file (live semantics: only new frames)."""
        size = self.size()
        self.frames_read = size // self.frame_size
        self.offset = self.frames_read * self.frame_size

    def resume(self, offset: int, frames_read: int) -> None:
        """Continue where an earlier tailer of this file stopped (its `offset` and `frames_read`)."""
        self.offset = offset
        self.frames_read = frames_read

    def size(self) -> int:
        """Current size of the file in bytes."""
        return os.fstat(self.open()._fd).st_size

    @property
    def lag_bytes(self) -> int:
        """Bytes in the file not yet returned (a torn frame or unread frames); 0 once closed."""
        fd = self._fd
        if fd is None:
            return 0
        try:
            return max(0, os.fstat(fd).st_size - self.offset)
        except OSError:
            return 0  # closed by another thread while asked


    def read_new(self) -> FrameBlock | None:
        """Return the complete frames appended since the last call (at most max_bytes), or None."""
        size = self.size()
        if size < self.offset:
            if not self.truncated:
                log.warning("%s shrank from %d to %d bytes; waiting for it to grow again",
                            self.path, self.offset, size)
            self.truncated = True
            return None
        self.truncated = False
        while True:
            n = min((size - self.offset) // self.frame_size, self.max_frames)
            if n == 0:
                return None
            data = os.pread(self._fd, n * self.frame_size, self.offset)
            n = len(data) // self.frame_size
            rows = np.frombuffer(data, dtype=np.uint8, count=n * self.frame_size)
            rows = rows.reshape(n, self.frame_size)
            if self._layout is None:
                if not self._looks_like_frame(rows[0]):
                    self._resync(size)
                    continue
                self._layout = HeaderLayout(rows[0, : self.header_size].tobytes())
            block = FrameBlock(self.dp, rows, self.frames_read, self._layout)
            bad = np.flatnonzero(~block.valid_rows())
            good = int(bad[0]) if len(bad) else n
            if good == 0:
                self._resync(size)
                continue
            if good < n:
                block = block[:good]
            self.offset += good * self.frame_size
            self.frames_read += good
            return block

    def _looks_like_frame(self, row: np.ndarray) -> bool:
        end = row[self.header_size - len(HEADER_END) : self.header_size].tobytes()
        return row[0] == _BRACE and end == HEADER_END

    def _is_frame_at(self, buf: np.ndarray, pos: int) -> bool:
        row = buf[pos : pos + self.frame_size]
        if not self._looks_like_frame(row):
            return False
        if self._layout is None:
            return True
        return bool(FrameBlock(self.dp, row[None, :], 0, self._layout).valid_rows()[0])

    def _resync(self, size: int) -> None:
        """Skip bytes at `offset` up to the next position where a valid frame starts."""
        span = min(size - self.offset, 4 * self.frame_size + self.max_frames * self.frame_size)
        buf = np.frombuffer(os.pread(self._fd, span, self.offset), dtype=np.uint8)
        skip = len(buf)
        for pos in np.flatnonzero(buf[1:] == _BRACE) + 1:
            if pos + self.frame_size > len(buf):
                skip = int(pos)  # a candidate not yet complete: look again when more arrives
                break
            if self._is_frame_at(buf, int(pos)):
                skip = int(pos)
                break
        self.offset += skip
        self.corrupt_bytes += skip
        self.resyncs += 1
        log.warning("%s: %d bytes at offset %d are not a valid frame; skipped to the next frame",
                    self.path, skip, self.offset - skip)
