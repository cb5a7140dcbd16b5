"""Coincidence matching on sorted int64 timestamp arrays: module hits, events, accidental estimates.

Pure functions, no I/O; the live builder and `find_coincidences` over archived runs share them.

Rules (documented in the README, "Event builder"):
- A module hit is a run of one module's frames whose consecutive times are at most `hit_window_ns`
  apart (the quabos of one module triggering on one flash); its time is its earliest frame's.
- Hit times are corrected as `WR time - time_offsets_ns[module]` (a module's delay).
- An event starts at the earliest hit not yet in an event (the anchor) and holds every hit within
  `[anchor, anchor + window_ns]`: both edges inclusive, so two hits coincide when `|dt| <= window_ns`.
  It counts when its hits span at least `min_modules` modules and, when the dome of every member
  module is known, at least `min_domes` domes. Otherwise the next hit is tried as anchor.
- The accidental estimate repeats the matching with module rank j shifted by `j * k * shift_ns` for
  k = 1..n_shifts and averages the event counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_PAIR_KEY = 1 << 20  # a pair of module ids as one int64 key: a * _PAIR_KEY + b


@dataclass(frozen=True)
class MatchRules:
    """What makes a coincidence event.

    Attributes:
        window_ns: hits within this many ns of the anchor belong to its event (inclusive).
        min_modules: distinct modules an event needs.
        min_domes: distinct domes an event needs when every member module's dome is known.
        domes: module id -> dome name, where known.
    """

    window_ns: int = 1000
    min_modules: int = 2
    min_domes: int = 2
    domes: dict[int, str] = field(default_factory=dict)

    def accepts(self, modules: set[int]) -> bool:
        """Does a group of hits of these modules make an event?"""
        if len(modules) < self.min_modules:
            return False
        if all(m in self.domes for m in modules):
            return len({self.domes[m] for m in modules}) >= self.min_domes
        return True


@dataclass(frozen=True)
class Hits:
    """Module hits of a set of frames, sorted by time.

    Attributes:
        time_ns: per hit, the corrected time of its earliest frame (ascending).
        module: per hit, its module id.
        frames: frame indices (into the grouped input) ordered hit by hit.
        starts: per hit, where its frames begin in `frames`; `starts[-1] == len(frames)`.
        last_ns: per hit, its latest frame's time.
    """

    time_ns: np.ndarray
    module: np.ndarray
    frames: np.ndarray
    starts: np.ndarray
    last_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.time_ns)

    def frames_of(self, first: int, stop: int) -> np.ndarray:
        """Frame indices of hits `first` to `stop` (exclusive)."""
        return self.frames[self.starts[first] : self.starts[stop]]


def group_hits(module: np.ndarray, time_ns: np.ndarray, hit_window_ns: int) -> Hits:
    """Group frames into module hits (see the module docstring); frames need not be sorted."""
    module = np.asarray(module, dtype=np.int64)
    time_ns = np.asarray(time_ns, dtype=np.int64)
    order = np.lexsort((time_ns, module))
    m, t = module[order], time_ns[order]
    new = np.ones(len(t), dtype=bool)
    new[1:] = (m[1:] != m[:-1]) | (np.diff(t) > hit_window_ns)
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(t)) - 1
    by_time = np.argsort(t[first], kind="stable")
    sizes = (last - first + 1)[by_time]
    starts = np.concatenate(([0], np.cumsum(sizes)))
    frames = order[np.repeat(first[by_time] - starts[:-1], sizes) + np.arange(starts[-1])]
    return Hits(t[first][by_time], m[first][by_time], frames, starts, t[last][by_time])


@dataclass(frozen=True)
class Events:
    """Events found among sorted hits, as ranges `[start, stop)` of hit indices."""

    start: np.ndarray
    stop: np.ndarray
    next_hit: int
    """The first hit neither in an event nor passed over as anchor (where a continuation resumes)."""

    def __len__(self) -> int:
        return len(self.start)


def find_events(time_ns: np.ndarray, module: np.ndarray, rules: MatchRules, until_ns: float = np.inf) -> Events:
    """Greedy events among hits sorted by time; only anchors with `time + window <= until_ns` are tried.

    Only hits with a hit of another module within the window after them are tried as anchors: the
    Python loop runs over those candidates, not over every hit.
    """
    time_ns = np.asarray(time_ns, dtype=np.int64)
    module = np.asarray(module, dtype=np.int64)
    n = len(time_ns)
    window = rules.window_ns
    end = np.searchsorted(time_ns, time_ns + window, side="right")
    others = end - np.arange(n) - 1
    for m in np.unique(module):
        own = np.flatnonzero(module == m)
        others[own] -= np.searchsorted(time_ns[own], time_ns[own] + window, side="right") - np.arange(len(own)) - 1
    candidates = np.flatnonzero((others > 0) & (time_ns + window <= until_ns))
    pair_start, pair_stop, candidates = _isolated_pairs(candidates, end, module, rules)
    starts, stops, position = [], [], 0
    for i in candidates.tolist():
        if i < position:
            continue
        stop = int(end[i])
        if rules.accepts(set(module[i:stop].tolist())):
            starts.append(i)
            stops.append(stop)
            position = stop
        else:
            position = i + 1
    limit = int(np.searchsorted(time_ns, until_ns - window, side="right")) if np.isfinite(until_ns) else n
    start = np.concatenate((pair_start, np.array(starts, dtype=np.int64)))
    stop = np.concatenate((pair_stop, np.array(stops, dtype=np.int64)))
    order = np.argsort(start, kind="stable")
    return Events(start[order], stop[order], max(position, int(stop.max(initial=0)), limit))


def _isolated_pairs(candidates: np.ndarray, end: np.ndarray, module: np.ndarray,
                    rules: MatchRules) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decide, vectorised, the candidates whose window holds one other hit and touches no other window.

    Such a pair is an event or not whatever the greedy loop decided before it (no earlier window reaches
    it) and it changes nothing after it (its second hit's window holds only itself): the common case of
    accidental pairs at high rates, taken out of the Python loop.

    Returns:
        The accepted pairs' starts and stops, and the candidates left for the loop.
    """
    earlier_reaches = np.zeros(len(candidates), dtype=bool)
    has_earlier = candidates > 0
    earlier_reaches[has_earlier] = end[candidates[has_earlier] - 1] > candidates[has_earlier]
    isolated = (end[candidates] == candidates + 2) & ~earlier_reaches
    isolated[isolated] &= end[candidates[isolated] + 1] == candidates[isolated] + 2
    pairs = candidates[isolated]
    a, b = module[pairs], module[pairs + 1]
    keys, which = np.unique(a * _PAIR_KEY + b, return_inverse=True)
    verdicts = np.array([rules.accepts({int(k) // _PAIR_KEY, int(k) % _PAIR_KEY}) for k in keys], dtype=bool)
    accepted = verdicts[which] if len(pairs) else np.zeros(0, dtype=bool)
    kept = pairs[accepted]
    return kept, kept + 2, candidates[~isolated]


def shifted_event_counts(time_ns: np.ndarray, module: np.ndarray, rules: MatchRules, shift_ns: int,
                         n_shifts: int, anchors_from: float = -np.inf, anchors_to: float = np.inf) -> np.ndarray:
    """Events found with module rank j shifted by `j * k * shift_ns`, for k = 1..n_shifts.

    Only events whose anchor (in shifted time) lies in `[anchors_from, anchors_to)` are counted.

    Returns:
        The event count per shift (int64 array of n_shifts).
    """
    time_ns = np.asarray(time_ns, dtype=np.int64)
    module = np.asarray(module, dtype=np.int64)
    rank = np.searchsorted(np.unique(module), module)
    counts = np.zeros(n_shifts, dtype=np.int64)
    for k in range(1, n_shifts + 1):
        shifted = time_ns + rank * (k * shift_ns)
        order = np.argsort(shifted, kind="stable")
        t = shifted[order]
        events = find_events(t, module[order], rules)
        anchors = t[events.start]
        counts[k - 1] = np.count_nonzero((anchors >= anchors_from) & (anchors < anchors_to))
    return counts


def multiplicity(module: np.ndarray, events: Events) -> np.ndarray:
    """Distinct modules per event."""
    return np.array([len(set(module[a:b].tolist())) for a, b in zip(events.start, events.stop, strict=True)],
                    dtype=np.int64)
