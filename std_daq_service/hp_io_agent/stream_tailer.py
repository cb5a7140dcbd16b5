"""Follow one stream (module and data product) through its files and runs, numbering its frames."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from std_daq_service.hp_io_agent.file_watcher import FileWatcher
from std_daq_service.hp_io_agent.run_discovery import StreamFile, next_file
from std_daq_service.lifecycle import Lifecycle
from std_daq_service.pff import FrameBlock, PffTailer, data_product

log = logging.getLogger(__name__)


@dataclass
class StreamBlock:
    """Frames read from one stream, with the stream's running sequence numbers."""

    file: StreamFile
    block: FrameBlock
    seq: np.ndarray


class StreamTailer(Lifecycle):
    """Tail the current file of a stream, and move on only once it is complete; `start()` opens the first file.

    Hashpipe opens the next seqno (or a new run starts) *before* it closes the old file, whose
    last buffer (up to 1 MiB) is written by that close. So a newer file is only a reason to
    finish the current one: it is complete when its writer closed it and it stayed as the writer
    left it (inotify), or when it has not changed for `grace_s`; its last frames are read, a
    torn tail left then is counted as lost, and the stream goes on with the next seqno of its run,
    else the first file of the next run (never an older run).

    `seq` counts the stream's frames without gaps; every frame known to be lost (torn, corrupt,
    unread before a truncation, a torn tail at rollover) advances it, so consumers see the gap.
    Resumed from a checkpoint, frames below its `publish_from_seq` (which the agent before the restart may
    have published) are read but not returned: `skipped_at_resume` counts them.
    """

    def __init__(self, file: StreamFile, from_end: bool, max_batch_frames: int, grace_s: float,
                 watcher: FileWatcher, resume: dict | None = None, next_seq: int = 0):
        self.max_batch_frames = max_batch_frames
        self.grace_s = grace_s
        self.watcher = watcher
        self.next_seq = next_seq
        self.frames = 0
        self.bytes = 0
        self.lost_frames = 0
        self.corrupt_bytes = 0
        self.publish_from_seq = 0
        self.published_to_seq = 0
        """One past the last `seq` published."""
        self.skipped_at_resume = 0
        self.run_ended = False
        self.error: str | None = None
        self.last_data_time = time.monotonic()
        self._rate_mark = (time.monotonic(), 0)
        self.rate_hz = 0.0
        self._newer: StreamFile | None = None
        self._counted = (0, 0)
        self.file = file
        self.tailer: PffTailer | None = None
        self._from_end = from_end and resume is None
        self._resume = resume

    def _open(self) -> None:
        self._follow(self.file, self._from_end)
        if self._resume is not None:
            self.tailer.resume(self._resume["offset"], self._resume["frames_read"], self._resume.get("first_header"))
            self.next_seq = self._resume["next_seq"]
            self.publish_from_seq = self._resume.get("publish_from_seq", self.next_seq)
            log.info("resuming %s at frame %d, seq %d, publishing from seq %d", self.file.path,
                     self.tailer.frames_read, self.next_seq, self.publish_from_seq)

    def _release(self) -> None:
        if self.tailer is not None:
            self.tailer.close()

    def _follow(self, file: StreamFile, from_end: bool) -> None:
        """Follow `file` from now on; if it cannot be opened (OSError), the stream stays where it was."""
        frame_size = data_product(file.dp).frame_size
        tailer = PffTailer(file.path, file.dp, max_bytes=self.max_batch_frames * frame_size).open()
        if self.tailer is not None:
            self.tailer.close()
        self.file, self.tailer = file, tailer
        self._counted = (0, 0)
        self._next: StreamFile | None = None
        if from_end:
            self.tailer.skip_to_end()
        log.info("tailing %s from frame %d (seq %d)", file.path, self.tailer.frames_read, self.next_seq)

    def offer(self, file: StreamFile) -> None:
        """A file of this stream exists: if it comes after the current one, finish the current one first."""
        if file.order > self.file.order and (self._newer is None or file.order > self._newer.order):
            self._newer = file
            self.run_ended = False

    def read(self) -> StreamBlock | None:
        """The next block of whole frames (at most max_batch_frames), or None."""
        while True:
            block = self._read_block(final=False)
            if block is not None:
                return block
            if not self._complete():
                return None
            block = self._read_block(final=True)  # the last frames, a last row left undecided settled
            if block is not None:
                return block
            self.tailer.discard_tail()
            self._count_losses()
            if self.tailer.replaced():
                self.tailer.reopen()  # its loss counters go on: nothing is counted twice
                continue
            following = self._following()
            if following is None:
                return None  # the run ended: nothing follows yet
            self._follow(following, from_end=False)
            if self._newer is not None and following.order >= self._newer.order:
                self._newer = None

    def _read_block(self, final: bool) -> StreamBlock | None:
        while True:
            block = self.tailer.read_new(final=final)
            self._count_losses()
            if block is None:
                return None
            self.last_data_time = time.monotonic()
            skip = min(len(block), self.publish_from_seq - self.next_seq)
            if skip > 0:  # the agent before the restart may have published these
                self.skipped_at_resume += skip
                self.next_seq += skip
                block = block[skip:]
            if len(block):
                break
        seq = np.arange(self.next_seq, self.next_seq + len(block), dtype=np.int64)
        self.next_seq += len(block)
        return StreamBlock(self.file, block, seq)

    def _following(self) -> StreamFile | None:
        """The file after the current one, once a newer file of the stream is known."""
        if self._newer is None:
            return None
        if self._next is None:
            self._next = next_file(self.file)
        return self._next

    def _complete(self) -> bool:
        """Has the writer finished the current file (so that what is left of it will never change)?

        Only once a newer file exists, the run ended or the path names another file; then when its
        writer closed it and it is still as the writer left it (inotify), else once it has not
        changed for `grace_s`.
        """
        following = self._following()
        replaced = self.tailer.replaced()
        if following is None and not (self.run_ended or replaced):
            return False
        info = self.tailer.stat()
        if not replaced and self.watcher.closed_as(self.file.path, info.st_size, info.st_mtime_ns):
            return True
        return time.time() - info.st_mtime >= self.grace_s

    def _count_losses(self) -> None:
        lost, corrupt = self.tailer.lost_frames, self.tailer.corrupt_bytes
        new_lost = lost - self._counted[0]
        if new_lost or corrupt != self._counted[1]:
            self.lost_frames += new_lost
            self.corrupt_bytes += corrupt - self._counted[1]
            self.next_seq += new_lost
            self._counted = (lost, corrupt)

    def published(self, block: StreamBlock) -> None:
        """Count a block that was sent to the subscribers."""
        self.frames += len(block.block)
        self.bytes += block.block.raw.nbytes
        self.published_to_seq = int(block.seq[-1]) + 1

    def position(self) -> dict:
        """Where the stream is: enough for a restarted agent to go on without repeating a frame."""
        return {"file": str(self.file.path), "run": self.file.run, "offset": self.tailer.offset,
                "frames_read": self.tailer.frames_read, "first_header": self.tailer.first_header,
                "next_seq": self.next_seq}

    def update_rate(self) -> None:
        now = time.monotonic()
        mark_time, mark_frames = self._rate_mark
        if now - mark_time >= 1.0:
            self.rate_hz = (self.frames - mark_frames) / (now - mark_time)
            self._rate_mark = (now, self.frames)

    def status(self) -> dict:
        return {
            "file": self.file.path.name,
            "run": self.file.run,
            "seqno": self.file.seqno,
            "frames_published": self.frames,
            "bytes_published": self.bytes,
            "frames_per_second": round(self.rate_hz, 1),
            "frames_lost": self.lost_frames,
            "frames_skipped_at_resume": self.skipped_at_resume,
            "corrupt_bytes_skipped": self.corrupt_bytes,
            "next_seq": self.next_seq,
            "lag_bytes": self.tailer.lag_bytes,
            "seconds_since_data": round(time.monotonic() - self.last_data_time, 2),
            "file_events": list(self.tailer.events),
            "error": self.error,
        }
