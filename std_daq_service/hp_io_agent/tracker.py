"""The agent's tracking loop: discover runs, tail every stream, publish frames and previews."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from std_daq_service.hp_io_agent.checkpoint import Checkpoint
from std_daq_service.hp_io_agent.file_watcher import FileWatcher
from std_daq_service.hp_io_agent.frame_publisher import FramePublisher
from std_daq_service.hp_io_agent.run_discovery import (
    StreamFile,
    discover,
    first_in_run,
    run_ended,
    run_order,
    stream_file,
    watched_dirs,
)
from std_daq_service.hp_io_agent.seq_index import SeqIndex
from std_daq_service.hp_io_agent.socket_hook import SocketHook
from std_daq_service.hp_io_agent.stream_tailer import StreamBlock, StreamTailer
from std_daq_service.lifecycle import BackgroundThread, Lifecycle

log = logging.getLogger(__name__)

_REDISCOVER_S = 1.0
"""Rediscovery, run-end and rollover checks without an event that calls for them, and the rate in `status`."""
_BLOCKS_PER_ROUND = 4
_LOOKAHEAD_S = 0.2
"""A checkpoint's horizon is a stream's next `seq` plus the frames it read in this time at its recent rate; the next
is asked for halfway, so a checkpoint may take 0.1 s to store before frames wait for it."""
_CHECKPOINT_GAP_S = 0.02
"""At most 50 checkpoint writes a second (one a second while Redis fails)."""
_ROUND_GAP_S = 0.002
"""Shortest time from one round that published frames to the next (without a backlog): small writes in quick
succession are read and published together, so the loop's cost per round is paid at most 500 times a second."""
_SETTLE_S = 3.0
"""Longest wait for the exact checkpoint at a stop or re-init before the frames held for it are published."""
_RESUME_HOLD_S = 3.0
_SUBSCRIBE_SETTLE_S = 1.0


@dataclass
class Tracking:
    """What the loop follows: set by init, cleared by stop."""

    data_dir: Path
    module_ids: set[int]
    update_interval_s: float
    origin: str = "file"

    def to_dict(self) -> dict:
        return {"data_dir": str(self.data_dir), "module_ids": sorted(self.module_ids),
                "update_interval_s": self.update_interval_s, "origin": self.origin}

    @classmethod
    def from_dict(cls, data: dict) -> Tracking:
        return cls(Path(data["data_dir"]), set(data["module_ids"]), data["update_interval_s"], data["origin"])


@dataclass
class _Change:
    tracking: Tracking | None
    event: str
    message: str
    simulation: dict | None = None
    resume: dict[tuple[int, str], dict] = field(default_factory=dict)


