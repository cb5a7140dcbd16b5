"""The live page's view of the agents' streams: one subscription per agent, the latest frame per stream.

Movie frames come from each agent's preview socket (the latest frame of each stream at the agent's preview
rate); pulse-height frames from its data socket (every event, small), so their distribution is complete. Agents
are found, and followed across restarts, through their liveness beacons; every viewer reads the same copy.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
import zmq

from std_daq_service.config import live_services
from std_daq_service.lifecycle import BackgroundThread, Lifecycle
from std_daq_service.pff import DATA_PRODUCTS
from std_daq_service.protocol import (
    FrameBatch,
    InvalidMessage,
    decode_frames,
    stream_subscriber,
    subscriber_topic,
)

log = logging.getLogger(__name__)

RECENT_FRAMES = 30
"""Frames whose pixels set a stream's colour limits (1st and 99th percentile), as panoseti's frame viewer."""
PH_WINDOWS_S = (10, 60, 600)
_PH_BINS = 40
_REFRESH_S = 2.0
_POLL_MS = 100
_RECEIVE_HWM = 1000


class EventMaxima:
    """Pulse-height event maxima with their arrival times, for the last `keep_s` seconds, in numpy arrays.

    Twelve bytes per event and a quarter more in reserve (a Python tuple per event took about 70: for ten minutes
    of a 1 kHz stream, 40 MB; now 9).
    """

    def __init__(self, keep_s: float):
        self.keep_s = keep_s
        self._stamps = np.empty(0)
        self._values = np.empty(0, np.int32)
        self._start = self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    def add(self, now: float, values: np.ndarray) -> None:
        """Append the maxima of events that arrived at `now` (monotonic, never decreasing); forget old ones."""
        self._start += int(np.searchsorted(self._stamps[self._start:self._end], now - self.keep_s))
        if self._end + len(values) > len(self._stamps):
            live = len(self)
            size = max((live + len(values)) * 5 // 4, 1024)  # room for a quarter more: 15 bytes per event at most
            stamps, kept = np.empty(size), np.empty(size, np.int32)
            stamps[:live], kept[:live] = self._stamps[self._start:self._end], self._values[self._start:self._end]
            self._stamps, self._values, self._start, self._end = stamps, kept, 0, live
        self._stamps[self._end:self._end + len(values)] = now
        self._values[self._end:self._end + len(values)] = values
        self._end += len(values)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept arrival times and maxima (views, valid until the next `add`)."""
        return self._stamps[self._start:self._end], self._values[self._start:self._end]


@dataclass
class StreamView:
    """What the page shows of one stream: its latest frame, recent frames and, for pulse height, event maxima."""

    agent: str
    module_id: int
    dp: str
    image: np.ndarray | None = None
    frame_time_ns: int = 0
    seq: int = -1
    frame_number: int = -1
    frames_seen: int = 0
    updated: float = 0.0
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_FRAMES))
    maxima: EventMaxima = field(default_factory=lambda: EventMaxima(PH_WINDOWS_S[-1]))

    @property
    def is_movie(self) -> bool:
        return DATA_PRODUCTS[self.dp].is_movie

    def add(self, batch: FrameBatch, now: float) -> None:
        last = len(batch) - 1
        self.image = batch.images[last].copy()
        self.recent.append(self.image)
        self.frame_time_ns = int(batch.frame_times_ns[last])
        self.seq = int(batch.seq[last])
        self.frame_number = int(batch.frame_number[last])
        self.frames_seen += len(batch)
        self.updated = now
        if not self.is_movie:
            self.maxima.add(now, batch.images.reshape(len(batch), -1).max(axis=1))

    def limits(self) -> tuple[float, float]:
        """Colour limits: the 1st and 99th percentile of the recent frames' pixels."""
        low, high = np.percentile(np.stack(self.recent), [1, 99])
        return float(low), float(max(high, low + 1))

    def distribution(self, now: float) -> dict[str, Any]:
        """Histograms of each event's maximum pixel over the last 10, 60 and 600 s (common bin edges)."""
        if not len(self.maxima):
            return {"edges": [], "windows": {}}
        stamps, values = self.maxima.arrays()
        edges = np.linspace(values.min(), values.max() + 1, _PH_BINS + 1)
        return {"edges": [round(e, 1) for e in edges.tolist()],
                "windows": {str(w): np.histogram(values[now - stamps <= w], edges)[0].tolist() for w in PH_WINDOWS_S}}

    def summary(self, now: float) -> dict[str, Any]:
        low, high = self.limits() if self.recent else (0.0, 1.0)
        return {"agent": self.agent, "module_id": self.module_id, "dp": self.dp, "is_movie": self.is_movie,
                "seq": self.seq, "frame_number": self.frame_number, "frame_time_ns": self.frame_time_ns,
                "frames_seen": self.frames_seen, "age_seconds": round(now - self.updated, 1),
                "limits": [low, high], "shape": list(DATA_PRODUCTS[self.dp].shape)}


@dataclass
class _AgentSockets:
    preview_endpoint: str
    data_endpoint: str
    sockets: list[zmq.Socket]


