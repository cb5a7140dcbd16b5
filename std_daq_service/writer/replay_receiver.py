"""Frames of a past window, from the agents' PFF files: ask each agent for a `replay` and receive it.

For each agent the writer asks where its replay socket is (`stream` → `endpoints.replay`), subscribes there to
the frame topics and declares `subscriber.replay.<request id>.`, then sends the `replay` request (one request
id for every agent). Frames of that replay (`replay_id` in their header) go to the write as they arrive; an
agent is done at its `replay_end` control message (which carries its result, and follows its last frame on
the same connection), or when its request failed. A write that is killed kills the replays.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from std_daq_service.broker import RequestCaller
from std_daq_service.pff import DATA_PRODUCTS
from std_daq_service.protocol import (
    CONTROL_TOPIC,
    ControlHeader,
    DaqError,
    FrameBatch,
    InvalidMessage,
    ReplayRequest,
    StreamRequest,
    decode_stream_message,
    frame_topic,
    stream_subscriber,
    subscriber_topic,
)

log = logging.getLogger(__name__)

OnBatch = Callable[[str, FrameBatch], None]
_ASK_TIMEOUT_S = 15.0
_END_GRACE_S = 10.0


class ReplayReceiver:
    """Receive one window's replay from several agents (in the calling thread).

    Args:
        silence_s: an agent that sends neither a frame nor a status for this long is given up (its result
            says so).
    """

    def __init__(self, broker_url: str | None, writer_name: str, agents: list[str], request: ReplayRequest,
                 silence_s: float, cancelled: threading.Event):
        self.broker_url = broker_url
        self.writer_name = writer_name
        self.agents = agents
        self.request = request
        self.silence_s = silence_s
        self.cancelled = cancelled
        self.replay_id = str(uuid.uuid4())
        self.results: dict[str, dict[str, Any]] = {}

    def _topics(self) -> list[bytes]:
        products = self.request.data_products or list(DATA_PRODUCTS)
        if self.request.module_ids:
            return [frame_topic(dp, m) for dp in products for m in self.request.module_ids]
        return [f"{dp}.".encode() for dp in products]

    def run(self, on_batch: OnBatch) -> dict[str, dict[str, Any]]:
        """Replay the window from every agent; returns each agent's result (`error` where it failed)."""
        with RequestCaller(self.broker_url, f"{self.writer_name}:replay") as caller:
            endpoints = self._endpoints(caller)
            if not endpoints:
                return self.results
            sock = stream_subscriber(zmq.Context.instance())
            try:
                sock.setsockopt(zmq.LINGER, 0)
                for endpoint in endpoints.values():
                    sock.connect(endpoint)
                for topic in [*self._topics(), CONTROL_TOPIC, subscriber_topic("replay", self.replay_id)]:
                    sock.setsockopt(zmq.SUBSCRIBE, topic)
                for agent in endpoints:
                    caller.publish(agent, self.request, self.replay_id)
                self._receive(caller, sock, set(endpoints), on_batch)
            finally:
                sock.close(linger=0)
        return self.results

    def _endpoints(self, caller: RequestCaller) -> dict[str, str]:
        """Each agent's replay endpoint; agents that cannot say are done with an error."""
        endpoints = {}
        for agent in self.agents:
            try:
                answer = caller.call(agent, StreamRequest(), _ASK_TIMEOUT_S).results()[agent]
                endpoints[agent] = answer["endpoints"]["replay"]
            except DaqError as exc:
                self.results[agent] = {"frames": 0, "complete": False, "error": f"no replay endpoint: {exc}"}
            except KeyError:
                self.results[agent] = {"frames": 0, "complete": False,
                                       "error": "the agent has no replay endpoint (an older version)"}
        return endpoints

    def _receive(self, caller: RequestCaller, sock: zmq.Socket, waiting: set[str], on_batch: OnBatch) -> None:
        heard = {agent: time.monotonic() for agent in waiting}
        succeeded: dict[str, float] = {}
        seen = 0
        frames = dict.fromkeys(waiting, 0)
        while waiting:
            if self.cancelled.is_set():
                for agent in waiting:
                    caller.kill(agent, self.replay_id)
                    self.results[agent] = {"frames": frames[agent], "complete": False, "error": "write killed"}
                return
            if sock.poll(50):
                for _ in range(100):
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    message = self._decode(parts)
                    if message is None or message.source not in waiting:
                        continue
                    heard[message.source] = time.monotonic()
                    if isinstance(message, ControlHeader):
                        self.results[message.source] = message.result or {}
                        waiting.discard(message.source)
                    else:
                        frames[message.source] += len(message)
                        on_batch(message.source, message)
            caller.pump(0.001)
            now = time.monotonic()
            history = caller.store.history(self.replay_id) or []
            for status in history[seen:]:
                if status.source in waiting:
                    heard[status.source] = now
                    if status.action in ("request_fail", "request_killed"):
                        self.results[status.source] = {"frames": frames[status.source], "complete": False,
                                                       "error": status.message}
                        waiting.discard(status.source)
                    elif status.action == "request_success":
                        succeeded.setdefault(status.source, now)
            seen = len(history)
            for agent in list(waiting):
                late = agent in succeeded and now - succeeded[agent] > _END_GRACE_S
                if late or now - heard[agent] > self.silence_s:
                    why = "its replay_end never arrived" if late else f"nothing from it for {self.silence_s:g} s"
                    self.results[agent] = {"frames": frames[agent], "complete": False, "error": why}
                    waiting.discard(agent)
                    caller.kill(agent, self.replay_id)

    def _decode(self, parts: list[bytes]) -> FrameBatch | ControlHeader | None:
        """A frame batch or the `replay_end` of this replay; None for anything else."""
        try:
            message = decode_stream_message(parts)
        except InvalidMessage as exc:
            log.warning("replay %s: a message skipped: %s", self.replay_id, exc)
            return None
        if isinstance(message, ControlHeader):
            return message if message.event == "replay_end" and message.replay_id == self.replay_id else None
        return message if message.replay_id == self.replay_id else None
