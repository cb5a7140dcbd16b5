"""Counters of the live builder: hits per module, events, multiplicities, latency; rates over a recent period."""

from __future__ import annotations

import collections
import time

import numpy as np

_LATENCIES_KEPT = 10_000
_RATE_PERIOD_S = 10.0


class BuilderStats:
    """What `status` reports of the live matching (thread-safe through its owner's lock)."""

    def __init__(self) -> None:
        self.start_s = time.monotonic()
        self.hits: collections.Counter[int] = collections.Counter()
        self.frames: collections.Counter[int] = collections.Counter()
        self.events = 0
        self.multiplicity: collections.Counter[int] = collections.Counter()
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=_LATENCIES_KEPT)
        self._history: collections.deque[tuple[float, dict[int, int], int]] = collections.deque()

    def count_hits(self, module: np.ndarray, n_frames: np.ndarray) -> None:
        """Count final hits (their module, and frames per hit)."""
        modules, index = np.unique(module, return_inverse=True)
        for m, n, frames in zip(modules.tolist(), np.bincount(index).tolist(),
                                np.bincount(index, weights=n_frames).tolist(), strict=True):
            self.hits[m] += n
            self.frames[m] += int(frames)

    def count_event(self, n_modules: int, latency_ms: float) -> None:
        self.events += 1
        self.multiplicity[n_modules] += 1
        self.latencies_ms.append(latency_ms)

    def _rates(self, now: float) -> dict:
        self._history.append((now, dict(self.hits), self.events))
        while len(self._history) > 2 and now - self._history[1][0] >= _RATE_PERIOD_S:
            self._history.popleft()
        then, hits, events = self._history[0]
        elapsed = now - then
        if elapsed <= 0:
            return {"hits_per_s": {}, "events_per_s": None, "over_seconds": 0.0}
        return {"hits_per_s": {str(m): round((n - hits.get(m, 0)) / elapsed, 2) for m, n in sorted(self.hits.items())},
                "events_per_s": round((self.events - events) / elapsed, 3), "over_seconds": round(elapsed, 2)}

    def status(self) -> dict:
        now = time.monotonic()
        latencies = np.asarray(self.latencies_ms)
        return {
            "uptime_seconds": round(now - self.start_s, 1),
            "hits": {str(m): n for m, n in sorted(self.hits.items())},
            "hit_frames": {str(m): n for m, n in sorted(self.frames.items())},
            "events": self.events,
            "multiplicity": {str(k): n for k, n in sorted(self.multiplicity.items())},
            "rates": self._rates(now),
            "latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 3),
                           "p99": round(float(np.percentile(latencies, 99)), 3), "of_events": len(latencies)}
            if len(latencies) else None,
        }
