"""Coincidence events of one event builder in an output file, under `/events`.

Layout (N events, M members; every array int64 unless said):

    /events                            attrs: source (the builder), n_events, n_members, missing_events (sum of
                                              event_id gaps), first_time_ns, last_time_ns, compression
    /events/event_id, time_ns, window_ns, multiplicity        (N,) per event, as in its `EventHeader`
    /events/domes                      (N,) str, the event's known domes joined by ","
    /events/members/event_index        (M,) row of the member's event in the per-event datasets
    /events/members/module_id, quabo, seq, wr_timestamp_ns, time_ns, pixel_max, pixel_sum   (M,)
    /events/members/source, dp         (M,) str: the agent, ph256 or ph1024
    /events/members/image_index        (M,) row of the member's image in /events/images/<dp>
    /events/images/<dp>                (K, H, W) int16 member images, compressed as the file's frames
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from std_daq_service.lifecycle import Lifecycle
from std_daq_service.pff import DATA_PRODUCTS
from std_daq_service.protocol import CoincidenceEvent
from std_daq_service.writer.h5_recording import H5Recording

EVENT_FIELDS = ("event_id", "time_ns", "window_ns", "multiplicity")
MEMBER_FIELDS = ("module_id", "quabo", "seq", "wr_timestamp_ns", "time_ns", "pixel_max", "pixel_sum")
_STRING_FIELDS = ("source", "dp")
_FLUSH_EVENTS = 256
_CHUNK_ROWS = 1024


class EventRecording(Lifecycle):
    """Append one builder's events to `/events` of a started `H5Recording`; `start()` creates the group.

    The recording owns the file (`.part`, commit, discard); `finish()` before committing it, `close()` before
    discarding it.
    """

    def __init__(self, recording: H5Recording, source: str):
        self.recording = recording
        self.source = source
        self.n_events = 0
        self.n_members = 0
        self.missing_events = 0
        self.first_time: int | None = None
        self.last_time: int | None = None
        self.bytes = 0
        self._next_id: int | None = None
        self._group: h5py.Group | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._images: dict[str, h5py.Dataset] = {}
        self._pending: list[CoincidenceEvent] = []

    def _open(self) -> None:
        self._group = self.recording.file.create_group("events")
        members = self._group.create_group("members")
        self._group.create_group("images")
        for name in EVENT_FIELDS:
            self._datasets[name] = _column(self._group, name, np.int64)
        self._datasets["domes"] = _column(self._group, "domes", h5py.string_dtype())
        for name in ("event_index", *MEMBER_FIELDS, "image_index"):
            self._datasets[f"members/{name}"] = _column(members, name, np.int64)
        for name in _STRING_FIELDS:
            self._datasets[f"members/{name}"] = _column(members, name, h5py.string_dtype())

    def _release(self) -> None:
        self._datasets.clear()
        self._images.clear()
        self._group = None

    def append(self, event: CoincidenceEvent) -> None:
        """Queue one event for writing."""
        header = event.header
        if self._next_id is not None and header.event_id > self._next_id:
            self.missing_events += header.event_id - self._next_id
        self._next_id = header.event_id + 1
        if self.first_time is None:
            self.first_time = header.time_ns
        self.last_time = header.time_ns
        self.n_events += 1
        self.n_members += len(header.members)
        self._pending.append(event)
        if len(self._pending) >= _FLUSH_EVENTS:
            self.flush()

    def flush(self) -> None:
        """Append the queued events to the datasets (HDF5 writes them out at the recording's flush)."""
        if not self._pending:
            return
        events, self._pending = self._pending, []
        first_row = self._datasets["event_id"].shape[0]
        columns: dict[str, list[Any]] = {name: [] for name in self._datasets}
        images: dict[str, list[np.ndarray]] = {}
        for row, event in enumerate(events, start=first_row):
            header = event.header
            for name in EVENT_FIELDS:
                columns[name].append(getattr(header, name))
            columns["domes"].append(",".join(header.domes))
            for member, image in zip(header.members, event.images, strict=True):
                columns["members/event_index"].append(row)
                for name in (*MEMBER_FIELDS, *_STRING_FIELDS):
                    columns[f"members/{name}"].append(getattr(member, name))
                product_images = images.setdefault(member.dp, [])
                columns["members/image_index"].append(self._image_rows(member.dp) + len(product_images))
                product_images.append(image)
        for name, values in columns.items():
            _extend(self._datasets[name], np.array(values, dtype=self._datasets[name].dtype))
        for dp, stack in images.items():
            stacked = np.stack(stack)
            _extend(self._image_dataset(dp), stacked)
            self.bytes += stacked.nbytes

    def _image_rows(self, dp: str) -> int:
        return self._images[dp].shape[0] if dp in self._images else 0

    def _image_dataset(self, dp: str) -> h5py.Dataset:
        if dp not in self._images:
            product = DATA_PRODUCTS[dp]
            height, width = product.shape
            chunk = max(1, (512 << 10) // product.image_size)
            self._images[dp] = self._group["images"].create_dataset(
                dp, shape=(0, height, width), maxshape=(None, height, width), dtype=product.dtype,
                chunks=(chunk, height, width), **self.recording.compression)
        return self._images[dp]

    def finish(self) -> dict[str, Any]:
        """Write what is queued and the group's attributes, and let go of the datasets (before the recording
        commits); returns the root attributes the commit should set. Safe to call again."""
        if self.started:
            self.flush()
            self._group.attrs.update({
                "source": self.source, "n_events": self.n_events, "n_members": self.n_members,
                "missing_events": self.missing_events, "compression": self.recording.compression_name,
                "first_time_ns": -1 if self.first_time is None else self.first_time,
                "last_time_ns": -1 if self.last_time is None else self.last_time,
            })
            self.close()
        return {"first_timestamp_ns": -1 if self.first_time is None else self.first_time,
                "last_timestamp_ns": -1 if self.last_time is None else self.last_time}


def _column(group: h5py.Group, name: str, dtype: Any) -> h5py.Dataset:
    return group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(_CHUNK_ROWS,), dtype=dtype)


def _extend(dataset: h5py.Dataset, values: np.ndarray) -> None:
    start = dataset.shape[0]
    dataset.resize(start + len(values), axis=0)
    dataset[start:] = values
