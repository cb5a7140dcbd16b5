"""The bounded reorder buffer of the live builder: frames wait for the watermark, then are grouped and matched.

Streams from several nodes arrive with different delays and in batches. Each stream's latest (corrected)
frame time is tracked; a stream is live while it sent frames within the last `budget_s` of wall time.
The watermark is `min over live streams of their latest time - budget_ns` and never goes back: every
frame at or before it is taken to have arrived. When no stream is live (all stopped), everything
pending is released and the watermark moves to the latest time seen. A frame that arrives at or
before the watermark is late: counted and dropped. Frames with invalid WR time are counted and
dropped too, before anything else.

A round (`release`) groups the frames at or before the watermark into module hits, matches hits whose
windows lie wholly before it, and keeps the rest (the hits that could still grow or gain partners).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from std_daq_service.event_builder.coincidence import Events, Hits, MatchRules, find_events, group_hits
from std_daq_service.event_builder.frame_table import FrameTable

_NEVER = -(2**63)


@dataclass
class StreamClock:
    """What the buffer knows of one stream's progress."""

    latest_ns: int
    last_arrival_s: float


@dataclass(frozen=True)
class Round:
    """The outcome of one release: `hits` over `frames`; hits before `n_done` are final, events among them."""

    frames: FrameTable
    hits: Hits
    events: Events
    n_done: int


class ReorderBuffer:
    """Hold frames until the watermark passes them; match them then.

    Args:
        rules: the coincidence rules.
        hit_window_ns: see `group_hits`.
        budget_ns: how far (WR time) every live stream must be past a frame before it is matched.
        budget_s: a stream that sent nothing for this long (wall time) is not live.
    """

    def __init__(self, rules: MatchRules, hit_window_ns: int, budget_ns: int, budget_s: float):
        self.rules = rules
        self.hit_window_ns = hit_window_ns
        self.budget_ns = budget_ns
        self.budget_s = budget_s
        self.streams: dict[Hashable, StreamClock] = {}
        self.watermark_ns = _NEVER
        self.late_frames = 0
        self.invalid_wr_frames = 0
        self._pending: list[FrameTable] = []

    @property
    def n_pending(self) -> int:
        return sum(len(table) for table in self._pending)

    def pending_chunks(self) -> set[int]:
        """The image chunks pending frames refer to."""
        return {int(c) for table in self._pending for c in np.unique(table.chunk)}

    def add(self, stream: Hashable, frames: FrameTable, now_s: float) -> None:
        """Take frames of one stream (received at monotonic time `now_s`)."""
        valid = frames.wr_ns >= 0
        self.invalid_wr_frames += int(np.count_nonzero(~valid))
        on_time = valid & (frames.time_ns > self.watermark_ns)
        self.late_frames += int(np.count_nonzero(valid & ~on_time))
        if not on_time.all():
            frames = frames.take(on_time)
        if not len(frames):
            return
        latest = int(frames.time_ns.max())
        clock = self.streams.get(stream)
        if clock is None:
            self.streams[stream] = StreamClock(latest, now_s)
        else:
            clock.latest_ns = max(clock.latest_ns, latest)
            clock.last_arrival_s = now_s
        self._pending.append(frames)

    def _advance(self, now_s: float) -> bool:
        """Move the watermark; True when no stream is live (everything pending may go)."""
        live = [c.latest_ns for c in self.streams.values() if now_s - c.last_arrival_s <= self.budget_s]
        if live:
            self.watermark_ns = max(self.watermark_ns, min(live) - self.budget_ns)
            return False
        if self.streams:
            self.watermark_ns = max(self.watermark_ns, max(c.latest_ns for c in self.streams.values()))
        return True

    def release(self, now_s: float) -> Round | None:
        """Group and match what the watermark passed; None when nothing is final yet."""
        everything = self._advance(now_s)
        if not self._pending:
            return None
        if all(int(table.time_ns.min()) > self.watermark_ns for table in self._pending):
            return None
        frames = FrameTable.concat(self._pending)
        passed = frames.time_ns <= self.watermark_ns
        ready, waiting = frames.take(passed), frames.take(~passed)
        hits = group_hits(ready.module, ready.time_ns, self.hit_window_ns)
        until = np.inf
        if not everything:
            growing = hits.last_ns + self.hit_window_ns > self.watermark_ns  # a later frame may still join
            until = self.watermark_ns
            if growing.any():
                until = min(until, int(hits.time_ns[growing].min()) - 1)
        events = find_events(hits.time_ns, hits.module, self.rules, until_ns=until)
        kept = ready.take(hits.frames_of(events.next_hit, len(hits)))
        self._pending = [table for table in (kept, waiting) if len(table)]
        return Round(ready, hits, events, events.next_hit)
