"""Incremental reading of a growing PFF file: every whole frame once, in order, never a torn one."""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import numpy as np

from std_daq_service.pff.frame_block import FrameBlock
from std_daq_service.pff.frame_scanner import MAX_HEADER, FrameScanner
from std_daq_service.pff.reader import resolve_data_product

log = logging.getLogger(__name__)

_PROBE_BYTES = 65536
"""First read of `_new_bytes`: small appends fit, and its buffer is not worth an mmap."""


class PffTailer:
    """Follow a PFF file that Hashpipe is still writing.

    Each `read_new()` returns the next whole frames (one header layout, at most `max_bytes`) as a
    block, or None. Appends of any size work: a partial frame stays unread until it is complete.
    Torn frames and bytes that are no frame are skipped and counted (`corrupt_bytes`,
    `lost_frames`). The file changing under the reader is detected and reported: it shrank or was
    rewritten in place (Hashpipe restarted within the same second: `fopen("w")` on the same name),
    or its name now belongs to another file (replaced by rename). The new content is then read from
    its first frame; what was not read of the old content is counted as lost.

    Attributes:
        offset: bytes decided so far (frames returned and bytes skipped) in the current content.
        frames_read: whole frames returned from the current content; the next frame's `frame_number`.
        lost_frames: frames known to be lost (torn, corrupt, unread before a truncation).
        events: what happened to the file, for status and logs.
    """

    def __init__(self, path: str | os.PathLike, dp: str | None = None, max_bytes: int = 16 << 20):
        self.path = Path(path)
        self.dp, self.name = resolve_data_product(self.path, dp)
        self.scanner = FrameScanner(self.dp, max_rows=max(1, max_bytes // self.dp.frame_size))
        self.max_bytes = max_bytes
        self.offset = 0
        self.frames_read = 0
        self.corrupt_bytes = 0
        self.lost_frames = 0
        self.resyncs = 0
        self.events: list[str] = []
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._first: tuple[int, int] | None = None
        self._size = 0

    def open(self) -> PffTailer:
        """Open the file; reading continues from the descriptor even if the file is moved."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
            info = os.fstat(self._fd)
            self._inode = (info.st_dev, info.st_ino)
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def _descriptor(self) -> int:
        """The open file's descriptor (opened on first use)."""
        self.open()
        assert self._fd is not None
        return self._fd

    def __enter__(self) -> PffTailer:
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def frame_size(self) -> int:
        """Size of a frame of the layout read last (the data product's usual size before any)."""
        return self.scanner.frame_size

    def skip_to_end(self) -> None:
        """Start after the last whole frame now in the file (live semantics: only new frames).

        The first frames fix the layout; where the frame one layout-size before the end checks
        out, the frames are taken to be of that size and skipped at once, else they are scanned.
        """
        self._restart()
        if self._read(count=False) is None:
            return
        size, frame = self.size(), self.frame_size
        end = size // frame * frame
        if end > self.offset and self._whole_frame_at(end - frame, frame):
            self.offset, self.frames_read = end, end // frame
        while self.size() - self.offset >= self.frame_size and self._read(count=False) is not None:
            pass

    def _whole_frame_at(self, offset: int, frame: int) -> bool:
        data = np.frombuffer(os.pread(self._descriptor, frame, offset), dtype=np.uint8)
        probe = FrameScanner(self.dp)
        probe.layout = self.scanner.layout
        step = probe.step(data, final=True)
        return step.block is not None and step.start == 0 and step.end == frame

    def resume(self, offset: int, frames_read: int, first_header: list[int] | None = None) -> None:
        """Continue where an earlier tailer of this file stopped (its `offset`, `frames_read`, `first_header`).

        With the earlier tailer's `first_header` fingerprint a file rewritten in place since then is noticed.
        """
        self.offset = offset
        self.frames_read = frames_read
        self._first = (first_header[0], first_header[1]) if first_header else None

    @property
    def first_header(self) -> list[int] | None:
        """Length and CRC-32 of the current content's first header: how a rewrite in place is recognised."""
        return list(self._first) if self._first else None

    def size(self) -> int:
        """Current size of the open file in bytes."""
        return os.fstat(self._descriptor).st_size

    def stat(self) -> os.stat_result:
        """`fstat` of the open file."""
        return os.fstat(self._descriptor)

    @property
    def lag_bytes(self) -> int:
        """Bytes in the file not yet decided (a torn frame or unread frames); 0 once closed."""
        fd = self._fd
        if fd is None:
            return 0
        try:
            return max(0, os.fstat(fd).st_size - self.offset)
        except OSError:
            return 0  # closed by another thread while asked

    def discard_tail(self) -> int:
        """Give up on the bytes after the last decided frame (a torn tail that will never be whole).

        They are counted as lost (`lost_frames`, `corrupt_bytes`); returns how many bytes they were.
        """
        torn = self.lag_bytes
        if torn:
            self._lose(torn)
            self.offset += torn
            log.warning("%s: complete with a torn last frame (%d bytes); counted as lost", self.path, torn)
        return torn

    def replaced(self) -> bool:
        """Does the path now name another file than the one open (replaced by rename)?"""
        try:
            info = os.stat(self.path)
        except OSError:
            return False  # moved away with its run dir, or removed: the open file is still read
        return (info.st_dev, info.st_ino) != self._inode

    def reopen(self) -> None:
        """Read the file now at the path from its first frame (after `replaced()`)."""
        self.close()
        self._note(f"{self.path.name} was replaced by another file; reading the new one from its first frame")
        self._restart()
        self.open()

    def read_new(self, final: bool = False) -> FrameBlock | None:
        """Return the next whole frames (at most max_bytes), or None.

        Args:
            final: the writer has closed the file; a last row left undecided is settled now.
        """
        return self._read(final=final)

    def _restart(self) -> None:
        self.offset = 0
        self.frames_read = 0
        self._first = None
        self.scanner.reset()

    def _note(self, event: str) -> None:
        log.warning("%s: %s", self.path, event)
        self.events = [*self.events[-9:], event]

    def _check_rewritten(self, size: int) -> None:
        """Notice a truncation, or a rewrite in place that has already grown past the offset."""
        if size < self.offset:
            unread = max(0, self._size - self.offset)
            self._lose(unread)
            self._note(f"shrank from {self._size} to {size} bytes (truncated or rewritten in place); "
                       f"{unread} unread bytes lost; reading the new content from its first frame")
            self._restart()
        elif self._first is not None and self.offset:
            length, crc = self._first
            if zlib.crc32(os.pread(self._descriptor, length, 0)) != crc:
                unread = max(0, self._size - self.offset)
                self._lose(unread)
                self._note(f"rewritten in place (its first frame changed); {unread} unread bytes of the old content "
                           "lost; reading it again from its first frame")
                self._restart()
        self._size = size

    def _lose(self, nbytes: int) -> None:
        if nbytes:
            self.lost_frames += max(1, round(nbytes / self.frame_size))
            self.corrupt_bytes += nbytes

    def _new_bytes(self, final: bool) -> tuple[int, bytes]:
        """The file's size and the bytes after the offset (at most max_bytes + MAX_HEADER), once the file was checked
        for a truncation or rewrite.

        A first read of at most `_PROBE_BYTES` that returns data but less than asked ended at the end of the file, so
        it tells the size without an `fstat` (small appends); otherwise (nothing new, a last read, a backlog) the size
        is asked for first. (Asked for more, `pread` would allocate its whole buffer for the few bytes it gets.)
        """
        limit, offset = self.max_bytes + MAX_HEADER, self.offset
        probe = min(limit, _PROBE_BYTES)
        data = b"" if final else os.pread(self._descriptor, probe, offset)
        if 0 < len(data) < probe:
            self._check_rewritten(offset + len(data))
            if self.offset == offset:
                return offset + len(data), data
        size = self.size()
        self._check_rewritten(size)
        want = min(size - self.offset, limit)
        return size, os.pread(self._descriptor, want, self.offset) if want > 0 else b""  # shorter if it shrank

    def _read(self, final: bool = False, count: bool = True) -> FrameBlock | None:
        size, data = self._new_bytes(final)
        if not data:
            return None
        buf = np.frombuffer(data, dtype=np.uint8)
        whole = final and self.offset + len(data) >= size
        position = 0
        while position < len(buf):
            step = self.scanner.step(buf[position:], final=whole)
            block_offset = self.offset + position + step.start
            if step.skipped and count:
                self.corrupt_bytes += step.skipped
                self.lost_frames += step.lost_frames
                self.resyncs += 1
                log.warning("%s: %d bytes at offset %d are no whole frame (%d frame(s) lost); skipped",
                            self.path, step.skipped, self.offset + position, step.lost_frames)
            position += step.end
            if step.block is not None:
                block = step.block
                block.first_frame_number = self.frames_read
                if block_offset == 0:
                    self._first = (block.header_size, zlib.crc32(block.raw[0, : block.header_size].tobytes()))
                self.offset += position
                self.frames_read += len(block)
                return block
            if step.end == 0:
                break
        self.offset += position
        return None
