"""Where a write's replayed past ends and its ring buffer takes over, per stream, without a duplicate or a gap.

A frame's identity is (run, seqno, frame_number): the same for a frame replayed from its file and received live,
and ordered as the stream is (runs are named by their start time; seqnos and frame numbers count up). The seam of
a stream is the first frame the ring buffer holds of it: replayed frames before it are recorded, the ring buffer
and the live frames from it on; the replay window reaches `OVERLAP_NS` past the youngest stream's seam, so every
frame before each seam is replayed even where frame times are not in file order (pulse-height frames). Live
frames of a stream with no seam (nothing of it in the ring buffer) are recorded once they pass the last replayed
frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from std_daq_service.protocol import FrameBatch

OVERLAP_NS = 2_000_000_000
"""How far past the seams a replay reaches: more than frame times stray from file order."""

Pair = tuple[int, str]
Identity = tuple[str, int, int]


def first_identity(batch: FrameBatch) -> Identity:
    return batch.run or "", -1 if batch.seqno is None else batch.seqno, int(batch.frame_number[0])


def last_identity(batch: FrameBatch, stop: int) -> Identity:
    """Identity of row `stop - 1`."""
    return batch.run or "", -1 if batch.seqno is None else batch.seqno, int(batch.frame_number[stop - 1])


def rows_before(batch: FrameBatch, identity: Identity) -> int:
    """How many leading rows of `batch` come before `identity` in the stream."""
    file = (batch.run or "", -1 if batch.seqno is None else batch.seqno)
    if file != identity[:2]:
        return len(batch) if file < identity[:2] else 0
    return int(np.searchsorted(batch.frame_number, identity[2], side="left"))


def rows_through(batch: FrameBatch, identity: Identity) -> int:
    """How many leading rows of `batch` come before `identity` or are it."""
    file = (batch.run or "", -1 if batch.seqno is None else batch.seqno)
    if file != identity[:2]:
        return len(batch) if file < identity[:2] else 0
    return int(np.searchsorted(batch.frame_number, identity[2], side="right"))


@dataclass
class Seam:
    """The seams of one write: the ring buffer's first frame per stream, and the last replayed frame per stream.

    Attributes:
        stop_ns: the end of the window to replay (None: nothing to replay).
        whole_window: the replay holds the whole window (nothing of it is in the ring buffer).
    """

    ring_first: dict[Pair, Identity]
    stop_ns: int | None
    whole_window: bool
    replayed_last: dict[Pair, Identity] = field(default_factory=dict)

    @classmethod
    def plan(cls, start_ns: int, stop_ns: int | None, ring: list[FrameBatch], now_ns: int) -> Seam:
        """Where to replay for a window [start_ns, stop_ns) given the ring buffer's selected batches, oldest first."""
        firsts: dict[Pair, tuple[Identity, int]] = {}
        for batch in ring:
            firsts.setdefault((batch.module_id, batch.dp), (first_identity(batch), int(batch.frame_times_ns[0])))
        ring_first = {pair: identity for pair, (identity, _) in firsts.items()}
        stop = now_ns if stop_ns is None else min(stop_ns, now_ns)
        if not firsts:
            return cls(ring_first, stop if start_ns < stop else None, True)
        times = [t for _, t in firsts.values()]
        if start_ns >= max(times):
            return cls(ring_first, None, False)  # every stream's ring buffer reaches back to the start
        replay_stop = min(stop, max(times) + OVERLAP_NS)
        whole = stop_ns is not None and stop_ns <= min(times)
        return cls(ring_first, replay_stop if start_ns < replay_stop else None, whole)

    def replayed_rows(self, batch: FrameBatch) -> int:
        """How many leading rows of a replayed batch to record: those before its stream's ring buffer."""
        seam = self.ring_first.get((batch.module_id, batch.dp))
        return len(batch) if seam is None else rows_before(batch, seam)

    def recorded(self, batch: FrameBatch, stop: int) -> None:
        """Rows up to `stop` of a replayed batch were recorded."""
        if stop > 0:
            self.replayed_last[(batch.module_id, batch.dp)] = last_identity(batch, stop)

    def live_first_row(self, batch: FrameBatch) -> int:
        """The first row of a ring-buffer or live batch not replayed already; past the seam, always 0."""
        pair = (batch.module_id, batch.dp)
        last = self.replayed_last.get(pair)
        if last is None:
            return 0
        first = rows_through(batch, last)
        if first < len(batch):
            del self.replayed_last[pair]  # the stream has passed the replayed frames for good
        return first
