"""Subscribe to every configured event builder, keep its recent events, and hand new ones to running writes."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from std_daq_service.config import EventStream
from std_daq_service.lifecycle import BackgroundThread, Lifecycle
from std_daq_service.protocol import EVENT_TOPIC, CoincidenceEvent, InvalidMessage, decode_event, stream_subscriber
from std_daq_service.writer.ring_buffer import RingBuffer

log = logging.getLogger(__name__)

_RECEIVE_HWM = 10_000  # events queued per builder; beyond, ZMQ drops (seen as event_id gaps)


@dataclass(frozen=True, eq=False)
class ReceivedEvent:
    """A decoded coincidence event as the writer received it."""

    builder: str
    event: CoincidenceEvent
    nbytes: int
    arrival_monotonic: float


EventListener = Callable[[ReceivedEvent], None]


class EventReceiver(Lifecycle):
    """One thread with a SUB socket per event builder; events go to a ring buffer and to attached listeners."""

    def __init__(self, builders: list[EventStream], ring: RingBuffer):
        self.builders = {builder.name: builder.events for builder in builders}
        self.ring = ring
        self.events: dict[str, int] = dict.fromkeys(self.builders, 0)
        self.bad_messages = 0
        self._listeners: dict[int, EventListener] = {}
        self._handles = itertools.count()
        self._lock = threading.Lock()
        self._sockets: dict[zmq.Socket, str] = {}
        self._thread = BackgroundThread("event-receiver", self._run)

    def _open(self) -> None:
        context = zmq.Context.instance()
        for name, endpoint in self.builders.items():
            sock = stream_subscriber(context)
            self._sockets[sock] = name
            sock.setsockopt(zmq.RCVHWM, _RECEIVE_HWM)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC)
            log.info("subscribed to the events of %s at %s", name, endpoint)
        if self._sockets:
            self._thread.start()

    def _release(self) -> None:
        self._thread.close()
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()

    def attach(self, listener: EventListener) -> tuple[int, list[ReceivedEvent]]:
        """Call `listener` with every event from now on; returns its handle and the ring buffer's events.

        Both happen under one lock, so each event is either in the returned past or given to the listener.
        """
        with self._lock:
            handle = next(self._handles)
            self._listeners[handle] = listener
            return handle, self.ring.batches()

    def detach(self, handle: int) -> None:
        with self._lock:
            self._listeners.pop(handle, None)

    def _run(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        while not stop.is_set():
            ready = dict(poller.poll(100))
            for sock, name in self._sockets.items():
                if sock in ready:
                    self._drain(sock, name)
            if not ready:
                with self._lock:
                    self.ring.trim()

    def _drain(self, sock: zmq.Socket, builder: str, limit: int = 100) -> None:
        for _ in range(limit):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = decode_event(parts)
            except InvalidMessage as exc:
                self.bad_messages += 1
                log.warning("event message from %s dropped: %s", builder, exc)
                continue
            received = ReceivedEvent(builder, event, sum(len(part) for part in parts), time.monotonic())
            with self._lock:
                self.events[builder] += 1
                self.ring.add(received)  # the ring needs only `nbytes` and `arrival_monotonic`
                for listener in self._listeners.values():
                    listener(received)

    def status(self) -> dict:
        with self._lock:
            return {"event_builders": self.builders, "events_received": dict(self.events),
                    "event_bad_messages": self.bad_messages, "event_ring_buffer": self.ring.status()}
