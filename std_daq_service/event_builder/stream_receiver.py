"""Subscribe to the pulse-height streams of every configured agent and feed the event assembler."""

from __future__ import annotations

import logging
import threading
import time

import zmq

from std_daq_service.config import AgentStream
from std_daq_service.event_builder.event_assembler import EventAssembler
from std_daq_service.event_builder.event_publisher import EventPublisher
from std_daq_service.event_builder.frame_table import PULSE_HEIGHT_PRODUCTS
from std_daq_service.lifecycle import BackgroundThread, Lifecycle
from std_daq_service.protocol import (
    CONTROL_TOPIC,
    InvalidMessage,
    decode_frames,
    peek,
    stream_subscriber,
    subscriber_topic,
)

log = logging.getLogger(__name__)

_RECEIVE_HWM = 1000
_POLL_MS = 20
_IDLE_POLL_MS = 250  # with no frame pending only a message brings work: wake seldom (and see `stop` within this)
_ROUND_PERIOD_S = 0.02  # match at most this often: a round's cost grows with the frames pending


class StreamReceiver(Lifecycle):
    """One thread: a SUB socket per agent (ph256/ph1024 topics only), matching, and publishing of events.

    Messages are routed with `peek`; socket-hook snapshots are not matched (they are a sample, not the stream).
    Each SUB declares itself an event builder (`subscriber_topic`), so the agents' inits do not wait for it.
    """

    def __init__(self, service_name: str, agents: list[AgentStream], assembler: EventAssembler,
                 publisher: EventPublisher):
        self.service_name = service_name
        self.agents = {agent.name: agent.data for agent in agents}
        self.assembler = assembler
        self.publisher = publisher
        self.frames: dict[str, int] = {}
        self.lost_frames = 0
        self.bad_messages = 0
        self._next_seq: dict[tuple[str, int, str], int] = {}
        self._sockets: dict[zmq.Socket, str] = {}
        self._thread = BackgroundThread("event-builder", self._run)

    def _open(self) -> None:
        context = zmq.Context.instance()
        for name, endpoint in self.agents.items():
            sock = stream_subscriber(context)
            self._sockets[sock] = name
            sock.setsockopt(zmq.RCVHWM, _RECEIVE_HWM)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            for dp in PULSE_HEIGHT_PRODUCTS:
                sock.setsockopt(zmq.SUBSCRIBE, f"{dp}.".encode())
            sock.setsockopt(zmq.SUBSCRIBE, CONTROL_TOPIC)
            sock.setsockopt(zmq.SUBSCRIBE, subscriber_topic("event_builder", self.service_name))  # infrastructure
            log.info("subscribed to the pulse-height streams of %s at %s", name, endpoint)
        self._thread.start()

    def _release(self) -> None:
        self._thread.close()
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()

    def _run(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        last_round = 0.0
        while not stop.is_set():
            events = dict(poller.poll(_POLL_MS if self.assembler.pending else _IDLE_POLL_MS))
            for sock, name in self._sockets.items():
                if sock in events:
                    self._drain(sock, name)
            if time.monotonic() - last_round < _ROUND_PERIOD_S:
                continue
            last_round = time.monotonic()
            try:
                for message in self.assembler.release():
                    self.publisher.send(message)
            except Exception:  # a bug in one round must not stop the builder: say it, go on
                log.exception("matching failed; going on")

    def _drain(self, sock: zmq.Socket, agent: str, limit: int = 100) -> None:
        for _ in range(limit):
            try:
                parts = [frame.buffer for frame in sock.recv_multipart(zmq.NOBLOCK, copy=False)]
            except zmq.Again:
                return
            try:
                peeked = peek(parts)
                if peeked.kind == "control" or peeked.origin != "file":
                    continue
                batch = decode_frames(parts)
            except InvalidMessage as exc:
                self.bad_messages += 1
                log.warning("message from %s dropped: %s", agent, exc)
                continue
            self.frames[agent] = self.frames.get(agent, 0) + len(batch)
            stream = (agent, batch.module_id, batch.dp)
            expected = self._next_seq.get(stream)
            if expected is not None and int(batch.seq[0]) > expected:  # dropped at a high-water mark
                self.lost_frames += int(batch.seq[0]) - expected
            self._next_seq[stream] = int(batch.seq[-1]) + 1
            self.assembler.add(agent, batch, time.monotonic())

    def status(self) -> dict:
        return {"agents": self.agents, "frames_received": dict(self.frames), "lost_frames": self.lost_frames,
                "bad_messages": self.bad_messages,
                "events_endpoint": self.publisher.endpoint, "events_published": self.publisher.sent,
                "events_dropped_at_hwm": self.publisher.dropped, **self.assembler.status()}
