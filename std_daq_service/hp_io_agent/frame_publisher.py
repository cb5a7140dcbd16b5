"""ZMQ PUB sockets of the agent: every frame on the data socket, the latest per stream on the preview socket."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from std_daq_service.hp_io_agent.socket_hook import SocketBlock
from std_daq_service.hp_io_agent.stream_tailer import StreamBlock
from std_daq_service.lifecycle import Lifecycle
from std_daq_service.pff import FrameBlock
from std_daq_service.protocol import encode_control, encode_frames, parse_subscriber_topic

log = logging.getLogger(__name__)


class FrameSource(NamedTuple):
    """Where a block of frames comes from, as its messages describe it."""

    module_id: int
    dp: str
    origin: str
    run: str | None = None
    file: str | None = None
    seqno: int | None = None


_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)

USER = "user"
"""The kind of subscriber whose stream an init must not break unasked; every other declared kind is infrastructure."""


@dataclass(frozen=True)
class Subscribers:
    """Who is subscribed now: connections per socket, and who the subscribers said they are (both sockets).

    A subscriber declares itself by subscribing to its `subscriber_topic` (see `protocol.frames`); ZMQ reports that
    subscription when it arrives and its end when the subscriber unsubscribes or disconnects, also when it dies.
    """

    data: int = 0
    preview: int = 0
    declared: tuple[tuple[str, str], ...] = ()
    """(kind, name) once per live declaring subscription."""

    @property
    def users(self) -> list[str]:
        """Names of the user streams (their stream request ids)."""
        return sorted(name for kind, name in self.declared if kind == USER)

    @property
    def infrastructure(self) -> list[str]:
        """`<kind> <name>` of the infrastructure subscribers (writers...)."""
        return sorted(f"{kind} {name}" for kind, name in self.declared if kind != USER)

    @property
    def unknown(self) -> int:
        """Connections that did not say who they are (raw ZMQ subscribers, other software)."""
        return max(0, self.data + self.preview - len(self.declared))

    def protected(self) -> str | None:
        """What an init without force would break: user streams and unknown subscribers; None if nothing."""
        parts = []
        if self.users:
            parts.append(f"{len(self.users)} user stream(s) (stream request {', '.join(self.users)})")
        if self.unknown:
            parts.append(f"{self.unknown} unidentified subscriber(s)")
        return " and ".join(parts) or None

    def summary(self) -> dict:
        """Counts by kind and names where known, for `status`."""
        names: dict[str, list[str]] = {}
        for kind, name in sorted(self.declared):
            names.setdefault(kind, []).append(name)
        return {"users": len(self.users), "infrastructure": len(self.infrastructure), "unknown": self.unknown,
                "names": names}


class FramePublisher(Lifecycle):
    """Own the data and preview publishing (XPUB) sockets; `start()` binds them.

    Two threads publish: the tracker's and the socket hook's (`publish_frames`). A lock serialises every use of
    the sockets and of the latest frames (a ZMQ socket may change threads behind a full memory barrier), and the
    tracker's loop polls the data socket's file descriptor, not the socket (`pollables`): ZMQ signals on it only
    once, so whichever thread sends and finds (un)subscriptions unread wakes the loop through `wake`, which is also
    called when a preview becomes due.

    Messages are sent without blocking: a subscriber whose queue (send_hwm messages) is full loses
    messages, never the agent or other subscribers; it sees the loss as a gap in `seq`. Previews are
    encoded only while the preview socket has a subscriber; the first to subscribe gets the latest frame of
    every stream at the next `publish_previews` (later ones, as before, the next frames: a PUB socket cannot send
    to one subscriber, and the others must not get a frame twice). The preview socket applies a subscription only
    when `poll_monitors` reads it (XPUB_MANUAL): otherwise ZMQ applies it on its own, during any send, and a
    subscriber could get the latest frames before its subscription is read as the first, and again after.
    """

    def __init__(self, service_name: str, data_bind: str, preview_bind: str, send_hwm: int,
                 wake: Callable[[], None] = lambda: None):
        self.wake = wake
        self._lock = threading.Lock()
        self.service_name = service_name
        self.data_bind = data_bind
        self.preview_bind = preview_bind
        self.send_hwm = send_hwm
        self.subscribers = Subscribers()
        self.messages = 0
        self.previews_encoded = 0
        self._connections: dict[str, int] = {}
        self._declared: dict[str, collections.Counter[tuple[str, str]]] = {}
        self._latest: dict[tuple[int, str, str], tuple[FrameSource, FrameBlock, np.ndarray]] = {}
        self._fresh: set[tuple[int, str, str]] = set()
        self._preview_subscriptions = 0
        self._last_preview = 0.0
        self._sockets: dict[str, zmq.Socket] = {}  # "data", "preview"
        self._data_fd = -1
        self._monitors: dict[str, zmq.Socket] = {}

    def _open(self) -> None:
        context = zmq.Context.instance()
        for name, bind in (("data", self.data_bind), ("preview", self.preview_bind)):
            sock = self._sockets[name] = context.socket(zmq.XPUB)  # a PUB that also hears the subscriptions
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # each (un)subscription, also on disconnect and repeated ones
            if name == "preview":
                sock.setsockopt(zmq.XPUB_MANUAL, 1)  # in effect when read: see the class
            sock.setsockopt(zmq.SNDHWM, self.send_hwm)
            sock.setsockopt(zmq.LINGER, 0)
            # watched before it binds: a subscriber already retrying its connect is accepted at once, and counted
            self._monitors[name] = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
            self._connections[name] = 0
            self._declared[name] = collections.Counter()
            sock.bind(bind)
        self._data_fd = self._sockets["data"].getsockopt(zmq.FD)
        self.data_endpoint = self._sockets["data"].getsockopt_string(zmq.LAST_ENDPOINT)
        self.preview_endpoint = self._sockets["preview"].getsockopt_string(zmq.LAST_ENDPOINT)

    def _release(self) -> None:
        for sock in self._sockets.values():
            sock.disable_monitor()
        for monitor in self._monitors.values():
            monitor.close(linger=0)
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._monitors.clear()
        self._sockets.clear()
        self._connections.clear()
        self._declared.clear()
        self._preview_subscriptions = 0
        self.subscribers = Subscribers()

    def publish(self, stream: StreamBlock, origin: str = "file") -> None:
        """Send a block of frames read from a file as one message."""
        f = stream.file
        source = FrameSource(f.module_id, f.dp, origin, f.run, f.path.name, f.seqno)
        self.publish_frames(source, stream.block, stream.seq)

    def publish_socket(self, received: SocketBlock) -> None:
        """Send frames of the socket hook as one message (`seq` numbers them in their stream)."""
        block = received.block
        self.publish_frames(FrameSource(received.module_id, received.dp, "socket"), block, block.frame_numbers)

    def publish_frames(self, source: FrameSource, block: FrameBlock, seq: np.ndarray) -> None:
        """Send a block of frames of one stream as one message and remember its last frame for the preview."""
        parts = self._encode(source, block, seq)
        key = (source.module_id, source.dp, source.origin)
        with self._lock:
            self._send_data(parts)
            self._latest[key] = (source, block, seq)
            due = not self._fresh and self.subscribers.preview
            self._fresh.add(key)
        if due:
            self.wake()

    def _encode(self, source: FrameSource, block: FrameBlock, seq: np.ndarray) -> list[bytes]:
        return encode_frames(
            source=self.service_name,
            origin=source.origin,
            module_id=source.module_id,
            dp=source.dp,
            shape=block.dp.shape,
            run=source.run,
            file=source.file,
            seqno=source.seqno,
            frame_number=block.frame_numbers,
            seq=seq,
            wr_timestamp_ns=block.wr_timestamp_ns,
            host_timestamp_ns=block.host_timestamp_ns,
            pff_fields=block.fields,
            image_bytes=block.image_bytes,
        )

    def _send(self, socket_name: str, parts: list[bytes]) -> None:
        """`send_multipart` without its per-call type checks and flag enums (the parts are bytes)."""
        sock, copy = self._sockets[socket_name], len(parts[-1]) < 65536
        try:
            for part in parts[:-1]:
                sock.send(part, _MORE, copy=copy)
            sock.send(parts[-1], _LAST, copy=copy)
            self.messages += 1
        except zmq.Again:
            pass  # a PUB socket drops for a full subscriber rather than block; its subscriber sees a seq gap

    def _send_data(self, parts: list[bytes]) -> None:
        """Send on the data socket (holding the lock); wake the loop if (un)subscriptions wait there: the send may
        have taken the descriptor's signal for them."""
        self._send("data", parts)
        if self._sockets["data"].getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self.wake()

    @property
    def unread(self) -> bool:
        """Do (un)subscriptions wait on the data socket (whose descriptor may not say so any more)?"""
        with self._lock:
            return bool(self._sockets["data"].getsockopt(zmq.EVENTS) & zmq.POLLIN)

    @property
    def pollables(self) -> list[zmq.Socket | int]:
        """What is readable when `poll_monitors` has something to read (the data socket by its descriptor)."""
        return [self._data_fd, self._sockets["preview"], *self._monitors.values()]

    def preview_due(self, interval_s: float) -> float | None:
        """When (monotonic) `publish_previews(interval_s)` has something to send; None: not before something changes."""
        if not self.subscribers.preview or not self._fresh:
            return None
        return self._last_preview + interval_s

    def publish_previews(self, interval_s: float) -> None:
        """Every `interval_s`, while someone subscribes to previews, send the latest frame of each stream that had
        new frames (of every stream after a new subscription)."""
        if not self._fresh or not self.subscribers.preview:
            return
        now = time.monotonic()
        if now - self._last_preview < interval_s:
            return
        self._last_preview = now
        with self._lock:
            latest = [self._latest[key] for key in self._fresh]
            self._fresh.clear()
        for source, block, seq in latest:
            parts = self._encode(source, block[len(block) - 1 :], seq[-1:])
            with self._lock:
                self._send("preview", parts)
            self.previews_encoded += 1

    def forget_file_streams(self) -> None:
        """Drop the latest frames of the streams read from files (a new tracking); socket streams stay."""
        with self._lock:
            for key in [key for key in self._latest if key[2] != "socket"]:
                del self._latest[key]
                self._fresh.discard(key)

    def control(self, event: str, message: str, **fields) -> None:
        """Announce a run start or end, a re-initialisation or a stop on both sockets."""
        log.info("stream control %s: %s", event, message)
        parts = encode_control(self.service_name, event, message, **fields)
        with self._lock:
            self._send_data(parts)
            self._send("preview", parts)

    def poll_monitors(self) -> None:
        """Update `subscribers` from the sockets' connection events and the subscriptions that declare a kind."""
        for name, sock in self._sockets.items():
            self._connections[name] += _connection_change(self._monitors[name])
            with self._lock:
                if name == "data":
                    _read_subscriptions(sock, self._declared[name])
                    continue
                change = _read_subscriptions(sock, self._declared[name], self._preview_subscriptions)
                if change.first:  # nobody had them: no one gets one twice
                    self._fresh.update(self._latest)
                    self._last_preview = 0.0
            self._preview_subscriptions += change.net
        declared = [entry for counter in self._declared.values() for entry in counter.elements()]
        self.subscribers = Subscribers(self._connections["data"], self._connections["preview"], tuple(declared))