class PreviewFeed(Lifecycle):
    """Subscribe once to every live agent (or the given ones) and keep a `StreamView` per stream.

    Args:
        client: Redis, where the agents' beacons are (stays its owner's).
        service_name: this proxy's SERVICE_NAME; its subscriptions declare it a `viewer` (infrastructure), so
            agents' inits do not wait for it.
        agents: only these agents (empty: every live one).
    """

    def __init__(self, client: redis.Redis, service_name: str, agents: list[str]):
        self.redis = client
        self.service_name = service_name
        self.agents = agents
        self.bad_messages = 0
        self._views: dict[tuple[str, int, str], StreamView] = {}
        self._lock = threading.Lock()
        self._subscribed: dict[str, _AgentSockets] = {}
        self._loop = BackgroundThread("preview-feed", self._run)

    def _open(self) -> None:
        self._loop.start()

    def _release(self) -> None:
        self._loop.close()

    def summaries(self) -> list[dict[str, Any]]:
        """Every stream's `StreamView.summary`, with its distribution for pulse height (under the feed's lock)."""
        now = time.monotonic()
        with self._lock:
            views = [self._views[key] for key in sorted(self._views)]
            return [{**view.summary(now), **({} if view.is_movie else {"distribution": view.distribution(now)})}
                    for view in views]

    def snapshot(self, agent: str, module_id: int, dp: str) -> tuple[np.ndarray, int, tuple[float, float]] | None:
        """The latest image of a stream, its `seq` and its colour limits (consistent with each other)."""
        with self._lock:
            found = self._views.get((agent, module_id, dp))
            if found is None or found.image is None:
                return None
            return found.image, found.seq, found.limits()

    def _run(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        owners: dict[zmq.Socket, str] = {}
        next_refresh = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + _REFRESH_S
                    self._refresh(poller, owners)
                events = dict(poller.poll(_POLL_MS)) if owners else {}
                if not owners:  # nothing to receive: sleep until the next look for agents (or the stop)
                    stop.wait(max(0.0, next_refresh - time.monotonic()))
                for sock in events:
                    self._receive(sock, owners[sock])
        finally:
            for agent in list(self._subscribed):
                self._unsubscribe(agent, poller, owners)

    def _refresh(self, poller: zmq.Poller, owners: dict[zmq.Socket, str]) -> None:
        """Subscribe to agents that came (or came back on other ports); drop the sockets of those gone."""
        try:
            live = live_services(self.redis, "hp_io_agent")
        except redis.RedisError as exc:
            log.warning("live page: cannot read the agents' beacons: %s", exc)
            return
        wanted = {name: beacon for name, beacon in live.items() if not self.agents or name in self.agents}
        for agent in list(self._subscribed):
            if agent not in wanted:
                self._unsubscribe(agent, poller, owners)
        for agent, beacon in wanted.items():
            endpoints = beacon.get("endpoints") or {}
            preview, data = endpoints.get("preview"), endpoints.get("data")
            if not preview or not data:
                continue
            current = self._subscribed.get(agent)
            if current is not None and (current.preview_endpoint, current.data_endpoint) == (preview, data):
                continue
            if current is not None:
                self._unsubscribe(agent, poller, owners)
            self._subscribe(agent, preview, data, poller, owners)

    def _subscribe(self, agent: str, preview: str, data: str, poller: zmq.Poller,
                   owners: dict[zmq.Socket, str]) -> None:
        context = zmq.Context.instance()
        topics = {preview: [dp for dp, p in DATA_PRODUCTS.items() if p.is_movie],
                  data: [dp for dp, p in DATA_PRODUCTS.items() if not p.is_movie]}
        sockets = []
        for endpoint, products in topics.items():
            sock = stream_subscriber(context)
            sock.setsockopt(zmq.RCVHWM, _RECEIVE_HWM)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            for dp in products:
                sock.setsockopt(zmq.SUBSCRIBE, f"{dp}.".encode())
            sock.setsockopt(zmq.SUBSCRIBE, subscriber_topic("viewer", self.service_name))  # infrastructure
            poller.register(sock, zmq.POLLIN)
            owners[sock] = agent
            sockets.append(sock)
        self._subscribed[agent] = _AgentSockets(preview, data, sockets)
        log.info("live page: subscribed to %s (previews %s, pulse heights %s)", agent, preview, data)

    def _unsubscribe(self, agent: str, poller: zmq.Poller, owners: dict[zmq.Socket, str]) -> None:
        for sock in self._subscribed.pop(agent).sockets:
            poller.unregister(sock)
            owners.pop(sock, None)
            sock.close(linger=0)

    def _receive(self, sock: zmq.Socket, agent: str) -> None:
        for _ in range(100):  # bounded, so one busy agent cannot starve the others
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                batch = decode_frames(parts)
            except InvalidMessage as exc:
                self.bad_messages += 1
                log.debug("live page: bad message from %s skipped: %s", agent, exc)
                continue
            key = (agent, batch.module_id, batch.dp)
            with self._lock:
                view = self._views.get(key)
                if view is None:
                    view = self._views[key] = StreamView(agent, batch.module_id, batch.dp)
                view.add(batch, time.monotonic())
