"""Subscribe to every configured agent, keep a ring buffer per stream, and hand new frames to running writes."""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import zmq

from std_daq_service.config import AgentStream
from std_daq_service.lifecycle import BackgroundThread, Lifecycle
from std_daq_service.protocol import (
    FrameBatch,
    InvalidMessage,
    Peek,
    decode_frames,
    decode_stream_message,
    file_topic_prefixes,
    peek,
    stream_subscriber,
    subscriber_topic,
)
from std_daq_service.writer.ring_buffer import RingBuffer

log = logging.getLogger(__name__)

StreamKey = tuple[str, int, str]
"""(agent SERVICE_NAME, module_id, data product)."""

_RECEIVE_HWM = 200  # messages (up to 1000 frames each) queued per agent; beyond, ZMQ drops


@dataclass(eq=False)
class ReceivedBatch:
    """A frame message from an agent as the writer received it, decoded only when a write needs it.

    The receive thread only peeks at the message (stream and frame count) and keeps its zero-copy parts;
    a write decodes the batches it selects, in its own thread.
    """

    agent: str
    peeked: Peek
    parts: list[memoryview]
    arrival_ns: int
    arrival_monotonic: float

    @property
    def key(self) -> StreamKey:
        return self.agent, self.peeked.module_id, self.peeked.dp

    @property
    def nbytes(self) -> int:
        return sum(len(part) for part in self.parts)

    @cached_property
    def batch(self) -> FrameBatch:
        """The decoded message (raises InvalidMessage)."""
        return decode_frames(self.parts)


@dataclass
class StreamState:
    """What the receiver knows of one stream."""

    frames: int = 0
    messages: int = 0
    last_arrival: float = field(default_factory=time.monotonic)


Listener = Callable[[ReceivedBatch], None]


class StreamReceiver(Lifecycle):
    """One thread with a SUB socket per agent; frames go to the ring buffer and to attached listeners.

    Each SUB declares itself a writer (`subscriber_topic`), so the agents' inits do not wait for it.

    Messages are not decoded here (see `ReceivedBatch`): only the writes that select them pay for it.
    """

    def __init__(self, service_name: str, agents: list[AgentStream], ring: RingBuffer):
        self.service_name = service_name
        self.agents = {agent.name: agent.data for agent in agents}
        self.ring = ring
        self.streams: dict[StreamKey, StreamState] = {}
        self.controls: collections.deque[dict] = collections.deque(maxlen=20)
        self.bad_messages = 0
        self._listeners: dict[int, Listener] = {}
        self._handles = itertools.count()
        self._lock = threading.Lock()
        self._sockets: dict[zmq.Socket, str] = {}
        self._thread = BackgroundThread("stream-receiver", self._run)

    def _open(self) -> None:
        context = zmq.Context.instance()
        for name, endpoint in self.agents.items():
            sock = stream_subscriber(context)
            self._sockets[sock] = name
            sock.setsockopt(zmq.RCVHWM, _RECEIVE_HWM)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            for prefix in file_topic_prefixes():  # socket-hook frames are other streams: not recorded
                sock.setsockopt(zmq.SUBSCRIBE, prefix)
            sock.setsockopt(zmq.SUBSCRIBE, subscriber_topic("writer", self.service_name))  # infrastructure
            log.info("subscribed to %s at %s", name, endpoint)
        self._thread.start()

    def _release(self) -> None:
        self._thread.close()
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()

    def attach(self, listener: Listener) -> tuple[int, list[ReceivedBatch]]:
        """Call `listener` with every batch from now on; returns its handle and the ring buffer's batches.

        Both happen under one lock, so each batch is either in the returned past or given to the listener.
        """
        with self._lock:
            handle = next(self._handles)
            self._listeners[handle] = listener
            return handle, self.ring.batches()

    def detach(self, handle: int) -> None:
        with self._lock:
            self._listeners.pop(handle, None)

    def known_streams(self, within_s: float) -> list[StreamKey]:
        """Streams that sent frames in the last `within_s` seconds."""
        now = time.monotonic()
        with self._lock:
            return [key for key, state in self.streams.items() if now - state.last_arrival <= within_s]

    def _run(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        while not stop.is_set():
            events = dict(poller.poll(100))
            for sock, name in self._sockets.items():
                if sock in events:
                    try:
                        self._drain(sock, name)
                    except Exception:  # a bug must not stop the recording of every stream: say it, go on
                        self.bad_messages += 1
                        log.exception("receiving from %s failed; going on", name)
            if not events:
                with self._lock:
                    self.ring.trim()

    def _drain(self, sock: zmq.Socket, agent: str, limit: int = 100) -> None:
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            parts = [frame.buffer for frame in frames]  # zero-copy
            try:
                peeked = peek(parts)
            except InvalidMessage as exc:
                self._drop(agent, str(exc))
                continue
            if peeked.kind == "control":
                self._control(agent, parts)
            elif peeked.origin != "file":
                self._drop(agent, f"socket-hook frames of module {peeked.module_id} {peeked.dp} are not recorded")
            else:
                self._deliver(ReceivedBatch(agent, peeked, parts, time.time_ns(), time.monotonic()))

    def _drop(self, agent: str, why: str) -> None:
        self.bad_messages += 1
        log.warning("message from %s dropped: %s", agent, why)

    def _control(self, agent: str, parts: list[memoryview]) -> None:
        try:
            message = decode_stream_message(parts)
        except InvalidMessage as exc:
            self._drop(agent, str(exc))
            return
        log.info("%s: %s %s", agent, message.event, message.message)
        self.controls.append({"agent": agent, "event": message.event, "message": message.message})

    def _deliver(self, received: ReceivedBatch) -> None:
        with self._lock:
            state = self.streams.get(received.key)
            if state is None:
                state = self.streams[received.key] = StreamState()
            state.frames += received.peeked.n_frames
            state.messages += 1
            state.last_arrival = received.arrival_monotonic
            self.ring.add(received)
            for listener in self._listeners.values():
                listener(received)

    def status(self) -> dict:
        now = time.monotonic()
        with self._lock:
            streams = {
                f"{agent}/{module_id}/{dp}": {"frames": s.frames, "messages": s.messages,
                                              "seconds_since_data": round(now - s.last_arrival, 2)}
                for (agent, module_id, dp), s in sorted(self.streams.items())
            }
            return {"agents": self.agents, "streams": streams, "ring_buffer": self.ring.status(),
                    "bad_messages": self.bad_messages, "recent_controls": list(self.controls)}
