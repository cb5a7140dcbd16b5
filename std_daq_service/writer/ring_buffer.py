"""The recent past of every stream the writer receives, so a write can start before its request came."""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from std_daq_service.writer.stream_receiver import ReceivedBatch


class RingBuffer:
    """Received batches younger than `seconds`, all together under `max_bytes`; the oldest go first."""

    def __init__(self, seconds: float, max_bytes: int):
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._batches: collections.deque[ReceivedBatch] = collections.deque()

    def add(self, received: ReceivedBatch) -> None:
        self._batches.append(received)
        self.nbytes += received.nbytes
        self.trim()

    def trim(self) -> None:
        """Drop batches older than `seconds`, and the oldest while over `max_bytes`."""
        oldest = time.monotonic() - self.seconds
        while self._batches and (self.nbytes > self.max_bytes or self._batches[0].arrival_monotonic < oldest):
            self.nbytes -= self._batches.popleft().nbytes

    def batches(self) -> list[ReceivedBatch]:
        return list(self._batches)

    def status(self) -> dict:
        span = 0.0
        if self._batches:
            span = time.monotonic() - self._batches[0].arrival_monotonic
        return {"messages": len(self._batches), "bytes": self.nbytes, "seconds": round(span, 2),
                "max_seconds": self.seconds, "max_bytes": self.max_bytes}
