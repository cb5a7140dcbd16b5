"""The `seq` the live stream gave each frame it published, per file, so a replay can give frames the same `seq`.

Within a file `seq - frame_number` is constant until the tailer loses frames (a torn or corrupt frame advances
`seq` but is no frame of the file); the index keeps, per file, the frame numbers where that offset changed and
the highest frame number published. A frame the live stream did not publish (before tracking began, after a
re-initialisation, not read yet) has no known `seq`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _FileSeqs:
    starts: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    first: int = 0
    last: int = -1


class SeqIndex:
    """Per file path: how frame numbers map to the live `seq`; written by the tracker, read by replays."""

    def __init__(self) -> None:
        self._files: dict[str, _FileSeqs] = {}
        self._lock = threading.Lock()

    def record(self, path: str, first_frame_number: int, first_seq: int, n: int) -> None:
        """n frames from `first_frame_number` of `path` were published with `seq` from `first_seq`."""
        if n <= 0:
            return
        offset = first_seq - first_frame_number
        with self._lock:
            seqs = self._files.get(path)
            if seqs is None:
                seqs = self._files[path] = _FileSeqs(first=first_frame_number)
            if not seqs.offsets or seqs.offsets[-1] != offset:
                seqs.starts.append(first_frame_number)
                seqs.offsets.append(offset)
            seqs.last = max(seqs.last, first_frame_number + n - 1)

    def clear(self) -> None:
        """A new tracking: its `seq` starts afresh."""
        with self._lock:
            self._files.clear()

    def lookup(self, path: str, frame_numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The live `seq` of frames of `path`, and a mask of those that have one (the others hold 0)."""
        with self._lock:
            seqs = self._files.get(path)
            if seqs is None:
                return np.zeros(len(frame_numbers), np.int64), np.zeros(len(frame_numbers), bool)
            starts, offsets = np.asarray(seqs.starts), np.asarray(seqs.offsets, np.int64)
            first, last = seqs.first, seqs.last
        which = np.searchsorted(starts, frame_numbers, side="right") - 1
        known = (frame_numbers >= first) & (frame_numbers <= last)
        seq = np.where(known, frame_numbers + offsets[which.clip(min=0)], 0)
        return seq.astype(np.int64), known
