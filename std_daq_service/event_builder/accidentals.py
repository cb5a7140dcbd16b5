"""The live accidental estimate: the same matching on final hits with the modules shifted apart in time."""

from __future__ import annotations

import numpy as np

from std_daq_service.event_builder.coincidence import MatchRules, shifted_event_counts


class AccidentalEstimator:
    """Count events among shifted copies of the final hits, chunk by chunk.

    Final hits come from successive rounds, nearly in time order (rounds overlap by at most a window).
    Events are counted for anchors in `[cursor, newest - margin)`; hits up to a margin before the cursor
    are kept so that shifted windows at the chunk edge see their partners.

    Args:
        shift_ns: the shift step; module rank j moves by `j * k * shift_ns` for k = 1..n_shifts.
    """

    def __init__(self, rules: MatchRules, shift_ns: int, n_shifts: int):
        self.rules = rules
        self.shift_ns = shift_ns
        self.n_shifts = n_shifts
        self.counts = np.zeros(n_shifts, dtype=np.int64)
        self.covered_ns = 0
        self._cursor: int | None = None
        self._time = np.zeros(0, dtype=np.int64)
        self._module = np.zeros(0, dtype=np.int64)

    def _margin(self, n_modules: int) -> int:
        return 2 * self.rules.window_ns + max(n_modules - 1, 0) * self.n_shifts * self.shift_ns

    def add(self, time_ns: np.ndarray, module: np.ndarray) -> None:
        """Take final hits (any order) and count the chunk they complete."""
        if not len(time_ns):
            return
        self._time = np.concatenate((self._time, time_ns))
        self._module = np.concatenate((self._module, module))
        if self._cursor is None:
            self._cursor = int(self._time.min())
        margin = self._margin(len(np.unique(self._module)))
        end = int(self._time.max()) - margin
        if end <= self._cursor:
            return
        self.counts += shifted_event_counts(self._time, self._module, self.rules, self.shift_ns, self.n_shifts,
                                            anchors_from=self._cursor, anchors_to=end)
        self.covered_ns += end - self._cursor
        self._cursor = end
        keep = self._time >= end - margin
        self._time, self._module = self._time[keep], self._module[keep]

    @property
    def mean_events(self) -> float:
        """Accidental events expected in the covered time (mean over the shifts)."""
        return float(self.counts.mean())

    def status(self) -> dict:
        seconds = self.covered_ns / 1e9
        return {"shift_ns": self.shift_ns, "shifts": self.n_shifts, "covered_seconds": round(seconds, 3),
                "events_per_shift": self.counts.tolist(), "mean_events": self.mean_events,
                "rate_hz": self.mean_events / seconds if seconds > 0 else None}
