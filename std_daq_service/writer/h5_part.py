"""One HDF5 file of a recording (the whole recording, or one of its parts): layout, NeXus markup, SWMR, appends.

The file is written as `<name>.part` with `libver="latest"`; `start_swmr()` switches it to SWMR write mode once
every stream's datasets exist (no object can be created after). From then on a reader opening it with
`h5py.File(path, "r", swmr=True, libver="latest")` sees, after `dataset.refresh()`, the rows appended up to the
last `publish()`; each stream's `counts` dataset, refreshed and read before the others are refreshed, says how
many rows every dataset of the stream holds for sure. `close_as(path)` closes the file and renames it; closing
without it discards the file.

NeXus markup around the layout of ARCHITECTURE.md §6: the root is `NXroot` with `default` naming the module
group of the first stream (movies before pulse heights, then by module id); each `module_<id>` group is an
`NXentry` whose `default` names its first stream; each stream group is an
`NXdata` (`signal="data"`, `axes=["wr_timestamp_ns", "pixel_y", "pixel_x"]`), `data` has
`interpretation="image"`; the time datasets have `units="ns"`; `wr_timestamp_ns`, `pixel_y` and `pixel_x` are h5py
dimension scales of `data` (and `wr_timestamp_ns` of every per-frame dataset), so xarray opens a stream group
without `phony_dims`.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from std_daq_service import __version__
from std_daq_service.lifecycle import Lifecycle
from std_daq_service.writer.chunk_codec import ChunkCompressor, chunk_rows
from std_daq_service.writer.output_paths import move_into_place

log = logging.getLogger(__name__)

FORMAT = "panoseti-std-daq-h5"
FORMAT_VERSION = "2"
"""2: NeXus markup, dimension scales, `counts`, written in SWMR mode, parts with an index."""
CHUNK_BYTES = 512 << 10
"""Of `data`'s chunks."""
_CHUNK_FRAMES = 1024  # of the per-frame arrays
_CREATE_TRIES = 20
_CREATE_RETRY_S = 0.01
QUEUED_ROWS = 1 << 16
"""Per-frame rows of a stream held for one write at most (about 14 MB for img16)."""
PER_FRAME = ("wr_timestamp_ns", "host_timestamp_ns", "frame_number", "seq", "seqno", "file_index")
TIME_COLUMNS = ("wr_timestamp_ns", "host_timestamp_ns")
COUNTS_DTYPE = np.dtype([("n_frames", "<i8"), ("missing_frames", "<i8"),
                         ("first_wr_timestamp_ns", "<i8"), ("last_wr_timestamp_ns", "<i8"),
                         ("first_host_timestamp_ns", "<i8"), ("last_host_timestamp_ns", "<i8")])