def _connection_change(monitor: zmq.Socket) -> int:
    """Connections accepted minus connections closed since the last call."""
    change = 0
    while monitor.poll(0):
        change += 1 if recv_monitor_message(monitor)["event"] == zmq.EVENT_ACCEPTED else -1
    return change


class _SubscriptionChange(NamedTuple):
    first: bool
    """A subscription came in (while there was none, when the count is known)."""
    net: int
    """Subscriptions minus unsubscriptions."""


def _read_subscriptions(sock: zmq.Socket, declared: collections.Counter[tuple[str, str]],
                        subscriptions: int | None = None) -> _SubscriptionChange:
    """Read the (un)subscriptions queued on an XPUB socket; apply those that declare a subscriber's kind.

    `subscriptions`: how many the socket had, for an XPUB_MANUAL socket; each (un)subscription is applied as read.
    """
    first, net = False, 0
    while True:
        try:
            message = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return _SubscriptionChange(first, net)
        subscribed = message[:1] == b"\x01"
        if subscriptions is not None:
            sock.setsockopt(zmq.SUBSCRIBE if subscribed else zmq.UNSUBSCRIBE, message[1:])
        first = first or (subscribed and (subscriptions is None or subscriptions + net <= 0))
        net += 1 if subscribed else -1
        entry = parse_subscriber_topic(message[1:])
        if entry is None:
            continue
        declared[entry] += 1 if subscribed else -1
        if declared[entry] <= 0:
            del declared[entry]
