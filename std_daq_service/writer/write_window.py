"""When a write ends, by its request: the time window, the arrival deadline, the silence deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass

from std_daq_service.protocol import WriteRequest


@dataclass(frozen=True)
class WriteWindow:
    """The end rules of one write, fixed when it starts (frames and events follow the same rules).

    Attributes:
        window_start, window_stop: Unix ns of [start_time, stop_time) (stop from start + duration), or None.
        arrival_stop: monotonic time when a duration without start_time ends, or None.
        silence_deadline: monotonic time by which data must have come (the window may open in the future).
        open_ended: no count, window or duration: until killed.
    """

    started: float
    window_start: int | None
    window_stop: int | None
    arrival_stop: float | None
    silence_deadline: float
    open_ended: bool

    @classmethod
    def of(cls, r: WriteRequest) -> WriteWindow:
        now_ns = time.time_ns()
        started = time.monotonic()
        window_stop = r.stop_time
        if r.start_time is not None and r.duration_seconds is not None:
            window_stop = r.start_time + int(r.duration_seconds * 1e9)
        arrival_stop = started + r.duration_seconds if r.start_time is None and r.duration_seconds is not None \
            else None
        opens_in = max(0.0, ((r.start_time or now_ns) - now_ns) / 1e9)
        return cls(started, r.start_time, window_stop, arrival_stop, started + opens_in + r.timeout_seconds,
                   r.n_images is None and window_stop is None and arrival_stop is None)
