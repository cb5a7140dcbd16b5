"""One HDF5 output file: frames of each stream appended in batches, written as `.part`, renamed when committed.

Layout (ARCHITECTURE.md §6):

    /                                  attrs: format, request (JSON), request_id, writer, software_version,
                                              runs, start/stop time asked, first/last frame time, complete,
                                              end_reason, created_utc, closed_utc
    /module_<id>/<dp>/data             (N, H, W) frames, chunked, compressed as asked
    /module_<id>/<dp>/wr_timestamp_ns  (N,) int64, -1 where WR time is invalid
    /module_<id>/<dp>/host_timestamp_ns, frame_number, seq, seqno (-1: no file), file_index (into attr files)
    /module_<id>/<dp>/pff_header/<field>   (N,) for pulse height, (N, 4) per quabo for images
                                       group attrs: module_id, dp, source, origin, runs, files, n_frames,
                                              missing_frames (sum of seq gaps), first/last timestamps
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from std_daq_service import __version__
from std_daq_service.lifecycle import Lifecycle
from std_daq_service.protocol import Busy, FrameBatch
from std_daq_service.writer.output_paths import move_into_place, part_path

log = logging.getLogger(__name__)

FORMAT = "panoseti-std-daq-h5"
FORMAT_VERSION = "1"
FLUSH_FRAMES = 4096
_CHUNK_BYTES = 512 << 10
_CHUNK_FRAMES = 1024  # of the per-frame arrays
_PER_FRAME = ("wr_timestamp_ns", "host_timestamp_ns", "frame_number", "seq", "seqno", "file_index")


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


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=h5py.string_dtype())


@dataclass
class _Stream:
    """Datasets of one stream in the file, and the frames waiting to be appended."""

    group: h5py.Group
    source: str
    datasets: dict[str, h5py.Dataset] = field(default_factory=dict)
    """Kept open for the whole recording: a dataset closing writes its cached chunks, out of our sight."""
    fields: dict[str, h5py.Dataset] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    n: int = 0
    missing: int = 0
    next_seq: int | None = None
    first: dict[str, int] = field(default_factory=dict)
    """Per timestamp column, its first valid (>= 0) value; `last` likewise."""
    last: dict[str, int] = field(default_factory=dict)
    first_time: int | None = None
    """Time (`frame_time_ns`) of the first frame; `last_time` of the last."""
    last_time: int | None = None
    pending: list[tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]] = field(default_factory=list)
    pending_frames: int = 0


class H5Recording(Lifecycle):
    """One output file: `start()` creates its `.part` file; `commit()` closes it under `path`, complete or not.

    Closing without a commit discards the file: nothing is left. `start()` and the writing methods raise
    OSError (from h5py) when the file cannot be created or written.
    """

    def __init__(self, path: Path, compression: str, attrs: dict[str, Any], overwrite: bool = False):
        self.path = path
        self.overwrite = overwrite
        self.part = part_path(path)
        self.compression = compression_options(compression)
        self.compression_name = compression
        self.attrs = attrs
        self.file: h5py.File | None = None
        self.streams: dict[tuple[int, str], _Stream] = {}
        self.conflicts: set[str] = set()
        self.bytes = 0
        self.committed = False

    def _open(self) -> None:
        self.streams, self.conflicts, self.bytes, self.committed = {}, set(), 0, False
        self.part.unlink(missing_ok=True)  # a leftover, or a planted symlink: never written through
        self.file = h5py.File(self.part, "w-", libver="latest")
        self.file.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                                "software_version": __version__, "created_utc": _utc_now(),
                                "complete": False, "end_reason": "being written"})
        self._set_attrs(self.attrs)

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self.file.attrs[key] = json.dumps(value) if isinstance(value, dict | list) else value

    def append(self, source: str, batch: FrameBatch, rows: slice) -> int:
        """Queue frames `rows` of a batch for writing; returns how many were taken (0 on a conflict)."""
        key = (batch.module_id, batch.dp)
        stream = self.streams.get(key) or self._new_stream(key, source, batch)
        if stream.source != source:
            self.conflicts.add(f"module {key[0]} {key[1]} is published by {stream.source} and {source}; "
                               f"recorded from {stream.source} only")
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
        per_frame = {
            "wr_timestamp_ns": batch.wr_timestamp_ns[rows],
            "host_timestamp_ns": batch.host_timestamp_ns[rows],
            "frame_number": batch.frame_number[rows],
            "seq": batch.seq[rows],
            "seqno": np.full(n, -1 if batch.seqno is None else batch.seqno, dtype=np.int64),
            "file_index": np.full(n, file_index, dtype=np.int32),
        }
        seq = per_frame["seq"]
        if stream.next_seq is not None and seq[0] > stream.next_seq:
            stream.missing += int(seq[0] - stream.next_seq)
        stream.missing += int((np.diff(seq) - 1).clip(min=0).sum())
        stream.next_seq = int(seq[-1]) + 1
        for name in ("wr_timestamp_ns", "host_timestamp_ns"):
            valid = per_frame[name][per_frame[name] >= 0]
            if len(valid):
                stream.first.setdefault(name, int(valid[0]))
                stream.last[name] = int(valid[-1])
        times = batch.frame_times_ns[rows]
        if stream.first_time is None:
            stream.first_time = int(times[0])
        stream.last_time = int(times[-1])
        stream.pending.append((images, per_frame, {name: values[rows] for name, values in batch.pff_columns.items()}))
        stream.pending_frames += n
        if stream.pending_frames >= FLUSH_FRAMES:
            self._flush(stream)
        return n

    def _new_stream(self, key: tuple[int, str], source: str, batch: FrameBatch) -> _Stream:
        module_id, dp = key
        group = self.file.require_group(f"module_{module_id}").create_group(dp)
        height, width = batch.images.shape[1:]
        frame_bytes = batch.images[0].nbytes if len(batch) else height * width * 2
        chunk = max(1, _CHUNK_BYTES // frame_bytes)
        datasets = {"data": group.create_dataset(
            "data", shape=(0, height, width), maxshape=(None, height, width), dtype=batch.images.dtype,
            chunks=(chunk, height, width), **self.compression)}
        for name in _PER_FRAME:
            datasets[name] = group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(_CHUNK_FRAMES,),
                                                  dtype=np.int32 if name == "file_index" else np.int64)
        header_group = group.create_group("pff_header")
        fields = {}
        for name, values in batch.pff_columns.items():
            shape = values.shape[1:]
            fields[name] = header_group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape),
                                                       chunks=(_CHUNK_FRAMES, *shape), dtype=np.int64)
        group.attrs.update({"module_id": module_id, "dp": dp, "source": source,
                            "origin": batch.origin, "compression": self.compression_name})
        stream = self.streams[key] = _Stream(group, source, datasets, fields)
        return stream

    def _flush(self, stream: _Stream) -> None:
        """Append a stream's queued frames (errors of cached chunks show at the next `flush()`)."""
        if not stream.pending:
            return
        images = np.concatenate([p[0] for p in stream.pending])
        n, start = len(images), stream.n
        columns = {"data": images, **{name: np.concatenate([p[1][name] for p in stream.pending])
                                      for name in _PER_FRAME}}
        for name, dataset in stream.datasets.items():
            dataset.resize(start + n, axis=0)
            dataset[start:] = columns[name]
        for name, dataset in stream.fields.items():
            dataset.resize(start + n, axis=0)
            dataset[start:] = np.concatenate([p[2][name] for p in stream.pending])
        stream.n += n
        self.bytes += images.nbytes
        stream.pending.clear()
        stream.pending_frames = 0

    def flush(self) -> None:
        """Write every queued frame to the file and out of HDF5's caches.

        Raises:
            OSError: the data could not be written (disk full, file too large, I/O error).
        """
        try:
            for stream in self.streams.values():
                self._flush(stream)
            self.file.flush()
        except (OSError, RuntimeError) as exc:  # h5py reports failed writes of cached chunks as RuntimeError
            raise OSError(describe_hdf5_error(exc)) from exc

    def summary(self) -> dict[str, Any]:
        """Per stream (`<module>/<dp>`): frames taken, rows appended to the file, missing frames, first/last times."""
        return {
            f"{module_id}/{dp}": {"frames": s.n + s.pending_frames, "rows_in_file": s.n, "missing_frames": s.missing,
                                  "source": s.source, "first_timestamp_ns": s.first_time,
                                  "last_timestamp_ns": s.last_time}
            for (module_id, dp), s in sorted(self.streams.items())
        }

    def time_span(self) -> tuple[int | None, int | None]:
        """First and last frame time (`frame_time_ns`) over every stream."""
        firsts = [s.first_time for s in self.streams.values() if s.first_time is not None]
        lasts = [s.last_time for s in self.streams.values() if s.last_time is not None]
        return min(firsts, default=None), max(lasts, default=None)

    def commit(self, complete: bool, end_reason: str, attrs: dict[str, Any] | None = None) -> Path:
        """Write what is queued and the closing attributes, close, and rename the file to `path`.

        Raises:
            OSError: the file could not be written; it is still open (`close()` discards it).
            Busy: without overwrite, a file appeared at `path` meanwhile; this one is discarded.
        """
        self.flush()
        runs: list[str] = []
        for stream in self.streams.values():
            stream.group.attrs.update({
                "n_frames": stream.n, "missing_frames": stream.missing,
                "files": _strings(stream.files), "runs": _strings(stream.runs),
                **{f"first_{k}": v for k, v in stream.first.items()},
                **{f"last_{k}": v for k, v in stream.last.items()},
            })
            runs += [r for r in stream.runs if r not in runs]
        first, last = self.time_span()
        self.file.attrs.update({
            "complete": complete, "end_reason": end_reason, "closed_utc": _utc_now(), "runs": _strings(runs),
            "first_timestamp_ns": -1 if first is None else first,
            "last_timestamp_ns": -1 if last is None else last,
            "conflicts": _strings(sorted(self.conflicts)),
        })
        self._set_attrs(attrs or {})
        self.file.close()  # if this fails the file is still ours: close() discards it
        self.file = None
        try:
            move_into_place(self.part, self.path, self.overwrite)
        except Busy:
            self.close()  # discarded: what appeared under the name stays
            raise
        self.committed = True
        self.close()
        return self.path

    def _release(self) -> None:
        """Discard an uncommitted file (nothing is left), whatever state it is in."""
        if self.committed:
            return
        file, self.file = self.file, None
        self.streams.clear()  # drop every dataset handle before the file
        try:
            if file is not None and file.id.valid:
                # What HDF5 still holds in its caches is not wanted: let it go to /dev/null. Closing a file whose
                # writes keep failing crashes the HDF5 library (h5py 3.16), so the close must not see a failure.
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, file.id.get_vfd_handle())
                finally:
                    os.close(null)
                file.close()
        except (OSError, RuntimeError) as exc:  # the file goes anyway; the caller's own error is the one to see
            log.warning("discarding %s: %s", self.part, exc)
        finally:
            self.part.unlink(missing_ok=True)
