"""The builder's ZMQ PUB socket of coincidence events."""

from __future__ import annotations

import logging

import zmq

from std_daq_service.config import advertised_endpoint
from std_daq_service.lifecycle import Lifecycle

log = logging.getLogger(__name__)

_SEND_HWM = 100_000


class EventPublisher(Lifecycle):
    """Bind a PUB socket at `bind` and send event messages (from one thread at a time).

    `endpoint` is the address subscribers connect to (a wildcard host becomes `advertise_host` or the host name).

    A subscriber slower than the high-water mark loses events (PUB drops); `dropped` counts the sends
    ZMQ refused, and the builder never waits for a subscriber.
    """

    def __init__(self, bind: str, advertise_host: str | None = None):
        self.bind = bind
        self.advertise_host = advertise_host
        self.endpoint = bind
        self.sent = 0
        self.dropped = 0
        self._socket: zmq.Socket | None = None

    def _open(self) -> None:
        self._socket = zmq.Context.instance().socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, _SEND_HWM)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(self.bind)
        self.endpoint = advertised_endpoint(self._socket.getsockopt_string(zmq.LAST_ENDPOINT), self.advertise_host)
        log.info("publishing coincidence events at %s", self.endpoint)

    def _release(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def send(self, message: list[bytes]) -> None:
        assert self._socket is not None, "send only while started"
        try:
            self._socket.send_multipart(message, zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1
