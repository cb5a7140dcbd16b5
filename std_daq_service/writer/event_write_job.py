"""One write request whose source is an event builder: record its coincidence events under `/events`.

The window rules are the frames' (see `write_job`), counted in events and timed by event time (`time_ns`):
- `n_images`: that many events, then done.
- `start_time` / `stop_time` (or `start_time` + `duration_seconds`): events whose time lies in [start, stop); a
  start in the past is served from the event ring buffer.
- `duration_seconds` without `start_time`: events that arrive during that many seconds from the request.
- none of these: until killed; the file is then complete.
`timeout_seconds`: no event in that time fails the write; with `n_images`, so does a builder silent that long.
"""

from __future__ import annotations

import logging
import queue
import time

from std_daq_service.broker import RequestContext
from std_daq_service.protocol import DaqError, RequestTimeout, StorageError, WriteRequest
from std_daq_service.writer.event_receiver import EventReceiver, ReceivedEvent
from std_daq_service.writer.event_recording import EventRecording
from std_daq_service.writer.h5_recording import FLUSH_PERIOD_S, H5Recording, describe_hdf5_error
from std_daq_service.writer.write_window import WriteWindow

log = logging.getLogger(__name__)

_END_GRACE_S = 1.0


class EventWriteJob:
    """Run one event write to its end: done, killed, or failed (raises); `recording` is not started yet."""

    def __init__(self, request: WriteRequest, ctx: RequestContext, receiver: EventReceiver, recording: H5Recording,
                 builder: str):
        self.request = request
        self.ctx = ctx
        self.receiver = receiver
        self.recording = recording
        self.builder = builder
        self.events = EventRecording(recording, builder)
        self.incoming: queue.SimpleQueue[ReceivedEvent] = queue.SimpleQueue()
        window = WriteWindow.of(request)
        self.started, self.window_start, self.window_stop = window.started, window.window_start, window.window_stop
        self.arrival_stop, self.silence_deadline = window.arrival_stop, window.silence_deadline
        self.open_ended = window.open_ended
        self.last_seen = self.started
        self.ended = False
        self.warnings: list[str] = []

    def offer(self, received: ReceivedEvent) -> None:
        """The receiver's listener: called by its thread for every new event."""
        if received.builder == self.builder:
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
            self.events.start()
        except OSError as exc:
            recording.close()
            raise StorageError(f"cannot create {recording.part}: {describe_hdf5_error(exc)}") from exc
        with recording, self.events:  # leaving the recording without a commit discards the file
            try:
                complete, reason = self._record()
                recording.commit(complete, reason, {"warnings": self.warnings, **self.events.finish()})
            except Exception as exc:
                if isinstance(exc, OSError) and not isinstance(exc, DaqError):  # a RequestTimeout is an OSError too
                    raise StorageError(f"writing {recording.path} failed, nothing kept: "
                                       f"{describe_hdf5_error(exc)}") from exc
                self._keep_or_discard()
                raise
        events = self.events
        return {
            "output_file": str(recording.path),
            "complete": complete,
            "end_reason": reason,
            "source": self.builder,
            "events": events.n_events,
            "members": events.n_members,
            "missing_events": events.missing_events,
            "streams": {},
            "frames": 0,
            "missing_frames": 0,
            "bytes": events.bytes,
            "first_timestamp_ns": events.first_time,
            "last_timestamp_ns": events.last_time,
            "warnings": self.warnings,
        }

    def _keep_or_discard(self) -> None:
        """After a failure: commit what was recorded, marked incomplete; with nothing recorded, leave nothing."""
        if not self.events.n_events:
            return
        try:
            self.recording.commit(False, "failed; see the request's status",
                                  {"warnings": self.warnings, **self.events.finish()})
        except OSError as exc:
            log.warning("keeping what %s recorded failed, nothing kept: %s", self.recording.path, exc)

    def _record(self) -> tuple[bool, str]:
        """Record until the end; returns (complete, end_reason)."""
        handle, past = self.receiver.attach(self.offer)
        try:
            if self.window_start is not None:
                self._use_past([e for e in past if e.builder == self.builder])
            last_flush = time.monotonic()
            while True:
                if self.ctx.cancelled.is_set():
                    if self.open_ended:
                        return True, "stopped by kill (open-ended write)"
                    return False, f"killed after {self.events.n_events} events"
                finished = self._finished()
                if finished:
                    return True, finished
                self._check_silence()
                try:
                    self._take(self.incoming.get(timeout=0.1))
                    while not self.incoming.empty():
                        self._take(self.incoming.get_nowait())
                except queue.Empty:
                    pass
                if time.monotonic() - last_flush >= FLUSH_PERIOD_S:
                    self.events.flush()
                    self.recording.flush()
                    last_flush = time.monotonic()
                self.ctx.progress(f"{self.events.n_events} events from {self.builder}",
                                  {"streams": {}, "events": self.events.n_events, "bytes": self.events.bytes})
        finally:
            self.receiver.detach(handle)

    def _use_past(self, past: list[ReceivedEvent]) -> None:
        reach_ns = time.time_ns() - int(self.receiver.ring.seconds * 1e9)
        if self.window_start < reach_ns:
            self.warnings.append(
                f"start_time lies {(reach_ns - self.window_start) / 1e9:.1f} s before the event ring buffer's reach "
                f"({self.receiver.ring.seconds:g} s); earlier events are not in the file")
        for received in past:
            self._take(received)

    def _take(self, received: ReceivedEvent) -> None:
        """Record an event if it lies in the window."""
        self.last_seen = max(self.last_seen, received.arrival_monotonic)
        if self.ended:
            return
        if self.arrival_stop is not None and received.arrival_monotonic >= self.arrival_stop:
            self.ended = True
            return
        time_ns = received.event.header.time_ns
        if self.window_start is not None and time_ns < self.window_start:
            return
        if self.window_stop is not None and time_ns >= self.window_stop:
            self.ended = True
            return
        self.events.append(received.event)
        if self.request.n_images is not None and self.events.n_events >= self.request.n_images:
            self.ended = True

    def _finished(self) -> str | None:
        if self.arrival_stop is not None and time.monotonic() >= self.arrival_stop + _END_GRACE_S:
            return f"recorded {self.request.duration_seconds:g} s"
        if self.request.n_images is not None and self.ended:
            return f"{self.request.n_images} events recorded"
        if self.window_stop is not None:
            if self.ended:
                return "the events passed stop_time"
            if time.time_ns() > self.window_stop + (_END_GRACE_S + self.request.timeout_seconds) * 1e9:
                return "stop_time passed"
        return None

    def _check_silence(self) -> None:
        now = time.monotonic()
        timeout = self.request.timeout_seconds
        if now < self.silence_deadline or now - self.last_seen < timeout:
            return
        if not self.events.n_events:
            raise RequestTimeout(f"no events from {self.builder} in {timeout:g} s")
        if self.request.n_images is not None:
            raise RequestTimeout(f"{self.builder} sent no event for {timeout:g} s "
                                 f"({self.events.n_events} of {self.request.n_images} events recorded)")
