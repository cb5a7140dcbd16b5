"""The agent's preview socket: the latest frame per stream, each frame at most once to a subscriber (real ZMQ)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq
from conftest import SAMPLE_IMG16, wait_until

from std_daq_service.hp_io_agent.file_watcher import FileWatcher
from std_daq_service.hp_io_agent.frame_publisher import FramePublisher, FrameSource
from std_daq_service.pff import PffReader
from std_daq_service.protocol import FrameBatch, decode_stream_message

SOURCE = FrameSource(1, "img16", "file")


@pytest.fixture
def publisher():
    with FramePublisher("test", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", 1000) as pub:
        yield pub


@pytest.fixture
def frames():
    with PffReader(SAMPLE_IMG16) as reader:
        block = reader.block(0, 30)
    return lambda first, end: (block[first:end], np.arange(first, end, dtype=np.int64))


def preview_subscriber(publisher: FramePublisher, context: zmq.Context) -> zmq.Socket:
    """A SUB connected to the preview socket, without subscriptions yet, once the publisher counts it."""
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    before = publisher.subscribers.preview
    sock.connect(publisher.preview_endpoint)
    wait_until(lambda: publisher.poll_monitors() or publisher.subscribers.preview > before, 10,
               message="the publisher counts the preview subscriber")
    return sock


def seqs_until(sock: zmq.Socket, last: int, timeout: float = 10) -> list[int]:
    """The `seq` of every preview received, up to the one with `last`."""
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    while not seqs or seqs[-1] != last:
        assert sock.poll(max(0, int((deadline - time.monotonic()) * 1000))), f"no seq {last}; got {seqs}"
        message = decode_stream_message(sock.recv_multipart())
        if isinstance(message, FrameBatch):
            seqs.extend(message.seq.tolist())
    return seqs


def test_a_subscription_that_reaches_the_socket_before_the_publisher_reads_it_gets_no_frame_twice(publisher,
                                                                                                 frames):
    """The agent's loop reads subscriptions at the start of a round and sends previews at its end: a subscription
    arriving in between is in the socket when the previews go out, and then read as the first one."""
    context = zmq.Context()
    sock = preview_subscriber(publisher, context)
    try:
        publisher.publish_frames(SOURCE, *frames(0, 10))
        sock.setsockopt(zmq.SUBSCRIBE, b"img16.")
        wait_until(lambda: any(s.poll(0) for s in publisher.pollables if isinstance(s, zmq.Socket)), 10,
                   message="the subscription reaches the publisher's socket")
        publisher.publish_previews(0.0)  # the end of the round the subscription arrived in
        publisher.poll_monitors()  # the next round reads it
        publisher.publish_previews(0.0)
        publisher.publish_frames(SOURCE, *frames(10, 20))
        publisher.publish_previews(0.0)
        assert seqs_until(sock, 19) == [9, 19], "the latest frame at once, then the newer one, each once"
    finally:
        sock.close()
        context.term()


def test_a_late_subscriber_gets_the_latest_at_once_and_the_others_nothing_twice(publisher, frames):
    context = zmq.Context()
    first, late = preview_subscriber(publisher, context), preview_subscriber(publisher, context)
    try:
        publisher.publish_frames(SOURCE, *frames(0, 10))
        for topic in (b"img16.", b""):  # two subscriptions of one subscriber, both matching the stream
            first.setsockopt(zmq.SUBSCRIBE, topic)
        wait_until(lambda: publisher.poll_monitors() or publisher.publish_previews(0.0) or first.poll(0), 10,
                   message="the first preview")
        assert seqs_until(first, 9) == [9]
        late.setsockopt(zmq.SUBSCRIBE, b"img16.")
        wait_until(lambda: any(s.poll(0) for s in publisher.pollables if isinstance(s, zmq.Socket)), 10,
                   message="the late subscription arrives")
        publisher.poll_monitors()
        publisher.publish_previews(0.0)
        publisher.publish_frames(SOURCE, *frames(10, 20))
        publisher.publish_previews(0.0)
        assert seqs_until(first, 19) == [19], "a subscriber got a frame twice"
        assert seqs_until(late, 19) == [19], "a late subscriber gets the next frames (a PUB cannot send to it alone)"
    finally:
        first.close()
        late.close()
        context.term()


def test_a_sender_never_blocks_on_wakes_while_the_loop_is_away_from_its_wait(frames):
    """Every data send that finds a subscription unread wakes the loop; a loop held up elsewhere (a slow
    checkpoint, a scan) must not make the socket hook's sends block on the wake pipe, holding the publisher."""
    block, seq = frames(0, 1)
    sent = threading.Event()
    context = zmq.Context()
    with FileWatcher() as watcher, FramePublisher("test", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", 10,
                                                  watcher.wake) as publisher:
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(publisher.data_endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"nothing.")
        wait_until(lambda: publisher.unread, 10, message="the subscription waits on the data socket")

        def hook() -> None:
            for _ in range(70_000):  # more wakes than a pipe holds (64 KiB)
                publisher.publish_frames(FrameSource(1, "img16", "socket"), block, seq)
            sent.set()

        thread = threading.Thread(target=hook, daemon=True)
        thread.start()
        assert sent.wait(120), "the sender blocked on the wake pipe"
        assert watcher.wait(0).sockets or publisher.unread, "the loop is still told to read the subscription"
        sub.close()
    context.term()
