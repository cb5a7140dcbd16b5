"""Talking to an agent in tests: requests with a final status, subscribers, and counting what arrived."""

from __future__ import annotations

import time
from contextlib import contextmanager

import zmq

from std_daq_service.protocol import FrameBatch, StreamRequest, decode_stream_message


def ask(caller, target, request, timeout=15):
    result = caller.call(target, request, timeout)
    assert result.complete, f"no final status from {target}: {result.history}"
    return result.finals[target]


@contextmanager
def subscriber(endpoint: str, topics: list[str]):
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    for topic in topics:
        sock.setsockopt_string(zmq.SUBSCRIBE, topic)
    try:
        yield sock
    finally:
        sock.close()


def receive(sock, until, timeout: float):
    """Receive stream messages until `until(messages)` is true; fail after `timeout`."""
    messages = []
    deadline = time.monotonic() + timeout
    while not until(messages):
        assert time.monotonic() < deadline, f"timed out with {len(messages)} messages"
        if sock.poll(100):
            messages.append(decode_stream_message(sock.recv_multipart()))
    return messages


def frames_of(messages, module_id, dp):
    return [m for m in messages if isinstance(m, FrameBatch) and m.module_id == module_id and m.dp == dp]


def count(messages, module_id, dp):
    return sum(len(m) for m in frames_of(messages, module_id, dp))


def stream_endpoints(caller, agent, **kwargs):
    return ask(caller, agent.service_name, StreamRequest(**kwargs)).result
