"""Stream subscribers bound what a peer may send them."""

from __future__ import annotations

import time
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from std_daq_service.protocol import MAX_STREAM_MESSAGE_BYTES, stream_subscriber

PACKAGE = Path(__file__).resolve().parents[2] / "std_daq_service"


def receive_until(sock: zmq.Socket, wanted: bytes, resend, timeout: float = 20) -> list[int]:
    """Sizes of the messages received until `wanted` arrives; `resend()` is called between polls."""
    sizes = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resend()
        if sock.poll(50):
            parts = sock.recv_multipart(copy=False)
            sizes.append(sum(len(p) for p in parts))
            if parts[-1].bytes == wanted:
                return sizes
    raise AssertionError(f"{wanted!r} never arrived; sizes received: {sizes}")


def test_a_peer_sending_an_oversized_message_is_dropped_and_the_others_go_on():
    """libzmq ends the session of a peer that breaks the limit (a protocol error: it is not reconnected)."""
    context = zmq.Context()
    bad, good = context.socket(zmq.PUB), context.socket(zmq.PUB)
    subscriber = stream_subscriber(context)
    monitor = subscriber.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        bad_endpoint = f"tcp://127.0.0.1:{bad.bind_to_random_port('tcp://127.0.0.1')}"
        good_endpoint = f"tcp://127.0.0.1:{good.bind_to_random_port('tcp://127.0.0.1')}"
        subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        subscriber.connect(bad_endpoint)
        subscriber.connect(good_endpoint)
        receive_until(subscriber, b"bad", lambda: bad.send(b"bad"))
        receive_until(subscriber, b"good", lambda: good.send(b"good"))
        bad.send_multipart([b"img16.1.", bytes(MAX_STREAM_MESSAGE_BYTES + 1)])
        assert monitor.poll(20_000), "the peer was not disconnected"
        assert recv_monitor_message(monitor)["endpoint"].decode() == bad_endpoint
        sizes = receive_until(subscriber, b"after", lambda: good.send(b"after"))
        assert max(sizes) < MAX_STREAM_MESSAGE_BYTES, "the oversized message never reached the subscriber"
    finally:
        for sock in (bad, good, subscriber, monitor):
            sock.close(0)
        context.term()


def test_every_stream_subscriber_of_the_package_is_bounded():
    unbounded = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "socket(zmq.SUB)" in p.read_text() and p.name != "frames.py"]
    assert not unbounded, f"SUB sockets not made by stream_subscriber: {unbounded}"
