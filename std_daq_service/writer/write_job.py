"""One write request: pick the selected frames (from the ring buffer's past and live) and record them.

The job owns its recording from creating the file to committing it. A write that ends (done, killed) commits
the file, marked complete or not; a failed write keeps what it recorded, marked incomplete, or leaves nothing.

How much is recorded:
- `n_images`: that many frames per selected stream (module and data product), then done.
- `start_time` / `stop_time` (or `start_time` + `duration_seconds`): frames whose time (`frame_time_ns`: WR, or
  host time where WR is invalid) lies in [start, stop); a start in the past is served from the ring buffer, and
  what lies before the ring buffer is replayed from the agents' PFF files first (`replay_receiver`), joined to the
  ring buffer by frame identity (`replay_seam`).
- `duration_seconds` without `start_time`: frames that arrive during that many seconds from the request.
- none of these: until killed; the file is then complete.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from std_daq_service.broker import RequestContext
from std_daq_service.protocol import (
    DaqError,
    FrameBatch,
    InvalidMessage,
    ReplayRequest,
    RequestTimeout,
    StorageError,
    WriteRequest,
)
from std_daq_service.writer.h5_recording import FLUSH_PERIOD_S, H5Recording, describe_hdf5_error
from std_daq_service.writer.replay_receiver import ReplayReceiver
from std_daq_service.writer.replay_seam import Seam
from std_daq_service.writer.stream_receiver import ReceivedBatch, StreamReceiver
from std_daq_service.writer.write_window import WriteWindow

log = logging.getLogger(__name__)

Pair = tuple[int, str]
_SETTLE_S = 0.5
_END_GRACE_S = 1.0
_BEHIND_FLUSH_PERIOD_S = 1.0
_FLOWING_S = 2.0
"""A stream whose last message came within this is flowing: a write gives the file its datasets at once."""
MAX_BACKLOG_BYTES = 1 << 30
"""Default bytes of frames received but not yet written, per write; beyond, new frames are dropped and counted."""


def _decodes(received: ReceivedBatch) -> bool:
    """Decode (once: the batch is cached) or say why the message is skipped."""
    try:
        return bool(len(received.batch))
    except InvalidMessage as exc:
        log.warning("a message of %s skipped: %s", received.key, exc)
        return False


@dataclass(frozen=True)
class Selection:
    """Which streams a write records; `expected` lists (module, dp) pairs that must all deliver."""

    sources: frozenset[str]
    module_ids: frozenset[int]
    data_products: frozenset[str]

    def matches(self, received: ReceivedBatch) -> bool:
        agent, module_id, dp = received.key
        return (agent in self.sources and (not self.module_ids or module_id in self.module_ids)
                and (not self.data_products or dp in self.data_products))

    @property
    def expected(self) -> set[Pair]:
        if self.module_ids and self.data_products:
            return {(m, dp) for m in self.module_ids for dp in self.data_products}
        return set()

    def describe(self) -> str:
        modules = ", ".join(map(str, sorted(self.module_ids))) or "all"
        products = ", ".join(sorted(self.data_products)) or "all"
        return f"modules {modules}, data products {products}, from {', '.join(sorted(self.sources))}"


@dataclass
class _PairState:
    frames: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    ended: bool = False


class WriteJob:
    """Run one write to its end: done, killed, or failed (raises); `recording` is not started yet.

    Args:
        max_backlog_bytes: frames offered but not yet written beyond this are dropped and counted.
        broker_url: where to ask the agents for replays of what lies before the ring buffer.
    """

    def __init__(self, request: WriteRequest, ctx: RequestContext, receiver: StreamReceiver,
                 recording: H5Recording, selection: Selection, active_within_s: float,
                 max_backlog_bytes: int = MAX_BACKLOG_BYTES, broker_url: str | None = None):
        self.request = request
        self.broker_url = broker_url
        self.seam: Seam | None = None
        self.replay: dict | None = None
        self.replay_complete = True
        self.ctx = ctx
        self.receiver = receiver
        self.recording = recording
        self.selection = selection
        self.max_backlog_bytes = max_backlog_bytes
        self.incoming: queue.SimpleQueue[ReceivedBatch] = queue.SimpleQueue()
        self.pairs: dict[Pair, _PairState] = {pair: _PairState() for pair in selection.expected}
        window = WriteWindow.of(request)
        self.started, self.window_start, self.window_stop = window.started, window.window_start, window.window_stop
        self.arrival_stop, self.silence_deadline = window.arrival_stop, window.silence_deadline
        self.open_ended = window.open_ended
        r = request
        self.warnings: list[str] = []
        self.dropped_frames = 0
        self._backlog_bytes = 0
        self._backlog_lock = threading.Lock()
        self._last_new_pair = self.started
        if not self.pairs and r.n_images is not None:
            for agent, module_id, dp in receiver.known_streams(active_within_s):
                if agent in selection.sources and self._wanted(module_id, dp):
                    self.pairs[(module_id, dp)] = _PairState()

    def _wanted(self, module_id: int, dp: str) -> bool:
        s = self.selection
        return (not s.module_ids or module_id in s.module_ids) and (not s.data_products or dp in s.data_products)

    def offer(self, received: ReceivedBatch) -> None:
        """The receiver's listener: called by its thread for every new batch.

        A selected batch is decoded there, so decoding overlaps with this write's HDF5 work (which releases
        the GIL while it compresses and writes).
        """
        if not self.selection.matches(received) or not _decodes(received):
            return
        with self._backlog_lock:
            if self._backlog_bytes > self.max_backlog_bytes:  # the file cannot keep up: drop, count, show as gaps
                self.dropped_frames += received.peeked.n_frames
                return
            self._backlog_bytes += received.nbytes
        self.incoming.put(received)

    def run(self) -> dict:
        """Create the file, record until the end, commit; returns the request's result.

        Raises:
            StorageError: the file could not be created or written; nothing is kept.
            DaqError: the write failed otherwise (e.g. RequestTimeout); what it recorded is kept, marked incomplete.
        """
        recording = self.recording
        try:
            recording.start()
        except OSError as exc:
            raise StorageError(f"cannot create {recording.part}: {describe_hdf5_error(exc)}") from exc
        with recording:  # leaving it without a commit discards the file
            try:
                complete, reason = self._record()
                summary, (first, last) = recording.summary(), recording.time_span()
                recording.commit(complete, reason, self._commit_attrs())
            except Exception as exc:
                if isinstance(exc, OSError) and not isinstance(exc, DaqError):  # a RequestTimeout is an OSError too
                    raise StorageError(f"writing {recording.path} failed, nothing kept: "
                                       f"{describe_hdf5_error(exc)}") from exc
                self._keep_or_discard()
                raise
        result = {
            "output_file": str(recording.path),
            "complete": complete,
            "end_reason": reason,
            "streams": summary,
            "frames": sum(s["frames"] for s in summary.values()),
            "bytes": recording.bytes,
            "missing_frames": sum(s["missing_frames"] for s in summary.values()),
            "first_timestamp_ns": first,
            "last_timestamp_ns": last,
            "warnings": self.warnings,
        }
        if self.replay is not None:
            result["replay"] = self.replay
        return result

    def _commit_attrs(self) -> dict:
        return {"warnings": self.warnings, **({"replay": self.replay} if self.replay is not None else {})}

    def _keep_or_discard(self) -> None:
        """After a failure: commit what was recorded, marked incomplete; with nothing recorded, leave nothing."""
        if not any(s["frames"] for s in self.recording.summary().values()):
            return
        try:
            self.recording.commit(False, "failed; see the request's status", self._commit_attrs())
        except OSError as exc:
            log.warning("keeping what %s recorded failed, nothing kept: %s", self.recording.path, exc)

    def _record(self) -> tuple[bool, str]:
        """Record until the end; returns (complete, end_reason)."""
        complete, reason = self._record_all()
        if not self.replay_complete:
            return False, f"{reason}; the replayed part is incomplete (see replay)"
        return complete, reason

    def _record_all(self) -> tuple[bool, str]:
        handle, past = self.receiver.attach(self.offer)
        try:
            if self.window_start is not None:
                past = [b for b in past if self.selection.matches(b) and _decodes(b)]
                self._replay_past(past)
                self._use_past(past)
            self._prepare_streams(past)
            last_flush = time.monotonic()
            while True:
                if self.ctx.cancelled.is_set():
                    if self.open_ended:
                        return True, "stopped by kill (open-ended write)"
                    return False, f"killed after {self._frames()} frames"
                if self.seam is not None and self.seam.whole_window:
                    return True, "the window was replayed from the agents' PFF files"
                finished = self._finished()
                if finished:
                    return True, finished
                self._check_silence()
                period = self._flush_period()
                try:
                    self._take(self._next(0.1))
                    while not self.incoming.empty() and time.monotonic() - last_flush < period:
                        self._take(self._next(None))
                except queue.Empty:
                    pass
                if time.monotonic() - last_flush >= period:
                    self.recording.flush()
                    last_flush = time.monotonic()
                self.ctx.progress(f"{self._frames()} frames, {self.recording.bytes / 1e6:.1f} MB written",
                                  {"streams": self.recording.summary(), "bytes": self.recording.bytes})
        finally:
            self.receiver.detach(handle)
            if self.dropped_frames:
                self.warnings.append(f"the file could not keep up with the stream: {self.dropped_frames} frames "
                                     "were dropped (seq gaps in the file)")

    def _prepare_streams(self, past: list[ReceivedBatch]) -> None:
        """Give the file every selected stream that is flowing now (in the ring buffer's last `_FLOWING_S`) before
        the first rows arrive, so streams whose frames come a little later (pulse heights in small bursts) are in
        the first file instead of each starting a new part after it opened for readers."""
        flowing = time.monotonic() - _FLOWING_S
        newest = {received.key: received for received in past
                  if received.arrival_monotonic >= flowing and self.selection.matches(received)}
        for received in newest.values():
            if _decodes(received):
                self.recording.prepare(received.agent, received.batch)

    def _replay_past(self, past: list[ReceivedBatch]) -> None:
        """Record what the window holds from before the ring buffer, replayed from the agents' files."""
        seam = Seam.plan(self.window_start, self.window_stop, [b.batch for b in past], time.time_ns())
        if seam.stop_ns is None:
            return
        self.seam = seam
        s = self.selection
        request = ReplayRequest(start_time=self.window_start, stop_time=seam.stop_ns, module_ids=sorted(s.module_ids),
                                data_products=sorted(s.data_products), run=self.request.run,
                                data_dir=self.request.data_dir)
        log.info("%s: replaying [%d, %d) from %s", self.recording.path, request.start_time, request.stop_time,
                 ", ".join(sorted(s.sources)))
        receiver = ReplayReceiver(self.broker_url, self.ctx.service_name, sorted(s.sources), request,
                                  self.request.timeout_seconds, self.ctx.cancelled)
        agents = receiver.run(self._take_replayed)
        self.replay = {"start_time_ns": request.start_time, "stop_time_ns": request.stop_time, "agents": agents}
        for agent, result in sorted(agents.items()):
            if result.get("error"):
                self.replay_complete = False
                self.warnings.append(f"replay from {agent} failed: {result['error']}")
            elif result.get("no_data"):
                self.warnings.append(f"{agent} has no frames of [{request.start_time}, {request.stop_time}) in its "
                                     "files")
            elif not result.get("complete", False):
                self.replay_complete = False
                self.warnings.append(f"replay from {agent} is partial: {result.get('message', '')}")
        now = time.monotonic()
        self.silence_deadline = now + self.request.timeout_seconds
        for state in self.pairs.values():
            state.last_seen = now

    def _take_replayed(self, agent: str, batch: FrameBatch) -> None:
        stop = self.seam.replayed_rows(batch)
        if stop:
            self._take_batch(agent, batch, time.monotonic(), stop)
            self.seam.recorded(batch, stop)
        self.ctx.progress(f"{self._frames()} frames (replaying the past from the PFF files)",
                          {"streams": self.recording.summary(), "bytes": self.recording.bytes})

    def _use_past(self, past: list[ReceivedBatch]) -> None:
        if past and self.seam is None:
            oldest = min(int(b.batch.frame_times_ns[0]) for b in past)
            if self.window_start < oldest:
                self.warnings.append(
                    f"start_time lies {(oldest - self.window_start) / 1e9:.1f} s before the oldest frame in the "
                    f"ring buffer; the file starts at {oldest} ns")
        for received in past:
            self._take(received)

    def _flush_period(self) -> float:
        """`FLUSH_PERIOD_S`, or `_BEHIND_FLUSH_PERIOD_S` while the backlog is over half its bound: a flush costs the
        file's throughput, and a frame dropped is worse than a row shown late."""
        with self._backlog_lock:
            behind = self._backlog_bytes > self.max_backlog_bytes // 2
        return _BEHIND_FLUSH_PERIOD_S if behind else FLUSH_PERIOD_S

    def _frames(self) -> int:
        return sum(s.frames for s in self.pairs.values())

    def _next(self, timeout: float | None) -> ReceivedBatch:
        received = self.incoming.get(timeout=timeout) if timeout else self.incoming.get_nowait()
        with self._backlog_lock:
            self._backlog_bytes -= received.nbytes
        return received

    def _take(self, received: ReceivedBatch) -> None:
        """Record what a batch holds of the window; batches reach here decoded (see `_decodes`)."""
        batch = received.batch
        first = self.seam.live_first_row(batch) if self.seam is not None else 0
        if first < len(batch):
            self._take_batch(received.agent, batch, received.arrival_monotonic, len(batch), first)

    def _take_batch(self, agent: str, batch: FrameBatch, arrival: float, rows: int, skip: int = 0) -> None:
        """Record what rows `skip` to `rows` of a batch hold of the window."""
        module_id, dp = batch.module_id, batch.dp
        state = self.pairs.get((module_id, dp))
        if state is None:
            state = self.pairs[(module_id, dp)] = _PairState()
            self._last_new_pair = time.monotonic()
        state.last_seen = time.monotonic()
        if state.ended:
            return
        if self.arrival_stop is not None and arrival >= self.arrival_stop:
            state.ended = True
            return
        first, stop = skip, rows
        if self.window_start is not None or self.window_stop is not None:
            times = batch.frame_times_ns[:rows]
            if self.window_start is not None:
                first = max(skip, int(np.searchsorted(times, self.window_start, side="left")))
            if self.window_stop is not None:
                stop = int(np.searchsorted(times, self.window_stop, side="left"))
                if stop < len(times):
                    state.ended = True
        if self.request.n_images is not None:
            stop = min(stop, first + self.request.n_images - state.frames)
            if state.frames + max(0, stop - first) >= self.request.n_images:
                state.ended = True
        if stop > first:
            state.frames += self.recording.append(agent, batch, slice(first, stop))

    def _finished(self) -> str | None:
        now = time.monotonic()
        if self.arrival_stop is not None and now >= self.arrival_stop + _END_GRACE_S:
            return f"recorded {self.request.duration_seconds:g} s"
        if not self.pairs or now - self._last_new_pair < _SETTLE_S:
            return None
        if self.request.n_images is not None and all(s.ended for s in self.pairs.values()):
            return f"{self.request.n_images} frames per stream recorded"
        if self.window_stop is not None:
            if all(s.ended for s in self.pairs.values()):
                return "every stream passed stop_time"
            if time.time_ns() > self.window_stop + _END_GRACE_S * 1e9 + self.request.timeout_seconds * 1e9:
                return "stop_time passed"
        return None

    def _check_silence(self) -> None:
        now = time.monotonic()
        if now < self.silence_deadline:
            return
        timeout = self.request.timeout_seconds
        silent = [pair for pair, s in self.pairs.items() if s.frames == 0 and now - s.last_seen >= timeout]
        if silent and self.selection.expected:
            names = ", ".join(f"module {m} {dp}" for m, dp in sorted(silent))
            raise RequestTimeout(f"no frames from {names} in {timeout:g} s")
        if not self.pairs or (silent and len(silent) == len(self.pairs) and not self._frames()):
            raise RequestTimeout(f"no frames from {self.selection.describe()} in {timeout:g} s")
        if self.request.n_images is not None:
            for (module_id, dp), s in sorted(self.pairs.items()):
                if not s.ended and now - s.last_seen >= timeout:
                    raise RequestTimeout(
                        f"module {module_id} {dp} sent nothing for {timeout:g} s "
                        f"({s.frames} of {self.request.n_images} frames recorded)")
