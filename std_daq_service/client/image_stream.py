"""Frames of several agents' ZMQ streams, merged fairly and throttled to the client's rate, as PanoImages."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from std_daq_service.client.frame_stream import Subscription, Throttle
from std_daq_service.client.pano_image import pano_images
from std_daq_service.protocol import ControlHeader, InvalidMessage, decode_stream_message, stream_subscriber

log = logging.getLogger(__name__)

_LIVENESS_CHECK_S = 2.0


def stream_images(subscriptions: list[Subscription], update_interval_seconds: float, parse_pano_images: bool,
                  failed_hosts: dict[str, str], live_agents: Callable[[], set[str]],
                  stop_event: threading.Event | None = None,
                  idle: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yield PanoImage dicts from every subscription until `stop_event` is set.

    A host that stops (it says `stop`, or it leaves `live_agents()`) is logged and entered in `failed_hosts`;
    the others go on. `idle` is called every poll round (about 10 times a second, also while no frame comes).
    """
    context = zmq.Context.instance()
    sockets: dict[zmq.Socket, str] = {}
    poller = zmq.Poller()
    try:
        for sub in subscriptions:
            sock = stream_subscriber(context)
            sock.setsockopt(zmq.RCVHWM, 0 if update_interval_seconds <= 0 else 1000)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(sub.endpoint)
            for topic in sub.topics:
                sock.setsockopt_string(zmq.SUBSCRIBE, topic)
            sockets[sock] = sub.host
            poller.register(sock, zmq.POLLIN)
        throttle = Throttle(update_interval_seconds)
        last_check = time.monotonic()
        while stop_event is None or not stop_event.is_set():
            events = dict(poller.poll(100))
            if idle is not None:
                idle()
            released = []
            for sock, host in sockets.items():  # one message per host per round: fair merge
                if sock in events:
                    released += _receive(sock, host, throttle, failed_hosts)
            released += throttle.due()
            for host, batch in released:
                yield from pano_images(batch, host, parse_pano_images)
            if time.monotonic() - last_check > _LIVENESS_CHECK_S:
                last_check = time.monotonic()
                check_hosts(set(sockets.values()), live_agents(), failed_hosts)
    finally:
        for sock in sockets:
            sock.close(linger=0)


def _receive(sock: zmq.Socket, host: str, throttle: Throttle, failed_hosts: dict[str, str]) -> list:
    try:
        message = decode_stream_message(sock.recv_multipart(zmq.NOBLOCK))
    except zmq.Again:
        return []
    except InvalidMessage as exc:
        log.warning("%s: bad stream message skipped: %s", host, exc)
        return []
    if isinstance(message, ControlHeader):
        log.info("%s: %s %s", host, message.event, message.message)
        if message.event == "stop":
            failed_hosts[host] = f"stopped: {message.message}"
        return []
    return throttle.offer(host, message)


def check_hosts(hosts: set[str], live: set[str], failed_hosts: dict[str, str]) -> None:
    """Enter each streamed host that left `live` (its beacon expired) in `failed_hosts`, once, and log it."""
    for host in sorted(hosts - live):
        if host not in failed_hosts:
            failed_hosts[host] = "liveness beacon expired"
            log.warning("%s stopped answering (liveness beacon expired); streaming the others", host)
