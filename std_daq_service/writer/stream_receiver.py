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

import numpy as np
import zmq

from std_daq_service.config import AgentStream
from std_daq_service.pff import DATA_PRODUCTS
from std_daq_service.protocol import (
    CONTROL_TOPIC,
    FrameBatch,
    InvalidMessage,
    decode_stream_message,
    file_topic_prefixes,
    parse_topic,
)

log = logging.getLogger(__name__)

StreamKey = tuple[str, int, str]
"""(agent SERVICE_NAME, module_id, data product)."""

_RECEIVE_HWM = 200  # messages (up to 1000 frames each) queued per agent; beyond, ZMQ drops


@dataclass(eq=False)
class ReceivedBatch:
    """A frame message from an agent as the writer received it, decoded only when a write needs it.

    The receive thread reads the stream (module and data product) from the topic alone and keeps the
    message's zero-copy parts; a write decodes the batches it selects, in its own thread.
    """

    agent: str
    module_id: int
    dp: str
    parts: list[memoryview]
    arrival_ns: int
    arrival_monotonic: float

    @property
    def key(self) -> StreamKey:
        return self.agent, self.module_id, self.dp

    @property
    def nbytes(self) -> int:
        return sum(len(part) for part in self.parts)

    @property
    def n_frames(self) -> int:
        return len(self.parts[3]) // DATA_PRODUCTS[self.dp].image_size

    @cached_property
    def batch(self) -> FrameBatch:
        """The decoded message (raises InvalidMessage)."""
        message = decode_stream_message(self.parts)
        if not isinstance(message, FrameBatch) or (message.module_id, message.dp) != (self.module_id, self.dp):
            raise InvalidMessage(f"message from {self.agent} does not match its topic")
        return message

    @cached_property
    def frame_times(self) -> np.ndarray:
        """Per frame: WR time in Unix ns, or the host time where WR time is invalid."""
        wr = self.batch.header["wr_timestamp_ns"]
        return np.where(wr < 0, self.batch.header["host_timestamp_ns"], wr)


@dataclass
class StreamState:
    """What the receiver knows of one stream."""

    frames: int = 0
    messages: int = 0
    last_arrival: float = field(default_factory=time.monotonic)


class RingBuffer:
    """The recent past of every stream: batches younger than `seconds`, all together under `max_bytes`."""

    def __init__(self, seconds: float, max_bytes: int):
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._batches: collections.deque[ReceivedBatch] = collections.deque()

    def add(self, received: ReceivedBatch) -> None:
        self._batches.append(received)
        self.nbytes += received.nbytes
        self.trim()

    def trim(self) -> None:
        oldest = time.monotonic() - self.seconds
        while self._batches and (self.nbytes > self.max_bytes or self._batches[0].arrival_monotonic < oldest):
            self.nbytes -= self._batches.popleft().nbytes

    def batches(self) -> list[ReceivedBatch]:
        return list(self._batches)

    def status(self) -> dict:
        span = 0.0
        if self._batches:
            span = time.monotonic() - self._batches[0].arrival_monotonic
        return {"messages": len(self._batches), "bytes": self.nbytes, "seconds": round(span, 2),
                "max_seconds": self.seconds, "max_bytes": self.max_bytes}


Listener = Callable[[ReceivedBatch], None]


class StreamReceiver:
    """One thread with a SUB socket per agent; frames go to the ring buffer and to attached listeners.

    Messages are not decoded here (see `ReceivedBatch`): only the writes that select them pay for it.
    """

    def __init__(self, agents: list[AgentStream], ring: RingBuffer):
        self.agents = {agent.name: agent.data for agent in agents}
        self.ring = ring
        self.streams: dict[StreamKey, StreamState] = {}
        self.controls: collections.deque[dict] = collections.deque(maxlen=20)
        self.bad_messages = 0
        self._listeners: dict[int, Listener] = {}
        self._handles = itertools.count()
        self._lock = threading.Lock()
        self._context = zmq.Context.instance()
        self._sockets: dict[zmq.Socket, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StreamReceiver:
        for name, endpoint in self.agents.items():
            sock = self._context.socket(zmq.SUB)
            sock.setsockopt(zmq.RCVHWM, _RECEIVE_HWM)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            for prefix in file_topic_prefixes():  # socket-hook frames are other streams: not recorded
                sock.setsockopt(zmq.SUBSCRIBE, prefix)
            self._sockets[sock] = name
            log.info("subscribed to %s at %s", name, endpoint)
        self._thread = threading.Thread(target=self._run, name="stream-receiver", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()

    def __enter__(self) -> StreamReceiver:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

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

    def _run(self) -> None:
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
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
            if len(parts) == 2 and parts[0] == CONTROL_TOPIC:
                self._control(agent, parts)
                continue
            stream = parse_topic(parts[0]) if len(parts) == 4 else None
            if stream is not None and stream[2] != "file":
                stream = None
            if stream is None:
                self.bad_messages += 1
                log.warning("message from %s with %d parts and topic %r dropped", agent, len(parts),
                            bytes(parts[0][:40]))
                continue
            dp, module_id, _ = stream
            self._deliver(ReceivedBatch(agent, module_id, dp, parts, time.time_ns(), time.monotonic()))

    def _control(self, agent: str, parts: list[memoryview]) -> None:
        try:
            message = decode_stream_message(parts)
        except InvalidMessage as exc:
            self.bad_messages += 1
            log.warning("bad control message from %s dropped: %s", agent, exc)
            return
        log.info("%s: %s %s", agent, message.event, message.message)
        self.controls.append({"agent": agent, "event": message.event, "message": message.message})

    def _deliver(self, received: ReceivedBatch) -> None:
        with self._lock:
            state = self.streams.get(received.key)
            if state is None:
                state = self.streams[received.key] = StreamState()
            state.frames += received.n_frames
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
