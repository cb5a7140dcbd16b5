"""Coincidence events of several event builders' ZMQ event sockets, as dicts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from std_daq_service.client.image_stream import check_hosts
from std_daq_service.protocol import EVENT_TOPIC, CoincidenceEvent, InvalidMessage, decode_event, stream_subscriber

log = logging.getLogger(__name__)

_LIVENESS_CHECK_S = 2.0


def event_dict(event: CoincidenceEvent) -> dict[str, Any]:
    """An event as a dict: the `EventHeader` fields, each member with its image as `image_array`."""
    fields = event.header.model_dump()
    for member, image in zip(fields["members"], event.images, strict=True):
        member["image_array"] = image
    return fields


def stream_events(endpoints: dict[str, str], failed_hosts: dict[str, str], live_builders: Callable[[], set[str]],
                  stop_event: threading.Event | None = None,
                  idle: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yield every event of the builders (`endpoints`: SERVICE_NAME -> events address) until `stop_event` is set.

    A builder whose beacon expires is logged and entered in `failed_hosts`; the others go on. `idle` is called
    every poll round (about 10 times a second, also while no event comes).
    """
    context = zmq.Context.instance()
    sockets: dict[zmq.Socket, str] = {}
    poller = zmq.Poller()
    try:
        for builder, endpoint in endpoints.items():
            sock = stream_subscriber(context)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC)
            sockets[sock] = builder
            poller.register(sock, zmq.POLLIN)
        last_check = time.monotonic()
        while stop_event is None or not stop_event.is_set():
            ready = dict(poller.poll(100))
            if idle is not None:
                idle()
            for sock, builder in sockets.items():  # one event per builder per round: fair merge
                if sock in ready:
                    event = _receive(sock, builder)
                    if event is not None:
                        yield event
            if time.monotonic() - last_check > _LIVENESS_CHECK_S:
                last_check = time.monotonic()
                check_hosts(set(sockets.values()), live_builders(), failed_hosts)
    finally:
        for sock in sockets:
            sock.close(linger=0)


def _receive(sock: zmq.Socket, builder: str) -> dict[str, Any] | None:
    try:
        return event_dict(decode_event(sock.recv_multipart(zmq.NOBLOCK)))
    except zmq.Again:
        return None
    except InvalidMessage as exc:
        log.warning("%s: bad event message skipped: %s", builder, exc)
        return None
