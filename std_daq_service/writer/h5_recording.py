"""A recording: the frames of a write appended in batches to one HDF5 file, or to numbered parts and an index.

Layout (ARCHITECTURE.md §6, NeXus markup and SWMR in `h5_part`):

    /                                  attrs: format, request (JSON), request_id, writer, software_version,
                                              runs, start/stop time asked, first/last frame time, complete,
                                              end_reason, created_utc, closed_utc, default (NeXus)
    /module_<id>/<dp>/data             (N, H, W) frames, chunked, compressed as asked
    /module_<id>/<dp>/wr_timestamp_ns  (N,) int64, -1 where WR time is invalid
    /module_<id>/<dp>/host_timestamp_ns, frame_number, seq, seqno (-1: no file), file_index (into attr files)
    /module_<id>/<dp>/pff_header/<field>   (N,) for pulse height, (N, 4) per quabo for images
    /module_<id>/<dp>/pixel_y, pixel_x, counts (the group's n_frames etc., readable while the file grows)
                                       group attrs: module_id, dp, source, origin, runs, files, n_frames,
                                              missing_frames (sum of seq gaps), first/last timestamps

Files: with neither `max_frames_per_file` nor `max_file_size_mb` the recording is one file at `path`. With either,
it is parts `<stem>_part0001<suffix>`, `..._part0002...` beside `path`, and `path` is an index file whose
datasets are virtual: each stream's rows of every part, as one stack. A stream that first appears after the file
went into SWMR mode (no dataset can be added then; that is at the first flush that finds no new stream, about
1 s after the first frames; a write creates the streams flowing at its start at once, `prepare`) starts the next
part, so a one-file recording becomes parts too.
Each file is written as `<name>.<writer tag>.part` and renamed when closed: a crash leaves whole parts and one `.part`.

Flushing: frames are appended in whole chunks of `data`; a partial chunk waits at most one `flush()` (the jobs call
it every `FLUSH_PERIOD_S`), so a reader sees every frame within two flush periods (under 1 s), and compressed chunks
are seldom rewritten.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from std_daq_service.lifecycle import Lifecycle
from std_daq_service.protocol import Busy, FrameBatch
from std_daq_service.writer.chunk_codec import ChunkCompressor, codec_of
from std_daq_service.writer.h5_index import write_index
from std_daq_service.writer.h5_part import PER_FRAME, TIME_COLUMNS, H5Part, StreamShape, strings
from std_daq_service.writer.output_paths import part_path

log = logging.getLogger(__name__)

FLUSH_FRAMES = 4096
"""Frames queued per stream that are appended at once (a multiple of every data product's chunk)."""
FLUSH_PERIOD_S = 1 / 3
"""How often a job calls `flush()`: a frame reaches readers within two periods, 0.67 s (a partial chunk waits one).
A write far behind its streams flushes less often (`write_job._flush_period`)."""


def compression_options(name: str) -> dict[str, Any]:
    """h5py `create_dataset` keywords for a compression name of the protocol."""
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "bitshuffle_lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if name == "blosc_lz4":
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE))
    return {}


def describe_hdf5_error(exc: BaseException) -> str:
    """The system's reason inside an HDF5 error text (`File too large`, `No space left on device`)."""
    text = str(exc)
    found = re.search(r"errno = (\d+), error message = '([^']*)'", text)
    if found:
        return f"{found[2]} (errno {found[1]})"
    return text.splitlines()[0] if text else type(exc).__name__


def part_name(path: Path, number: int) -> Path:
    """The final name of part `number` (from 1) of a recording at `path`."""
    return path.with_name(f"{path.stem}_part{number:04d}{path.suffix}")


def rows_of(pieces: list[np.ndarray], rows: slice) -> list[np.ndarray]:
    """Rows `rows` of arrays taken as one, end to end: views of the pieces they lie in."""
    found, at = [], 0
    for piece in pieces:
        low, high = max(rows.start - at, 0), min(rows.stop - at, len(piece))
        if low < high:
            found.append(piece[low:high])
        at += len(piece)
    return found


