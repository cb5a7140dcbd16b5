"""A producer that writes and sends the way PANOSETI's Hashpipe does, for tests and benchmarks.

Built from the facts in ../shared/design/HASHPIPE.md (Hashpipe's output_thread.c and snapshot.c),
not from our simulator: headers come from Hashpipe's printf formats written out here as C format
strings; files are opened with `fopen("w")` and written through stdio buffers (1 MiB for images,
libc's default for ph256), so a growing file ends in a torn frame; a rollover opens the next seqno
*before* closing the old file, whose last buffer the close flushes; a restart within the same
second truncates the files in place. Snapshots go to Unix sockets with one `writev` of
`[2-byte module id][header][image]`, a partial write is never completed, `EAGAIN` drops the record.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from std_daq_service.pff import DATA_PRODUCTS, PffWriter, data_product, format_data_file_name

_FILE_QUABO = ('   "quabo_%d": { "pkt_num": %10u, "pkt_tai": %4u, "pkt_nsec": %9u, "tv_sec": %10li, '
               '"tv_usec": %6li}')
_SNAPSHOT_QUABO = (' "quabo_%d": { "pkt_num": %10u, "pkt_tai": %4u, "pkt_nsec": %9u, "tv_sec": %10li, '
                   '"tv_usec": %6li}')
_PH = '{ "quabo_num": %1u, "pkt_num": %10u, "pkt_tai": %4u, "pkt_nsec": %9u, "tv_sec": %10li, "tv_usec": %6li}'
_EARLY_QUABO = ('   "quabo_%d": { "acq_mode": %u, "mod_num": %u, "pkt_num": %u, "pkt_utc": %u, "pkt_nsec": %u, '
                '"tv_sec": %li, "tv_usec": %li}')
_FIELDS = ("pkt_num", "pkt_tai", "pkt_nsec", "tv_sec", "tv_usec")
IMAGE_BUFFER = 1 << 20
PH_BUFFER = 4096
_SECOND = 1_000_000_000


def quabo_fields(unix_ns: int, pkt_num: int) -> dict[str, int]:
    """A quabo's packet fields for a frame at `unix_ns`, White Rabbit and host clocks agreeing."""
    tv_sec, ns = divmod(unix_ns, _SECOND)
    return {"pkt_num": pkt_num % 2**32, "pkt_tai": (tv_sec + 37) % 1024, "pkt_nsec": ns, "tv_sec": tv_sec,
            "tv_usec": ns // 1000}


def header_text(dp: str, fields: dict[str, int], style: str = "file", quabo_num: int = 0) -> bytes:
    """A header exactly as Hashpipe prints it, with the closing blank line and `*`."""
    values = tuple(fields[name] for name in _FIELDS)
    if not data_product(dp).is_movie and dp == "ph256":
        ns = min(values[2], 999_999_999) if style == "snapshot" else values[2]
        text = _PH % (quabo_num, values[0], values[1], ns, values[3], values[4])
    elif style == "early":
        early = (0x2, 1, values[0], values[3], values[2], values[3], values[4])
        text = "{\n" + ", \n".join(_EARLY_QUABO % (q, *early) for q in range(4)) + "\n}"
    elif style == "snapshot":
        clamped = (values[0], values[1], min(values[2], 999_999_999), values[3], values[4])
        text = "{\n" + ",\n".join(_SNAPSHOT_QUABO % (q, *clamped) for q in range(4)) + "\n}"
    else:
        text = "{\n" + ", \n".join(_FILE_QUABO % (q, *values) for q in range(4)) + "\n}"
    return text.encode("ascii") + b"\n\n*"


@dataclass
class _Stream:
    dp: str
    seqno: int
    writer: PffWriter


@dataclass
class HashpipeFiles:
    """The output thread of one module: four files per run, written like Hashpipe's.

    Args:
        run_dir: the module's run dir (created).
        module_id: the module.
        max_file_bytes: Hashpipe's MAXFILESIZE: after a frame takes `ftell` past it, the file rolls over.
        start: the run's start time (names of seqno 0).
    """

    run_dir: Path
    module_id: int
    max_file_bytes: int = 1 << 30
    start: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    written: dict[str, list[bytes]] = field(default_factory=dict)
    _streams: dict[str, _Stream] = field(default_factory=dict)
    _rollovers: int = 0

    def open(self) -> HashpipeFiles:
        """fopen("w") all four data products' seqno 0 files (an existing one is truncated in place).

        Opening again after `close()` is Hashpipe restarted within the same second: same names, emptied.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for dp in DATA_PRODUCTS:
            self._streams[dp] = _Stream(dp, 0, self._fopen(dp, 0, self.start))
        return self

    def _fopen(self, dp: str, seqno: int, when: datetime) -> PffWriter:
        product = data_product(dp)
        path = self.run_dir / format_data_file_name(when, dp, self.module_id, seqno)
        return PffWriter(path, product, IMAGE_BUFFER if product.is_movie else PH_BUFFER, truncate=True).open()

    def path(self, dp: str) -> Path:
        return self._streams[dp].writer.path

    def write(self, dp: str, frame: bytes) -> None:
        """fwrite one frame; then roll over as new_dp_file does: open seqno+1 first, close the old file."""
        stream = self._streams[dp]
        stream.writer.write_raw(frame, frames=1)
        self.written.setdefault(dp, []).append(frame)
        if stream.writer.tell() > self.max_file_bytes:
            old = stream.writer
            stream.seqno += 1
            self._rollovers += 1
            when = self.start + timedelta(seconds=self._rollovers)  # a new start_ time, as Hashpipe's clock gives
            stream.writer = self._fopen(dp, stream.seqno, when)
            old.close()

    def frame(self, dp: str, unix_ns: int, pkt_num: int, image: bytes, style: str = "file",
              quabo_num: int = 0) -> bytes:
        """One frame of this module as Hashpipe writes it to a file."""
        return header_text(dp, quabo_fields(unix_ns, pkt_num), style, quabo_num) + image

    def flush(self, dp: str) -> None:
        self._streams[dp].writer.flush()

    def crash_mid_frame(self, dp: str, frame: bytes, keep: int) -> None:
        """Die while writing `frame`: its first `keep` bytes reach the file; then start the next seqno."""
        stream = self._streams[dp]
        stream.writer.flush()
        os.write(stream.writer._fd, frame[:keep])
        self.written.setdefault(dp, []).append(frame[:keep])
        stream.writer.close()
        stream.seqno += 1
        self._rollovers += 1
        stream.writer = self._fopen(dp, stream.seqno, self.start + timedelta(seconds=self._rollovers))

    def at_first_seqno(self) -> bool:
        """Are all streams still in their seqno 0 file (so a restart in the same second truncates them)?"""
        return all(stream.seqno == 0 for stream in self._streams.values())

    def close(self) -> None:
        for stream in self._streams.values():
            stream.writer.close()


@dataclass
class SnapshotSender:
    """snapshot.c's sender for one data product: non-blocking, one writev per record, partial writes left."""

    path: str
    dp: str
    sent_whole: list[tuple[int, bytes]] = field(default_factory=list)
    torn: list[int] = field(default_factory=list)
    dropped: int = 0
    outcomes: list[str] = field(default_factory=list)
    """Per `send`: "whole", "torn" (part of it sent) or "dropped" (nothing sent)."""
    _sock: socket.socket | None = None

    def _connect(self) -> bool:
        if self._sock is not None:
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            return False
        self._sock = sock
        return True

    def send(self, module_id: int, frame: bytes, cut: int | None = None) -> None:
        """Send `[module id][frame]` with one writev; `cut` sends only that many bytes, as a full socket does."""
        if not self._connect():
            self._drop()
            return
        parts = [module_id.to_bytes(2, "big"), frame]
        if cut is not None:
            record = b"".join(parts)[:cut]
            parts = [record]
        try:
            sent = self._sock.sendmsg(parts)
        except BlockingIOError:
            self._drop()  # EAGAIN: the whole record is dropped
            return
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.close()  # retried at the next snapshot
                self._drop()
                return
            raise
        if cut is None and sent == 2 + len(frame):
            self.sent_whole.append((module_id, frame))
            self.outcomes.append("whole")
        else:
            self.torn.append(module_id)  # counted as a success by Hashpipe; the rest is never sent
            self.outcomes.append("torn")

    def _drop(self) -> None:
        self.dropped += 1
        self.outcomes.append("dropped")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