"""Of the per-stream `counts` dataset: the group attributes of the same names, readable live (-1: none yet)."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=h5py.string_dtype())


def set_attrs(obj: h5py.HLObject, attrs: dict[str, Any], written: dict[str, Any] | None = None) -> None:
    """Attributes as stored: dicts and lists as JSON, the rest (numbers, strings, arrays) as they are.

    With `written` (what this call last wrote on `obj`, kept by the caller), only attributes whose values changed are
    written: each write of an attribute is several metadata operations, and a live file's are written every flush.
    """
    for key, value in attrs.items():
        stored = json.dumps(value) if isinstance(value, dict | list) else value
        if written is not None:
            seen = stored.tolist() if isinstance(stored, np.ndarray) else stored
            if key in written and written[key] == seen:
                continue
            written[key] = seen
        obj.attrs[key] = stored


def append_rows(dataset: h5py.Dataset, start: int, values: np.ndarray) -> None:
    """Extend `dataset` to `start + len(values)` rows and write `values` there, through h5py's low-level calls (half
    the cost of `resize` and a slice assignment, which matters for the many small per-frame datasets)."""
    dataset_id = dataset.id
    dataset_id.set_extent((start + len(values), *values.shape[1:]))
    space = dataset_id.get_space()
    space.select_hyperslab((start, *(0,) * (values.ndim - 1)), values.shape)
    dataset_id.write(h5py.h5s.create_simple(values.shape), space, np.ascontiguousarray(values))


@dataclass(frozen=True)
class StreamShape:
    """What it takes to create a stream's datasets in any file: from its first batch."""

    module_id: int
    dp: str
    source: str
    origin: str
    image_shape: tuple[int, int]
    dtype: np.dtype
    pff_columns: dict[str, tuple[int, ...]]
    compression_name: str

    @property
    def group_name(self) -> str:
        return f"module_{self.module_id}/{self.dp}"

    @property
    def row_bytes(self) -> int:
        """Bytes of one frame in the file before compression, every dataset together."""
        per_frame = 8 * (len(PER_FRAME) - 1) + 4
        headers = sum(8 * int(np.prod(shape)) for shape in self.pff_columns.values())
        return int(np.prod(self.image_shape)) * self.dtype.itemsize + per_frame + headers

    @property
    def chunk_frames(self) -> int:
        return max(1, CHUNK_BYTES // (int(np.prod(self.image_shape)) * self.dtype.itemsize))


@dataclass
class PartStream:
    """A stream's datasets in one file and what they hold."""

    shape: StreamShape
    group: h5py.Group
    datasets: dict[str, h5py.Dataset]
    """Kept open for the whole file: a dataset closing writes its cached chunks, out of our sight."""
    fields: dict[str, h5py.Dataset]
    counts: h5py.Dataset
    files: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    rows: int = 0
    missing: int = 0
    next_seq: int | None = None
    first: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    first_time: int | None = None
    """`frame_time_ns` of the first row; `last_time` of the last."""
    last_time: int | None = None
    queued: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = field(default_factory=list)
    """Per-frame columns and PFF fields of rows appended, written together at `publish()` (or beyond
    `QUEUED_ROWS`): few large writes of these small datasets instead of many."""
    queued_rows: int = 0
    tail: np.ndarray | None = None
    """With a codec: the rows of `data`'s last chunk while it is partial, to write it whole again when it grows."""
    attrs_written: dict[str, Any] = field(default_factory=dict)
    """The group attributes as last published (`set_attrs`)."""

    def group_attrs(self) -> dict[str, Any]:
        return {"n_frames": self.rows, "missing_frames": self.missing,
                "files": strings(self.files), "runs": strings(self.runs),
                **{f"first_{k}": self.first.get(k, -1) for k in TIME_COLUMNS},
                **{f"last_{k}": self.last.get(k, -1) for k in TIME_COLUMNS}}


def mark_up(group: h5py.Group) -> None:
    """NeXus attributes and dimension scales of a stream group whose datasets exist (parts and index)."""
    group.attrs.update({"NX_class": "NXdata", "signal": "data"})
    group.attrs["axes"] = strings(["wr_timestamp_ns", "pixel_y", "pixel_x"])
    data, time = group["data"], group["wr_timestamp_ns"]
    data.attrs["interpretation"] = "image"
    for name in TIME_COLUMNS:
        group[name].attrs["units"] = "ns"
    for axis, name in ((0, "wr_timestamp_ns"), (1, "pixel_y"), (2, "pixel_x")):
        group[name].make_scale(name)
        data.dims[axis].attach_scale(group[name])
    for name in PER_FRAME[1:]:
        group[name].dims[0].attach_scale(time)


def _rank(module_id: int, dp: str) -> tuple[bool, int, str]:
    return not dp.startswith("img"), module_id, dp


def mark_up_entry(file: h5py.File, module_id: int, dp: str) -> None:
    """`default` attributes down to the first stream: movies before pulse heights, then by module and name."""
    entry = file[f"module_{module_id}"]
    entry.attrs["NX_class"] = "NXentry"
    if "default" not in entry.attrs or _rank(module_id, dp) < _rank(module_id, entry.attrs["default"]):
        entry.attrs["default"] = dp
    if "default" in file.attrs:
        current = file.attrs["default"]
        current_id = int(current.removeprefix("module_"))
        if _rank(current_id, file[current].attrs["default"]) <= _rank(module_id, entry.attrs["default"]):
            return
    file.attrs["default"] = f"module_{module_id}"


def create_pixel_scales(group: h5py.Group, image_shape: tuple[int, int]) -> None:
    group.create_dataset("pixel_y", data=np.arange(image_shape[0], dtype=np.int32))
    group.create_dataset("pixel_x", data=np.arange(image_shape[1], dtype=np.int32))


class H5Part(Lifecycle):
    """One file: `start()` creates `<live_path>`; `close_as(path)` closes and renames it; `close()` discards it.

    Writing methods raise OSError or RuntimeError (h5py's) when the file cannot be written.

    Args:
        compression: h5py `create_dataset` keywords of `data`'s filter.
        codec: that filter's own compression (or none), outside HDF5, started (`chunk_codec`): `data` is then
            written in whole chunks compressed in threads, with `write_direct_chunk`; the file is the same.
    """

    def __init__(self, live_path: Path, compression: dict[str, Any], attrs: dict[str, Any],
                 codec: ChunkCompressor | None = None):
        self.live_path = live_path
        self.compression = compression
        self.codec = codec
        self._compressing: collections.deque[tuple[h5py.h5d.DatasetID, tuple[int, int, int], Future[memoryview]]] = (
            collections.deque())
        """Chunks of `data` being compressed, in the order they are written: those of an append are written
        during the next (or at `publish()`), so compressing overlaps with what the writer does meanwhile."""
        self.attrs = attrs
        self.file: h5py.File | None = None
        self.streams: dict[tuple[int, str], PartStream] = {}
        self._attrs_written: dict[str, Any] = {}
        """The root attributes as last published (`set_attrs`)."""
        self.bytes = 0
        """Bytes of the rows appended, before compression."""
        self.committed = False

    def _open(self) -> None:
        self.streams, self.bytes, self.committed, self._attrs_written = {}, 0, False, {}
        self._compressing.clear()
        self.file = self._create()
        self.file.attrs.update({"NX_class": "NXroot", "format": FORMAT, "format_version": FORMAT_VERSION,
                                "software_version": __version__, "created_utc": utc_now(),
                                "complete": False, "end_reason": "being written",
                                "first_timestamp_ns": -1, "last_timestamp_ns": -1})
        set_attrs(self.file, self.attrs)

    def _create(self) -> h5py.File:
        """Create `live_path`. A reader polling for the file may lock it in the instant between its creation and
        HDF5's own lock (HDF5 then fails with EAGAIN): that lock lasts only as long as the reader's failed open,
        so the creation is tried again, a few times."""
        attempt = 1
        while True:
            self.live_path.unlink(missing_ok=True)  # a leftover, or a planted symlink: never written through
            try:
                return h5py.File(self.live_path, "w-", libver="latest")
            except OSError as exc:
                if exc.errno != errno.EAGAIN or attempt == _CREATE_TRIES:
                    raise
            attempt += 1
            time.sleep(_CREATE_RETRY_S)

    @property
    def swmr(self) -> bool:
        return self.file is not None and self.file.swmr_mode

    def start_swmr(self) -> None:
        """Readers may open the file from now on; no stream can be added after."""
        self.file.swmr_mode = True

    def add_stream(self, shape: StreamShape) -> PartStream:
        group = self.file.require_group(f"module_{shape.module_id}").create_group(shape.dp)
        height, width = shape.image_shape
        datasets = {"data": group.create_dataset(
            "data", shape=(0, height, width), maxshape=(None, height, width), dtype=shape.dtype,
            chunks=(shape.chunk_frames, height, width), **self.compression)}
        for name in PER_FRAME:
            datasets[name] = group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(_CHUNK_FRAMES,),
                                                  dtype=np.int32 if name == "file_index" else np.int64)
        create_pixel_scales(group, shape.image_shape)
        header_group = group.create_group("pff_header")
        fields = {name: header_group.create_dataset(name, shape=(0, *dims), maxshape=(None, *dims),
                                                    chunks=(_CHUNK_FRAMES, *dims), dtype=np.int64)
                  for name, dims in shape.pff_columns.items()}
        counts = group.create_dataset("counts", shape=(), dtype=COUNTS_DTYPE)
        mark_up(group)
        mark_up_entry(self.file, shape.module_id, shape.dp)
        group.attrs.update({"module_id": shape.module_id, "dp": shape.dp, "source": shape.source,
                            "origin": shape.origin, "compression": shape.compression_name})
        stream = self.streams[(shape.module_id, shape.dp)] = PartStream(shape, group, datasets, fields, counts)
        self._publish_stream(stream)
        return stream

    def append(self, key: tuple[int, str], columns: dict[str, np.ndarray], headers: dict[str, np.ndarray],
               times: np.ndarray, files: list[str], runs: list[str]) -> None:
        """Append rows (`columns`: `data`, as a list of arrays whose rows follow each other, and the per-frame
        arrays; `headers`: the PFF fields; `times`: their `frame_time_ns`; `files` and `runs`: the stream's lists
        `file_index` points into, so far)."""
        stream = self.streams[key]
        seq, n, start = columns["seq"], len(columns["seq"]), stream.rows
        compressing = len(self._compressing)
        data = stream.datasets["data"]
        if self.codec is not None:
            self._compress(stream, columns["data"], start)
        if self.codec is None:
            append_rows(data, start, np.concatenate(columns["data"]))
        else:
            data.id.set_extent((start + n, *stream.shape.image_shape))
        stream.queued.append(({name: columns[name] for name in PER_FRAME}, headers))
        stream.queued_rows += n
        if stream.queued_rows >= QUEUED_ROWS:
            self._write_queued(stream, start + n)
        self._write_chunks(compressing)
        if stream.next_seq is not None and seq[0] > stream.next_seq:
            stream.missing += int(seq[0] - stream.next_seq)
        stream.missing += int((np.diff(seq) - 1).clip(min=0).sum())
        stream.next_seq = int(seq[-1]) + 1
        for name in TIME_COLUMNS:
            valid = columns[name][columns[name] >= 0]
            if len(valid):
                stream.first.setdefault(name, int(valid[0]))
                stream.last[name] = int(valid[-1])
        if stream.first_time is None:
            stream.first_time = int(times[0])
        stream.last_time = int(times[-1])
        stream.files, stream.runs = list(files), list(runs)
        stream.rows += n
        self.bytes += n * stream.shape.row_bytes

    def _compress(self, stream: PartStream, data: list[np.ndarray], start: int) -> None:
        """Start compressing the chunks that rows `data` from `start` on fill (from the held partial chunk on,
        which is written whole again); hold the new partial chunk."""
        frames = stream.shape.chunk_frames
        chunks = list(chunk_rows([stream.tail, *data] if stream.tail is not None else data, frames))
        last = sum(len(part) for part in chunks[-1])
        stream.tail = np.concatenate(chunks[-1]) if last < frames else None
        dataset, first = stream.datasets["data"].id, start - start % frames
        for i, chunk in enumerate(chunks):
            self._compressing.append((dataset, (first + i * frames, 0, 0), self.codec.submit(chunk, frames)))

    def _write_queued(self, stream: PartStream, rows: int) -> None:
        """Write the queued per-frame rows of a stream that has `rows` rows of `data`."""
        if not stream.queued:
            return
        start = rows - stream.queued_rows
        for group, datasets in ((0, stream.datasets), (1, stream.fields)):
            for name, dataset in datasets.items():
                if name != "data":
                    append_rows(dataset, start, np.concatenate([q[group][name] for q in stream.queued]))
        stream.queued, stream.queued_rows = [], 0

    def _write_chunks(self, count: int | None = None) -> None:
        """Write the first `count` (all: None) chunks being compressed, in order (a partial chunk written again
        comes after its earlier state), waiting for them."""
        for _ in range(len(self._compressing) if count is None else count):
            dataset, offset, chunk = self._compressing.popleft()
            dataset.write_direct_chunk(offset, chunk.result())

    def time_span(self) -> tuple[int, int]:
        """First and last frame time in the file (-1: none)."""
        firsts = [s.first_time for s in self.streams.values() if s.first_time is not None]
        lasts = [s.last_time for s in self.streams.values() if s.last_time is not None]
        return min(firsts, default=-1), max(lasts, default=-1)

    def runs(self) -> list[str]:
        runs: list[str] = []
        for stream in self.streams.values():
            runs += [r for r in stream.runs if r not in runs]
        return runs

    def publish(self, attrs: dict[str, Any]) -> None:
        """Make the rows appended so far count for readers: flush them, then the counts and attributes.

        The counts are written after the rows reached the file, so they never claim rows a reader cannot see.
        """
        self._write_chunks()
        for stream in self.streams.values():
            self._write_queued(stream, stream.rows)
        self.file.flush()
        for stream in self.streams.values():
            self._publish_stream(stream)
        first, last = self.time_span()
        set_attrs(self.file, {"first_timestamp_ns": first, "last_timestamp_ns": last, **attrs}, self._attrs_written)
        self.file.flush()

    def _publish_stream(self, stream: PartStream) -> None:
        attrs = stream.group_attrs()
        stream.counts[()] = np.array(tuple(attrs[name] for name in COUNTS_DTYPE.names), dtype=COUNTS_DTYPE)
        set_attrs(stream.group, attrs, stream.attrs_written)

    def close_as(self, path: Path, attrs: dict[str, Any], overwrite: bool) -> Path:
        """Publish, write the closing attributes, close, and rename the file to `path` (replacing a file there
        only with `overwrite`).

        Raises:
            OSError, RuntimeError: the file could not be written; it is still open (`close()` discards it).
            Busy: without overwrite, a file appeared at `path` meanwhile (`close()` discards this one).
        """
        self.publish({"closed_utc": utc_now(), "runs": strings(self.runs()), **attrs})
        self.file.close()  # if this fails the file is still ours: close() discards it
        self.file = None
        move_into_place(self.live_path, path, overwrite)
        self.committed = True
        self.close()
        return path

    def _release(self) -> None:
        """Discard an uncommitted file (nothing is left), whatever state it is in."""
        if self.committed:
            return
        file, self.file = self.file, None
        try:
            if file is not None and file.id.valid:
                # What HDF5 still holds in its caches is not wanted: let it go to /dev/null, before any dataset
                # closes. A dataset or file close whose writes fail leaves the HDF5 library broken (h5py 3.16:
                # the next file crashes the process), so no close may see a failure.
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, file.id.get_vfd_handle())
                finally:
                    os.close(null)
                self.streams.clear()  # drop every dataset handle before the file
                self._compressing.clear()
                file.close()
        except (OSError, RuntimeError) as exc:  # the file goes anyway; the caller's own error is the one to see
            log.warning("discarding %s: %s", self.live_path, exc)
        finally:
            self.streams.clear()
            self._compressing.clear()
            self.live_path.unlink(missing_ok=True)
