"""ZMQ PUB sockets of the agent: every frame on the data socket, the latest per stream on the preview socket."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from std_daq_service.hp_io_agent.stream_tailer import StreamBlock
from std_daq_service.lifecycle import Lifecycle
from std_daq_service.pff import FrameBlock
from std_daq_service.protocol import encode_control, encode_frames

log = logging.getLogger(__name__)


class FrameSource(NamedTuple):
    """Where a block of frames comes from, as its messages describe it."""

    module_id: int
    dp: str
    origin: str
    run: str | None = None
    file: str | None = None
    seqno: int | None = None


def advertised_endpoint(bind: str, advertise_host: str | None) -> str:
    """The address a client connects to for a bind address (wildcards become a host name)."""
    parts = urlsplit(bind)
    host = parts.hostname or ""
    if advertise_host:
        host = advertise_host
    elif host in ("*", "0.0.0.0", ""):
        host = socket.gethostname()
    return f"{parts.scheme}://{host}:{parts.port}"


@dataclass
class Subscribers:
    """Subscribers connected now, per socket."""

    data: int = 0
    preview: int = 0


class FramePublisher(Lifecycle):
    """Own the data and preview PUB sockets (use from one thread only); `start()` binds them.

    Messages are sent without blocking: a subscriber whose queue (send_hwm messages) is full loses
    messages, never the agent or other subscribers; it sees the loss as a gap in `seq`.
    """

    def __init__(self, service_name: str, data_bind: str, preview_bind: str, send_hwm: int):
        self.service_name = service_name
        self.data_bind = data_bind
        self.preview_bind = preview_bind
        self.send_hwm = send_hwm
        self.subscribers = Subscribers()
        self.messages = 0
        self._latest: dict[tuple[int, str, str], tuple[FrameSource, FrameBlock, np.ndarray]] = {}
        self._last_preview = 0.0
        self._sockets: dict[str, zmq.Socket] = {}  # "data", "preview"
        self._monitors: dict[str, zmq.Socket] = {}

    def _open(self) -> None:
        context = zmq.Context.instance()
        for name, bind in (("data", self.data_bind), ("preview", self.preview_bind)):
            sock = self._sockets[name] = context.socket(zmq.PUB)
            sock.setsockopt(zmq.SNDHWM, self.send_hwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(bind)
        for name, sock in self._sockets.items():
            self._monitors[name] = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
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
        self.subscribers = Subscribers()

    def publish(self, stream: StreamBlock, origin: str = "file") -> None:
        """Send a block of frames read from a file as one message."""
        f = stream.file
        source = FrameSource(f.module_id, f.dp, origin, f.run, f.path.name, f.seqno)
        self.publish_frames(source, stream.block, stream.seq)

    def publish_frames(self, source: FrameSource, block: FrameBlock, seq: np.ndarray) -> None:
        """Send a block of frames of one stream as one message and remember its last frame for the preview."""
        self._send("data", self._encode(source, block, seq))
        self._latest[(source.module_id, source.dp, source.origin)] = (source, block, seq)

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
        try:
            self._sockets[socket_name].send_multipart(parts, flags=zmq.NOBLOCK, copy=len(parts[-1]) < 65536)
            self.messages += 1
        except zmq.Again:
            pass  # a PUB socket drops for a full subscriber rather than block; its subscriber sees a seq gap

    def publish_previews(self, interval_s: float) -> None:
        """Every `interval_s`, send the latest frame of each stream that had new frames."""
        now = time.monotonic()
        if now - self._last_preview < interval_s or not self._latest:
            return
        self._last_preview = now
        for source, block, seq in self._latest.values():
            self._send("preview", self._encode(source, block[len(block) - 1 :], seq[-1:]))
        self._latest.clear()

    def control(self, event: str, message: str, **fields) -> None:
        """Announce a run start or end, a re-initialisation or a stop on both sockets."""
        log.info("stream control %s: %s", event, message)
        parts = encode_control(self.service_name, event, message, **fields)
        self._send("data", parts)
        self._send("preview", parts)

    def poll_monitors(self) -> None:
        """Count connected subscribers from the sockets' connection events."""
        self.subscribers.data += _connection_change(self._monitors["data"])
        self.subscribers.preview += _connection_change(self._monitors["preview"])


def _connection_change(monitor: zmq.Socket) -> int:
    """Connections accepted minus connections closed since the last call."""
    change = 0
    while monitor.poll(0):
        change += 1 if recv_monitor_message(monitor)["event"] == zmq.EVENT_ACCEPTED else -1
    return change