class Tracker(Lifecycle):
    """Run the tracking loop in its own thread; `track()`, `module_ids()` and `status()` are thread-safe.

    Streams that exist when tracking starts are followed from the end of their newest file (live
    semantics), except in a run that has already ended (an archived run), which is replayed from
    its first seqno. Streams, runs and modules that appear later are read from their first frame.
    A run whose dir disappears ends; the agent never falls back to an older run. After a restart
    every stream goes on from its checkpoint, and runs that started meanwhile are read from their
    first frame with `seq` continuing. Streams are independent: an error in one is reported in its
    status and the log and keeps no other stream from publishing. Frames from the Hashpipe socket
    hook (if any) are published by the hook's thread, whether or not a data dir is tracked, as streams of
    their own.

    The loop sleeps until inotify, a socket (a subscriber coming or going) or a timer
    (a preview due, a checkpoint, the 1 s rescan) needs it. A frame read from a file is published once
    the checkpoint's horizon for its stream is past its `seq` (see `checkpoint`).
    """

    def __init__(self, publisher: FramePublisher, watcher: FileWatcher, run_end_idle_s: float,
                 max_batch_frames: int, socket_hook: SocketHook | None = None, checkpoint: Checkpoint | None = None,
                 rollover_grace_s: float = 2.0):
        self.rollover_grace_s = rollover_grace_s
        self.seq_index = SeqIndex()
        """The live `seq` of the frames published since the tracking began, for replays."""
        self.publisher = publisher
        self.watcher = watcher
        self.socket_hook = socket_hook
        self.checkpoint = checkpoint
        self._resume: dict[tuple[int, str], dict] = {}
        self._resuming = False
        self._hold_until = 0.0
        self._more = False
        self._held: dict[tuple[int, str], list[StreamBlock]] = {}
        self._horizons: dict[tuple[int, str], tuple[int, int, int]] = {}
        """Per stream the last requested (horizon, margin, next seq then)."""
        """(horizon, margin) last asked for, by stream."""
        self._last_request = 0.0
        self._origin = "file"
        self._published = False
        self._names: dict[tuple[int, str], str] = {}
        self.rounds = 0
        self.checkpoint_waits = 0
        """Times a stream's frames waited for a checkpoint (the look-ahead used up before the next was stored)."""
        self.run_end_idle_s = run_end_idle_s
        self.max_batch_frames = max_batch_frames
        self._lock = threading.Lock()
        self._tracking: Tracking | None = None
        self._changed = threading.Event()
        self._streams: dict[tuple[int, str], StreamTailer] = {}
        self._ended_runs: dict[str, str] = {}
        self._ended_dirs: set[Path] = set()
        self._announced_runs: set[str] = set()
        self._first_scan = True
        self._pending = _Change(None, "reinit", "")
        self._loop = BackgroundThread("tracker", self._run, wake=watcher.wake)
        self.error: str | None = None

    def _open(self) -> None:
        self._loop.start()

    def _release(self) -> None:
        self._loop.close()
        self._settle()
        self._close_streams()

    @property
    def tracking(self) -> Tracking | None:
        return self._tracking

    def track(self, tracking: Tracking | None, event: str = "reinit", message: str = "",
              simulation: dict | None = None, resume: dict[tuple[int, str], dict] | None = None) -> None:
        """Follow a new data dir (or nothing); subscribers get a control message.

        Args:
            simulation: the init_sim request behind it, kept in the checkpoint for a restart.
            resume: stream positions of a checkpoint to go on from, by (module_id, dp).
        """
        with self._lock:
            self._tracking = tracking
            self._changed.set()
            self._pending = _Change(tracking, event, message, simulation, resume or {})
        self.watcher.wake()

    def _close_streams(self) -> None:
        with self._lock:
            streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.close()

    def _apply_change(self) -> None:
        with self._lock:
            self._changed.clear()
            change = self._pending
        self._settle()
        self._close_streams()
        self._held.clear()
        self._horizons.clear()
        self.publisher.forget_file_streams()
        self._ended_runs.clear()
        self._ended_dirs.clear()
        self._announced_runs.clear()
        self._first_scan = True
        self._resume = dict(change.resume)
        self._resuming = bool(change.resume)
        if change.resume:  # subscribers of the agent before its restart reconnect first
            self._hold_until = time.monotonic() + _RESUME_HOLD_S
        if not change.resume:
            self.seq_index.clear()
        if self.checkpoint is not None and not change.resume:
            self.checkpoint.set_tracking(change.tracking.to_dict() if change.tracking else None, change.simulation)
        self.publisher.control(change.event, change.message)
        if change.tracking is not None:
            self._discover(change.tracking)

    def _discover(self, tracking: Tracking) -> None:
        data_dir = tracking.data_dir
        for _ in range(4):  # a dir created before its watch existed may already hold new runs and files
            found = discover(data_dir, tracking.module_ids or None)
            run_dirs = {f.path.parent for f in found.values()}
            if not self.watcher.watch(sorted(set(watched_dirs(data_dir)) | run_dirs)):
                break
        for key, file in found.items():
            stream = self._streams.get(key)
            if stream is None:
                try:
                    stream = self._new_stream(key, file)
                except OSError as exc:
                    log.warning("cannot open %s: %s; trying again at the next scan", file.path, exc)
                    continue
                self._resume.pop(key, None)
                with self._lock:
                    self._streams[key] = stream
            else:
                stream.offer(file)
            if file.run not in self._announced_runs:
                self._announced_runs.add(file.run)
                self.publisher.control("run_start", f"tracking run {file.run}", run=file.run,
                                       module_id=file.module_id)
        self._first_scan = False

    def _stream(self, file: StreamFile, from_end: bool, resume: dict | None = None, next_seq: int = 0) -> StreamTailer:
        return StreamTailer(file, from_end, self.max_batch_frames, self.rollover_grace_s, self.watcher,
                            resume=resume, next_seq=next_seq).start()

    def _new_stream(self, key: tuple[int, str], file: StreamFile) -> StreamTailer:
        """A stream found by discovery: `file` is its newest file."""
        position = self._resume.get(key)
        if position is not None:
            return self._resumed_stream(file, position)
        if self._first_scan and not self._resuming and run_ended(file.path.parent) is None:
            return self._stream(file, from_end=True)  # live semantics at init; after a restart nothing is skipped
        return self._stream(first_in_run(file), from_end=False)

    def _resumed_stream(self, file: StreamFile, position: dict) -> StreamTailer:
        """Go on from a checkpoint; runs newer than the checkpointed one are read from their first frame."""
        checkpointed = Path(position["file"])
        if checkpointed.exists():
            stream = self._stream(stream_file(checkpointed), False, resume=position)
            stream.offer(file)
            return stream
        run = position.get("run", checkpointed.parent.name)
        next_seq = max(position["next_seq"], position.get("publish_from_seq", 0))  # frames below may be published
        if run_order(file.run) >= run_order(run):
            log.warning("%s is gone (its run was moved); reading run %s from its first frame, seq from %d",
                        checkpointed, file.run, next_seq)
            return self._stream(first_in_run(file), from_end=False, next_seq=next_seq)
        log.warning("%s is gone (its run was moved); following %s from its end", checkpointed, file.path)
        return self._stream(file, from_end=True, next_seq=next_seq)

    def _check_run_end(self) -> None:
        """A run ends with a marker file, its dir removed, or every stream of it that had data idle for long.

        Runs are told apart by their dir (every module has one of the same name on a DAQ node).
        """
        now = time.monotonic()
        by_dir: dict[Path, list[StreamTailer]] = {}
        waiting: set[Path] = set()
        for key, stream in self._streams.items():
            by_dir.setdefault(stream.file.path.parent, []).append(stream)
            if self._held.get(key):
                waiting.add(stream.file.path.parent)  # its last frames wait for a checkpoint: not ended yet
        for run_dir, streams in by_dir.items():
            if run_dir in self._ended_dirs:
                continue
            reason = run_ended(run_dir)
            for stream in streams:  # Hashpipe has closed this run's files: their last frames can be settled
                stream.run_ended = stream.run_ended or reason is not None
            active = [s for s in streams if s.frames or s.tailer.frames_read]
            if reason is None and active and all(now - s.last_data_time > self.run_end_idle_s for s in active):
                reason = f"no new frames in any stream for {self.run_end_idle_s:g} s"
            if reason is not None and run_dir not in waiting and all(s.tailer.lag_bytes < s.tailer.frame_size
                                                                      for s in streams):
                self._ended_dirs.add(run_dir)
                run = run_dir.name
                self._ended_runs.setdefault(run, reason)
                module_id = streams[0].file.module_id
                self.publisher.control("run_end", f"run {run} of module {module_id} ended: {reason}", run=run,
                                       module_id=module_id)

    def _run(self, stop: threading.Event) -> None:
        last_discovery = 0.0
        while not stop.is_set():
            try:
                if self._published and not self._more:  # let small writes gather (a few ms at most)
                    self._published = False
                    stop.wait(_ROUND_GAP_S)
                woken = self.watcher.wait(self._timeout(last_discovery), self.publisher.pollables)
                self.rounds += 1
                if woken.sockets or self.publisher.unread:
                    self.publisher.poll_monitors()
                if self._changed.is_set():
                    self._apply_change()
                    last_discovery = time.monotonic()
                tracking = self._tracking
                if tracking is None:
                    self.publisher.publish_previews(1.0)
                    continue
                if self._holding():
                    continue
                slow = time.monotonic() - last_discovery >= _REDISCOVER_S
                if woken.structure or slow:
                    self._discover(tracking)
                    last_discovery = time.monotonic()
                self._pump(tracking, woken.structure or slow)
                self.error = None
            except OSError as exc:
                if self.error != str(exc):
                    log.warning("tracking %s: %s; retrying", self._tracking and self._tracking.data_dir, exc)
                self.error = str(exc)
                stop.wait(0.5)
            except Exception as exc:  # a bug must not end tracking silently: say it, keep the loop alive
                log.exception("tracking loop error; retrying")
                self.error = f"internal error: {type(exc).__name__}: {exc}"
                stop.wait(0.5)

    def _timeout(self, last_discovery: float) -> float:
        """How long the loop may sleep if nothing wakes it: until the next preview, checkpoint or rescan is due."""
        if self._more:
            return 0.0
        tracking = self._tracking
        preview = self.publisher.preview_due(tracking.update_interval_s if tracking else 1.0)
        if tracking is None:
            return 1.0 if preview is None else max(0.0, preview - time.monotonic())
        due = last_discovery + _REDISCOVER_S
        if preview is not None:
            due = min(due, preview)
        if self._hold_until:
            due = min(due, self._hold_until)
        if self.checkpoint is not None and not self.checkpoint.busy and any(self._held.values()):
            due = min(due, self._last_request + self._checkpoint_gap())
        return max(0.0, due - time.monotonic())

    def _holding(self) -> bool:
        """After a restart, hold publishing up to _RESUME_HOLD_S, ending _SUBSCRIBE_SETTLE_S after a subscriber is back.

        A fixed settle time: ZMQ tells when a subscriber connects, not when its subscriptions arrived.
        """
        if not self._hold_until:
            return False
        self.publisher.poll_monitors()
        now = time.monotonic()
        if self.publisher.subscribers.data and self._hold_until - now > _SUBSCRIBE_SETTLE_S:
            self._hold_until = now + _SUBSCRIBE_SETTLE_S
        if now < self._hold_until:
            return True
        self._hold_until = 0.0
        log.info("publishing again after the restart, to %d subscriber(s)", self.publisher.subscribers.data)
        return False

    def _pump(self, tracking: Tracking, slow: bool) -> None:
        """Read what is new (a few blocks per stream), checkpoint ahead, publish up to the horizon; `slow`: also
        the per-second work (rates, run ends)."""
        self._more = False
        self._origin = tracking.origin
        for key, stream in list(self._streams.items()):
            held = self._held.setdefault(key, [])
            try:
                if len(held) < _BLOCKS_PER_ROUND:
                    self._read(stream, held)
                if stream.error is not None:
                    log.info("%s/%s reads again", stream.file.module_id, stream.file.dp)
                stream.error = None
            except OSError as exc:  # this stream only: the others publish what they read
                if stream.error != str(exc):
                    log.warning("stream %s/%s: %s; retrying", stream.file.module_id, stream.file.dp, exc)
                stream.error = str(exc)
            except Exception as exc:  # a bug in one stream must not drop what the others read: say it, go on
                log.exception("stream %s/%s: internal error; retrying", stream.file.module_id, stream.file.dp)
                stream.error = f"internal error: {type(exc).__name__}: {exc}"
        self._checkpoint_ahead()
        self._publish_held(tracking.origin, None if self.checkpoint is None else self.checkpoint.confirmed)
        self.publisher.publish_previews(tracking.update_interval_s)
        if slow:
            for stream in self._streams.values():
                stream.update_rate()
            self._check_run_end()

    def _read(self, stream: StreamTailer, held: list[StreamBlock]) -> None:
        """Read up to _BLOCKS_PER_ROUND blocks into `held`; a full round means a backlog: come back at once.

        A block shorter than max_batch_frames took all there was: no second read (its file checks) this round.
        """
        while len(held) < _BLOCKS_PER_ROUND:
            block = stream.read()
            if block is None:
                return
            held.append(block)
            if len(block.block) < self.max_batch_frames:
                return
        self._more = True

    def _name(self, key: tuple[int, str]) -> str:
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = f"{key[0]}/{key[1]}"
        return name

    def _checkpoint_gap(self) -> float:
        return 1.0 if self.checkpoint is not None and self.checkpoint.error else _CHECKPOINT_GAP_S

    def _checkpoint_ahead(self) -> None:
        """Ask for a checkpoint before a stream reaches its horizon (halfway through its margin); at most one in
        flight and one per _CHECKPOINT_GAP_S. The new horizons lie _LOOKAHEAD_S of each stream's rate ahead."""
        checkpoint = self.checkpoint
        if checkpoint is None or checkpoint.busy:
            return
        horizons = self._horizons
        if not any(s.next_seq > horizons.get(k, (0, 0, 0))[0] - horizons.get(k, (0, 0, 0))[1] // 2
                   for k, s in self._streams.items()):
            return
        now = time.monotonic()
        elapsed = now - self._last_request
        if elapsed < self._checkpoint_gap():
            return  # the loop's timer comes back for it
        self._last_request = now
        positions = self._unresumed_positions()
        for key, stream in self._streams.items():
            last = horizons.get(key)
            read = stream.next_seq - (last[2] if last else stream.next_seq)
            margin = math.ceil(max(read, 0) * _LOOKAHEAD_S / elapsed)
            # never below a horizon already stored, a frame already published (also while Redis failed) or a
            # resumed horizon: a checkpoint stored later must still cover every frame published before it
            horizon = max(stream.next_seq + margin, last[0] if last else 0, stream.published_to_seq,
                          stream.publish_from_seq)
            horizons[key] = (horizon, margin, stream.next_seq)
            positions[self._name(key)] = {**stream.position(), "publish_from_seq": horizon}
        checkpoint.save_streams(positions)

    def _unresumed_positions(self) -> dict[str, dict]:
        """The checkpointed positions of streams not found again since the restart, kept in every checkpoint."""
        return {self._name(key): position for key, position in self._resume.items()}

    def _publish_held(self, origin: str, confirmed: dict[str, int] | None) -> None:
        """Publish the blocks read whose frames all lie below their stream's confirmed horizon (all: None)."""
        for key, held in self._held.items():
            if not held:
                continue
            limit = None if confirmed is None else confirmed.get(self._name(key), 0)
            while held and (limit is None or held[0].seq[-1] < limit):
                self._published = True
                block = held.pop(0)
                self.publisher.publish(block, origin)
                stream = self._streams.get(key)
                if stream is not None:
                    stream.published(block)
                self.seq_index.record(str(block.file.path), block.block.first_frame_number, int(block.seq[0]),
                                      len(block.block))
            if held:
                self.checkpoint_waits += 1

    def _settle(self) -> None:
        """Store the exact checkpoint (horizons at the next `seq`), then publish what was held for it; before a stop
        or a re-init, so that a clean restart skips nothing. If Redis fails, publishing goes on as elsewhere."""
        if self.checkpoint is None or not self._streams:
            return
        self.checkpoint.flush(_SETTLE_S)
        positions = self._unresumed_positions()
        positions.update({self._name(k): {**s.position(), "publish_from_seq": max(s.next_seq, s.publish_from_seq)}
                          for k, s in self._streams.items()})
        self.checkpoint.save_streams(positions)
        self.checkpoint.flush(_SETTLE_S)
        self._publish_held(self._origin, None)

    def module_ids(self) -> set[int]:
        """Modules with at least one tracked stream."""
        with self._lock:
            return {module_id for module_id, _ in self._streams}

    def status(self) -> dict:
        """Per module and data product: file, counts, rate, lag; plus subscribers and run state."""
        tracking = self._tracking
        modules: dict[str, dict] = {}
        with self._lock:
            streams = sorted(self._streams.items())
            for (module_id, dp), stream in streams:
                modules.setdefault(str(module_id), {})[dp] = stream.status()
        return {
            "data_dir": str(tracking.data_dir) if tracking else None,
            "run": sorted({s.file.run for _, s in streams}) if streams else None,
            "runs_ended": dict(self._ended_runs),
            "modules": modules,
            "subscribers": self.publisher.subscribers.data,
            "preview_subscribers": self.publisher.subscribers.preview,
            "subscribed": self.publisher.subscribers.summary(),
            "messages_published": self.publisher.messages,
            "work": {"loop_rounds": self.rounds, "previews_encoded": self.publisher.previews_encoded,
                     "checkpoint_writes": self.checkpoint.writes if self.checkpoint else 0,
                     "checkpoint_failures": self.checkpoint.failures if self.checkpoint else 0,
                     "checkpoint_waits": self.checkpoint_waits},
            "update_interval_seconds": tracking.update_interval_s if tracking else None,
            "inotify": self.watcher.uses_inotify,
            "socket_hook": self.socket_hook.status() if self.socket_hook else None,
            "checkpoint_error": self.checkpoint.error if self.checkpoint else None,
            "error": self.error,
        }

