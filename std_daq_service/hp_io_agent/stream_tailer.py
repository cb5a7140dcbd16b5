"""Follow one stream (module and data product) across file rollovers, numbering its frames."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from std_daq_service.hp_io_agent.run_discovery import StreamFile, next_in_run
from std_daq_service.pff import FrameBlock, PffTailer, data_product

log = logging.getLogger(__name__)


@dataclass
class StreamBlock:
    """Frames read from one stream, with the stream's running sequence numbers."""

    file: StreamFile
    block: FrameBlock
    seq: np.ndarray


class StreamTailer:
    """Tail the current file of a stream; on rollover or a new run, finish the old file first.

    `seq` counts frames of the stream without gaps; frames lost to corruption (skipped bytes, as
    whole frames) advance it, so consumers see the gap.
    """

    def __init__(self, file: StreamFile, from_end: bool, max_batch_frames: int, resume: dict | None = None):
        self.max_batch_frames = max_batch_frames
        self.next_seq = 0
        self.frames = 0
        self.bytes = 0
        self.corrupt_bytes = 0
        self.last_data_time = time.monotonic()
        self._rate_mark = (time.monotonic(), 0)
        self.rate_hz = 0.0
        self._pending: StreamFile | None = None
        self._open(file, from_end and resume is None)
        if resume is not None:
            self.tailer.resume(resume["offset"], resume["frames_read"])
            self.next_seq = resume["next_seq"]
            log.info("resuming %s at frame %d, seq %d", file.path, self.tailer.frames_read, self.next_seq)

    def _open(self, file: StreamFile, from_end: bool) -> None:
        self.file = file
        frame_size = data_product(file.dp).frame_size
        self.tailer = PffTailer(file.path, file.dp, max_bytes=self.max_batch_frames * frame_size).open()
        if from_end:
            self.tailer.skip_to_end()
        log.info("tailing %s from frame %d", file.path, self.tailer.frames_read)

    def switch_to(self, file: StreamFile) -> None:
        """Move to a newer file once the current one has been read to its end."""
        if file.path != self.file.path:
            self._pending = file

    def read(self) -> StreamBlock | None:
        """The next block of complete frames (at most max_batch_frames), or None."""
        while True:
            before = self.tailer.corrupt_bytes
            block = self.tailer.read_new()
            lost = self.tailer.corrupt_bytes - before
            if lost:
                self.corrupt_bytes += lost
                self.next_seq += lost // self.tailer.frame_size
            if block is not None:
                seq = np.arange(self.next_seq, self.next_seq + len(block), dtype=np.int64)
                self.next_seq += len(block)
                self.frames += len(block)
                self.bytes += block.raw.nbytes
                self.last_data_time = time.monotonic()
                return StreamBlock(self.file, block, seq)
            if self._pending is None:
                return None
            if self.tailer.lag_bytes:
                log.warning("%s: %d bytes of a torn last frame left behind at rollover", self.file.path,
                            self.tailer.lag_bytes)
            following = next_in_run(self.file)  # every seqno of a run before the next run
            self.tailer.close()
            if following is not None and following.path != self._pending.path:
                self._open(following, from_end=False)
            else:
                self._open(self._pending, from_end=False)
                self._pending = None

    def position(self) -> dict:
        """Where the stream is: enough for a restarted agent to go on without repeating a frame."""
        return {"file": str(self.file.path), "offset": self.tailer.offset, "frames_read": self.tailer.frames_read,
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
            "corrupt_bytes_skipped": self.corrupt_bytes,
            "lag_bytes": self.tailer.lag_bytes,
            "seconds_since_data": round(time.monotonic() - self.last_data_time, 2),
        }

    def close(self) -> None:
        self.tailer.close()
