"""The agent's replay socket: past frames from the PFF files, rate-limited, beside the live stream.

Replays have a ZMQ XPUB socket of their own (config `replay_bind`), so the live data socket never waits for one.
A requester subscribes to the frame topics it wants and declares itself with `subscriber.replay.<request id>.`;
the agent publishes once that declaration arrived (so no frame goes out before the subscriptions are in place).
The socket does not drop (`XPUB_NODROP`): a replay waits for a slow subscriber, and gives up after
`SEND_TIMEOUT_S` without progress. All replays of an agent together keep below `replay_max_frames_per_second`
and `replay_max_bytes_per_second`.
"""

from __future__ import annotations

import collections
import threading
import time

import zmq

from std_daq_service.lifecycle import Lifecycle
from std_daq_service.protocol import RequestKilled, RequestTimeout, parse_subscriber_topic

REPLAY = "replay"
"""The subscriber kind a replay requester declares on the replay socket."""
SEND_TIMEOUT_S = 30.0
_HWM = 1000


class RateLimit:
    """Hold callers so that frames and bytes stay below their rates per second, over every caller together."""

    def __init__(self, frames_per_second: float, bytes_per_second: float):
        self.frames_per_second = frames_per_second
        self.bytes_per_second = bytes_per_second
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, frames: int, nbytes: int, cancelled: threading.Event) -> None:
        """Return when `frames` frames of `nbytes` bytes may go out (at once if `cancelled` is set)."""
        cost = max(frames / self.frames_per_second, nbytes / self.bytes_per_second)
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now - 0.05)  # an idle limiter gives no burst beyond 50 ms
            self._next = start + cost
        if start > now:
            cancelled.wait(start - now)


class ReplayPublisher(Lifecycle):
    """Own the replay XPUB socket (thread-safe: replays run in their request threads); `start()` binds it."""

    def __init__(self, bind: str, frames_per_second: float, bytes_per_second: float):
        self.bind = bind
        self.rate = RateLimit(frames_per_second, bytes_per_second)
        self.endpoint = ""
        self._lock = threading.Lock()
        self._declared: collections.Counter[str] = collections.Counter()

    def _open(self) -> None:
        sock = self._socket = zmq.Context.instance().socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full subscriber makes the send wait (EAGAIN), never lose frames
        sock.setsockopt(zmq.SNDHWM, _HWM)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.bind)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _release(self) -> None:
        self._socket.close(linger=0)

    def _read_subscriptions(self) -> None:
        while True:
            try:
                message = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            entry = parse_subscriber_topic(message[1:])
            if entry is None or entry[0] != REPLAY:
                continue
            self._declared[entry[1]] += 1 if message[:1] == b"\x01" else -1
            if self._declared[entry[1]] <= 0:
                del self._declared[entry[1]]

    def subscribed(self, replay_id: str) -> bool:
        """Has a requester declared itself for this replay (and not gone since)?"""
        with self._lock:
            self._read_subscriptions()
            return replay_id in self._declared

    def wait_for_subscriber(self, replay_id: str, timeout: float, cancelled: threading.Event) -> None:
        """Return once the requester of `replay_id` subscribed.

        Raises:
            RequestTimeout: nobody declared `subscriber.replay.<replay_id>.` within `timeout` seconds.
            RequestKilled: the replay was killed meanwhile.
        """
        deadline = time.monotonic() + timeout
        while not self.subscribed(replay_id):
            if cancelled.is_set():
                raise RequestKilled(f"replay {replay_id} killed while waiting for its subscriber")
            if time.monotonic() > deadline:
                raise RequestTimeout(
                    f"nobody subscribed to the replay at {self.endpoint} with subscriber.{REPLAY}.{replay_id}. "
                    f"within {timeout:g} s; subscribe before sending the replay request")
            cancelled.wait(0.01)

    def send(self, parts: list[bytes], cancelled: threading.Event) -> None:
        """Send one message, waiting while a subscriber's queue is full.

        Raises:
            RequestTimeout: no subscriber took a message for `SEND_TIMEOUT_S`.
            RequestKilled: the replay was killed meanwhile.
        """
        deadline = time.monotonic() + SEND_TIMEOUT_S
        while True:
            with self._lock:
                try:
                    self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=len(parts[-1]) < 65536)
                    return
                except zmq.Again:
                    pass
            if cancelled.is_set():
                raise RequestKilled("replay killed")
            if time.monotonic() > deadline:
                raise RequestTimeout(f"the replay's subscribers took nothing for {SEND_TIMEOUT_S:g} s")
            cancelled.wait(0.002)
