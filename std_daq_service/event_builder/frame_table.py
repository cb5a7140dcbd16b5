"""Pulse-height frames as columns (one int64 array per field), the unit the event builder buffers and matches."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from std_daq_service.protocol import FrameBatch

PULSE_HEIGHT_PRODUCTS = ("ph256", "ph1024")


@dataclass(frozen=True)
class FrameTable:
    """n frames, one int64 array per field.

    Attributes:
        time_ns: WR time minus the module's configured delay (`time_offsets_ns`).
        quabo: the ph256 frame's `quabo_num`; -1 for ph1024 (all four quabos of the module).
        dp: index into `PULSE_HEIGHT_PRODUCTS`.
        source: index into the builder's list of agent names.
        chunk, row: where the frame's image is kept (`chunk` names an images array, `row` its frame).
        arrival_ns: when the builder received the frame (host clock).
    """

    module: np.ndarray
    quabo: np.ndarray
    seq: np.ndarray
    wr_ns: np.ndarray
    time_ns: np.ndarray
    pixel_max: np.ndarray
    pixel_sum: np.ndarray
    dp: np.ndarray
    source: np.ndarray
    chunk: np.ndarray
    row: np.ndarray
    arrival_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.time_ns)

    def take(self, index: np.ndarray | slice) -> FrameTable:
        """The frames at `index`, as a table of their own."""
        return FrameTable(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    @staticmethod
    def concat(tables: list[FrameTable]) -> FrameTable:
        if not tables:
            return empty_table()
        if len(tables) == 1:
            return tables[0]
        return FrameTable(**{f.name: np.concatenate([getattr(t, f.name) for t in tables])
                             for f in dataclasses.fields(FrameTable)})


def empty_table() -> FrameTable:
    return FrameTable(**{f.name: np.zeros(0, dtype=np.int64) for f in dataclasses.fields(FrameTable)})


def table_of_batch(batch: FrameBatch, delay_ns: int, source: int, chunk: int, arrival_ns: int) -> FrameTable:
    """The columns of a decoded pulse-height batch; pixel max and sum are computed here, vectorised."""
    n = len(batch)
    pixels = batch.images.reshape(n, -1)
    quabo = batch.pff_columns.get("quabo_num")
    wr = np.asarray(batch.wr_timestamp_ns, dtype=np.int64)
    return FrameTable(
        module=np.full(n, batch.module_id, dtype=np.int64),
        quabo=np.asarray(quabo, dtype=np.int64) if quabo is not None and quabo.ndim == 1
        else np.full(n, -1, dtype=np.int64),
        seq=np.asarray(batch.seq, dtype=np.int64),
        wr_ns=wr,
        time_ns=wr - delay_ns,
        pixel_max=pixels.max(axis=1).astype(np.int64),
        pixel_sum=pixels.sum(axis=1, dtype=np.int64),
        dp=np.full(n, PULSE_HEIGHT_PRODUCTS.index(batch.dp), dtype=np.int64),
        source=np.full(n, source, dtype=np.int64),
        chunk=np.full(n, chunk, dtype=np.int64),
        row=np.arange(n, dtype=np.int64),
        arrival_ns=np.full(n, arrival_ns, dtype=np.int64),
    )
