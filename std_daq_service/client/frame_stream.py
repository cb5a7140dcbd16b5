"""Subscriptions to several agents' streams, merged fairly, at a per-client rate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from std_daq_service.protocol import FrameBatch

StreamKey = tuple[str, int, str]


@dataclass(frozen=True)
class Subscription:
    """Where to read one agent's frames: its answer to a `stream` request."""

    host: str
    endpoint: str
    topics: list[str]

    @classmethod
    def from_answer(cls, host: str, answer: dict[str, Any], update_interval_seconds: float,
                    preview_interval: float | None) -> Subscription:
        """Every frame (data socket) when the client wants them all or faster than the agent's previews.

        Frames from the files, or the Hashpipe socket hook's snapshots where the agent tracks no data dir.
        """
        use_preview = update_interval_seconds > 0 and preview_interval is not None and (
            update_interval_seconds >= preview_interval)
        topics = list(answer["topics"])
        if not answer.get("tracking", True):
            topics += answer.get("socket_topics", [])
        return cls(host, answer["endpoints"]["preview" if use_preview else "data"], topics)


@dataclass
class Throttle:
    """Keep the latest frame batch per stream; release each stream's latest once per interval.

    With interval 0 every batch is released as it comes. Every stream with something new is released
    at each tick, so no module starves another, whatever their rates.
    """

    interval_s: float
    _latest: dict[StreamKey, tuple[str, FrameBatch]] = field(default_factory=dict)
    _last_tick: float = 0.0

    def offer(self, host: str, batch: FrameBatch) -> list[tuple[str, FrameBatch]]:
        if self.interval_s <= 0:
            return [(host, batch)]
        self._latest[(host, batch.module_id, batch.dp)] = (host, batch)
        return self.due()

    def due(self) -> list[tuple[str, FrameBatch]]:
        now = time.monotonic()
        if now - self._last_tick < self.interval_s or not self._latest:
            return []
        self._last_tick = now
        released = [(host, batch.tail(1)) for host, batch in self._latest.values()]
        self._latest.clear()
        return released