@dataclass
class _Stream:
    """A stream over the whole recording: frames taken, frames waiting to be appended, and what they tell."""

    shape: StreamShape
    files: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    taken: int = 0
    written: int = 0
    missing: int = 0
    next_seq: int | None = None
    first: dict[str, int] = field(default_factory=dict)
    """Per timestamp column, its first valid (>= 0) value; `last` likewise."""
    last: dict[str, int] = field(default_factory=dict)
    first_time: int | None = None
    """Time (`frame_time_ns`) of the first frame; `last_time` of the last."""
    last_time: int | None = None
    pending: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]] = field(default_factory=list)
    """Batches waiting: (`data` and per-frame columns, PFF header columns, frame times)."""
    pending_frames: int = 0
    tail_held: bool = False
    """A partial chunk was held back at the last `flush()`: the next one writes it."""

    def group_attrs(self) -> dict[str, Any]:
        return {"n_frames": self.written, "missing_frames": self.missing,
                "files": strings(self.files), "runs": strings(self.runs),
                **{f"first_{k}": self.first.get(k, -1) for k in TIME_COLUMNS},
                **{f"last_{k}": self.last.get(k, -1) for k in TIME_COLUMNS}}


class H5Recording(Lifecycle):
    """One recording: `start()` creates the first file (`.part`); `commit()` closes it under `path`, complete or not.

    Closing without a commit discards the recording: nothing is left, no part either. `start()` and the writing
    methods raise OSError when a file cannot be created or written.

    Args:
        max_frames_per_file: rows of any stream per part; with `max_file_size_mb`, the recording is in parts.
        max_file_size_mb: bytes of the rows of a part before compression (so the file is at most about that).
        swmr: switch each file to SWMR write mode at its first `flush()`, so readers can open it live.
    """

    def __init__(self, path: Path, compression: str, attrs: dict[str, Any], *, max_frames_per_file: int | None = None,
                 max_file_size_mb: float | None = None, swmr: bool = True, overwrite: bool = False):
        self.path = path
        self.overwrite = overwrite
        self.compression = compression_options(compression)
        self.compression_name = compression
        self.codec = codec_of(compression)
        """What writes `data`'s chunks outside HDF5 (None: HDF5's filter does, as for gzip)."""
        self._compressor: ChunkCompressor | None = None
        self.attrs = attrs
        self.max_frames = max_frames_per_file
        self.max_bytes = None if max_file_size_mb is None else int(max_file_size_mb * 1e6)
        self.swmr = swmr
        self.rolling = max_frames_per_file is not None or max_file_size_mb is not None
        self.current: H5Part | None = None
        self.parts: list[Path] = []
        """Parts closed so far, in order."""
        self.streams: dict[tuple[int, str], _Stream] = {}
        self.conflicts: set[str] = set()
        self.bytes = 0
        self.committed = False
        self._streams_at_last_flush = 0

    @property
    def part(self) -> Path:
        """The file being written (`<name>.<writer tag>.part`)."""
        return part_path(self._file_name(len(self.parts) + 1))

    @property
    def file(self) -> h5py.File:
        """The open file of the current part, for groups beside the frames' streams (the coincidence events)."""
        if self.current is None or self.current.file is None:
            raise OSError(f"{self.path}: the recording is not open")
        return self.current.file

    def _file_name(self, number: int) -> Path:
        return part_name(self.path, number) if self.rolling else self.path

    def _open(self) -> None:
        self.parts, self.streams, self.conflicts, self.bytes, self.committed = [], {}, set(), 0, False
        self._streams_at_last_flush = 0
        if self.codec is not None:
            self._compressor = ChunkCompressor(self.codec).start()
        self._open_part()

    def _open_part(self) -> None:
        self.current = H5Part(self.part, self.compression, self.attrs, self._compressor)
        self.current.start()
        for stream in self.streams.values():
            self.current.add_stream(stream.shape)
        if self.swmr and self.streams:
            self.current.start_swmr()

    def _close_part(self, complete: bool, end_reason: str, attrs: dict[str, Any]) -> None:
        number = len(self.parts) + 1
        final = self._file_name(number)
        if self.rolling:
            attrs = {"part": number, "index_file": self.path.name, **attrs}
        self.current.close_as(final, {"complete": complete, "end_reason": end_reason,
                                      "conflicts": strings(sorted(self.conflicts)), **attrs}, self.overwrite)
        self.parts.append(final)

    def _roll(self, reason: str) -> None:
        """Close the file being written as a whole part and go on in the next."""
        self.rolling = True  # a one-file recording becomes parts: its file is part 1
        number = len(self.parts) + 1
        log.info("%s: part %d closed (%s)", self.path, number, reason)
        self._close_part(True, f"continued in {part_name(self.path, number + 1).name}: {reason}", {})
        self._open_part()

    def append(self, source: str, batch: FrameBatch, rows: slice) -> int:
        """Queue frames `rows` of a batch for writing; returns how many were taken (0 on a conflict)."""
        key = (batch.module_id, batch.dp)
        stream = self.streams.get(key) or self._new_stream(key, source, batch)
        if stream.shape.source != source:
            self.conflicts.add(f"module {key[0]} {key[1]} is published by {stream.shape.source} and {source}; "
                               f"recorded from {stream.shape.source} only")
            return 0
        images = batch.images[rows]
        n = len(images)
        if not n:
            return 0
        if batch.file and batch.file not in stream.files:
            stream.files.append(batch.file)
        if batch.run and batch.run not in stream.runs:
            stream.runs.append(batch.run)
        file_index = stream.files.index(batch.file) if batch.file else -1
        columns = {
            "data": images,
            "wr_timestamp_ns": batch.wr_timestamp_ns[rows],
            "host_timestamp_ns": batch.host_timestamp_ns[rows],
            "frame_number": batch.frame_number[rows],
            "seq": batch.seq[rows],
            "seqno": np.full(n, -1 if batch.seqno is None else batch.seqno, dtype=np.int64),
            "file_index": np.full(n, file_index, dtype=np.int32),
        }
        seq = columns["seq"]
        if stream.next_seq is not None and seq[0] > stream.next_seq:
            stream.missing += int(seq[0] - stream.next_seq)
        stream.missing += int((np.diff(seq) - 1).clip(min=0).sum())
        stream.next_seq = int(seq[-1]) + 1
        for name in TIME_COLUMNS:
            valid = columns[name][columns[name] >= 0]
            if len(valid):
                stream.first.setdefault(name, int(valid[0]))
                stream.last[name] = int(valid[-1])
        times = batch.frame_times_ns[rows]
        if stream.first_time is None:
            stream.first_time = int(times[0])
        stream.last_time = int(times[-1])
        stream.pending.append((columns, {name: values[rows] for name, values in batch.pff_columns.items()}, times))
        stream.pending_frames += n
        stream.taken += n
        if stream.pending_frames >= FLUSH_FRAMES:
            self._write(key, stream, everything=False)
        return n

    def prepare(self, source: str, batch: FrameBatch) -> None:
        """Create the datasets of a batch's stream before its first rows: a stream known to be flowing then never
        starts a new part by arriving after the file opened for readers."""
        key = (batch.module_id, batch.dp)
        if key not in self.streams:
            self._new_stream(key, source, batch)

    def _new_stream(self, key: tuple[int, str], source: str, batch: FrameBatch) -> _Stream:
        shape = StreamShape(module_id=key[0], dp=key[1], source=source, origin=batch.origin,
                            image_shape=tuple(batch.images.shape[1:]), dtype=batch.images.dtype,
                            pff_columns={name: values.shape[1:] for name, values in batch.pff_columns.items()},
                            compression_name=self.compression_name)
        stream = self.streams[key] = _Stream(shape)
        if self.current.swmr:
            self._roll(f"module {key[0]} {key[1]} appeared after the file was opened for readers")
        else:
            self.current.add_stream(shape)
        return stream

    def _room(self, key: tuple[int, str], stream: _Stream) -> int:
        """Rows of the stream the file being written still takes."""
        room = FLUSH_FRAMES << 20
        if self.max_frames is not None:
            room = self.max_frames - self.current.streams[key].rows
        if self.max_bytes is not None:
            fits = (self.max_bytes - self.current.bytes) // stream.shape.row_bytes
            room = min(room, fits if self.current.bytes else max(1, fits))
        return room

    def _write(self, key: tuple[int, str], stream: _Stream, everything: bool) -> None:
        """Append a stream's queued frames in whole chunks (`everything`: the partial chunk at the end too)."""
        if not stream.pending:
            return
        pieces = [p[0]["data"] for p in stream.pending]  # the frames are not copied into one array
        columns = {name: np.concatenate([p[0][name] for p in stream.pending]) for name in PER_FRAME}
        headers = {name: np.concatenate([p[1][name] for p in stream.pending]) for name in stream.shape.pff_columns}
        times = np.concatenate([p[2] for p in stream.pending])
        n = len(times)
        target = n
        if not everything:
            chunk, rows = stream.shape.chunk_frames, self.current.streams[key].rows
            target = max(0, (rows + n) // chunk * chunk - rows)
        done = 0
        while done < target:
            room = self._room(key, stream)
            if room <= 0:
                self._roll("max_frames_per_file reached" if self.max_frames is not None
                           and self.current.streams[key].rows >= self.max_frames else "max_file_size_mb reached")
                continue
            rows = slice(done, done + min(room, target - done))
            data = rows_of(pieces, rows)
            self.current.append(key, {"data": data, **{k: v[rows] for k, v in columns.items()}},
                                {k: v[rows] for k, v in headers.items()}, times[rows], stream.files, stream.runs)
            self.bytes += sum(piece.nbytes for piece in data)
            done = rows.stop
        stream.written += done
        rest = slice(done, n)
        stream.pending = [({"data": np.concatenate(rows_of(pieces, rest)), **{k: v[rest] for k, v in columns.items()}},
                           {k: v[rest] for k, v in headers.items()}, times[rest])] if done < n else []
        stream.pending_frames = n - done

    def flush(self, everything: bool = False) -> None:
        """Append queued frames (whole chunks; a partial chunk held back once already, too) and show them to readers.

        The first flush that finds the same streams in the file as the flush before switches it to SWMR mode, so
        streams that start within one flush period of each other are in one file.

        Raises:
            OSError: the data could not be written (disk full, file too large, I/O error).
        """
        try:
            for key, stream in self.streams.items():
                self._write(key, stream, everything or stream.tail_held)
                stream.tail_held = stream.pending_frames > 0
            settled = len(self.current.streams) == self._streams_at_last_flush
            if self.swmr and self.current.streams and settled and not self.current.swmr:
                self.current.start_swmr()
            self._streams_at_last_flush = len(self.current.streams)
            self.current.publish({})
        except (OSError, RuntimeError) as exc:  # h5py reports failed writes of cached chunks as RuntimeError
            raise OSError(describe_hdf5_error(exc)) from exc

    def summary(self) -> dict[str, Any]:
        """Per stream (`<module>/<dp>`): frames taken, rows appended to the files, missing frames, first/last times."""
        return {
            f"{module_id}/{dp}": {"frames": s.taken, "rows_in_file": s.written, "missing_frames": s.missing,
                                  "source": s.shape.source, "first_timestamp_ns": s.first_time,
                                  "last_timestamp_ns": s.last_time}
            for (module_id, dp), s in sorted(self.streams.items())
        }

    def time_span(self) -> tuple[int | None, int | None]:
        """First and last frame time (`frame_time_ns`) over every stream."""
        firsts = [s.first_time for s in self.streams.values() if s.first_time is not None]
        lasts = [s.last_time for s in self.streams.values() if s.last_time is not None]
        return min(firsts, default=None), max(lasts, default=None)

    def commit(self, complete: bool, end_reason: str, attrs: dict[str, Any] | None = None) -> Path:
        """Write what is queued and the closing attributes, close, rename; in parts, write the index at `path`.

        Raises:
            OSError: a file could not be written; the recording is still open (`close()` discards it).
            Busy: without overwrite, a file appeared under a final name meanwhile; the recording is discarded
                (what appeared stays).
        """
        self.flush(everything=True)
        try:
            self._close_part(complete, end_reason, attrs or {})
            if self.rolling:
                runs: list[str] = []
                for stream in self.streams.values():
                    runs += [r for r in stream.runs if r not in runs]
                first, last = self.time_span()
                write_index(self.path, self.parts, self.overwrite, {
                    **self.attrs, **(attrs or {}), "complete": complete, "end_reason": end_reason,
                    "runs": strings(runs), "conflicts": strings(sorted(self.conflicts)),
                    "parts": strings([p.name for p in self.parts]),
                    "first_timestamp_ns": -1 if first is None else first,
                    "last_timestamp_ns": -1 if last is None else last,
                }, {s.shape.group_name: s.group_attrs() for s in self.streams.values()})
        except Busy:
            self.close()
            raise
        except (OSError, RuntimeError) as exc:
            raise OSError(describe_hdf5_error(exc)) from exc
        self.committed = True
        self.close()
        return self.path

    def _release(self) -> None:
        """Discard an uncommitted recording (nothing is left: the file being written, and the parts closed)."""
        current, self.current = self.current, None
        if current is not None:
            current.close()
        compressor, self._compressor = self._compressor, None
        if compressor is not None:
            compressor.close()
        if not self.committed:
            for path in self.parts:
                path.unlink(missing_ok=True)
            part_path(self.path).unlink(missing_ok=True)
