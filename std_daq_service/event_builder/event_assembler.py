"""From decoded pulse-height batches to event messages: reorder buffer, matching, images, statistics.

No sockets here: the stream receiver feeds batches in and publishes what comes out; the benchmark and
the unit tests drive it directly.
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np

from std_daq_service.config import EventBuilderConfig
from std_daq_service.event_builder.accidentals import AccidentalEstimator
from std_daq_service.event_builder.builder_stats import BuilderStats
from std_daq_service.event_builder.coincidence import MatchRules
from std_daq_service.event_builder.frame_table import PULSE_HEIGHT_PRODUCTS, table_of_batch
from std_daq_service.event_builder.reorder_buffer import ReorderBuffer, Round
from std_daq_service.protocol import FrameBatch, encode_event

_MEMBER_COLUMNS = ("source", "module", "dp", "quabo", "seq", "wr_ns", "time_ns", "pixel_max", "pixel_sum", "chunk",
                   "row")


def match_rules(config: EventBuilderConfig, domes: dict[int, str]) -> MatchRules:
    """The matching rules of a configuration, with the domes known for it."""
    return MatchRules(config.coincidence_window_ns, config.min_modules, config.min_domes, domes)


class EventAssembler:
    """Turn pulse-height batches into coincidence event messages (thread-safe).

    Args:
        source: SERVICE_NAME of the builder (the `source` of its events).
        agents: agent names, in the order frame tables refer to them.
    """

    def __init__(self, source: str, config: EventBuilderConfig, rules: MatchRules, agents: list[str]):
        self.source = source
        self.config = config
        self.rules = rules
        self.agents = agents
        self.buffer = ReorderBuffer(rules, config.hit_window_ns, int(config.max_latency_ms * 1e6),
                                    config.max_latency_ms / 1000)
        self.accidentals = AccidentalEstimator(rules, config.accidental_shift_ns, config.accidental_shifts)
        self.stats = BuilderStats()
        self._images: dict[int, np.ndarray] = {}
        self._next_chunk = 0
        self._next_event = 0
        self._lock = threading.Lock()

    def add(self, agent: str, batch: FrameBatch, now_s: float | None = None) -> None:
        """Take a decoded ph256/ph1024 batch from `agent`."""
        if batch.dp not in PULSE_HEIGHT_PRODUCTS:
            return
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            chunk, self._next_chunk = self._next_chunk, self._next_chunk + 1
            table = table_of_batch(batch, self.config.time_offsets_ns.get(batch.module_id, 0),
                                   self.agents.index(agent), chunk, time.time_ns())
            self._images[chunk] = batch.images
            self.buffer.add((agent, batch.module_id, batch.dp), table, now_s)

    def release(self, now_s: float | None = None) -> list[list[bytes]]:
        """Match what the watermark passed; return the event messages (multipart) to publish."""
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            round_ = self.buffer.release(now_s)
            if round_ is None:
                return []
            messages = self._messages(round_)
            hits = round_.hits
            done = slice(0, round_.n_done)
            self.stats.count_hits(hits.module[done], np.diff(hits.starts)[done])
            self.accidentals.add(hits.time_ns[done], hits.module[done])
            pending = self.buffer.pending_chunks()
            self._images = {chunk: images for chunk, images in self._images.items() if chunk in pending}
            return messages

    def _messages(self, round_: Round) -> list[list[bytes]]:
        frames, hits, events = round_.frames, round_.hits, round_.events
        if not len(events):
            return []
        first, last = hits.starts[events.start], hits.starts[events.stop]
        sizes = last - first
        bounds = np.concatenate(([0], np.cumsum(sizes))).tolist()
        index = hits.frames[np.repeat(first - bounds[:-1], sizes) + np.arange(bounds[-1])]
        columns = {name: getattr(frames, name)[index].tolist() for name in _MEMBER_COLUMNS}
        images = [self._images[c][r] for c, r in zip(columns["chunk"], columns["row"], strict=True)]
        arrival = np.maximum.reduceat(frames.arrival_ns[index], bounds[:-1]).tolist()
        messages = []
        for k, (a, b) in enumerate(itertools.pairwise(bounds)):
            modules = sorted(set(columns["module"][a:b]))
            header = {
                "source": self.source, "event_id": self._next_event, "time_ns": int(hits.time_ns[events.start[k]]),
                "window_ns": self.rules.window_ns, "multiplicity": len(modules), "modules": modules,
                "domes": sorted({self.rules.domes[m] for m in modules if m in self.rules.domes}),
                "members": [
                    {"source": self.agents[s], "module_id": m, "dp": PULSE_HEIGHT_PRODUCTS[dp], "quabo": q,
                     "seq": seq, "wr_timestamp_ns": wr, "time_ns": t, "pixel_max": pmax, "pixel_sum": psum}
                    for s, m, dp, q, seq, wr, t, pmax, psum in zip(
                        *(columns[name][a:b] for name in _MEMBER_COLUMNS[:9]), strict=True)
                ],
            }
            messages.append(encode_event(header, images[a:b]))
            self._next_event += 1
            self.stats.count_event(len(modules), (time.time_ns() - arrival[k]) / 1e6)
        return messages

    @property
    def pending(self) -> bool:
        """Whether frames wait for matching (else `release()` has nothing to do until `add()`)."""
        with self._lock:
            return bool(self.buffer.n_pending)

    def status(self) -> dict:
        with self._lock:
            return {**self.stats.status(), "accidental": self.accidentals.status(),
                    "late_frames": self.buffer.late_frames, "invalid_wr_frames": self.buffer.invalid_wr_frames,
                    "pending_frames": self.buffer.n_pending,
                    "watermark_ns": self.buffer.watermark_ns if self.buffer.streams else None}
