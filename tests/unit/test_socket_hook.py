"""The Hashpipe socket hook: records over real Unix sockets, any chunking, garbage survived."""

from __future__ import annotations

import queue
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import SAMPLE_IMG16, SAMPLE_PH256_M1, SAMPLE_PH256_M3, wait_until
from helpers.hashpipe import SnapshotSender, header_text, quabo_fields
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from std_daq_service.hp_io_agent.file_watcher import FileWatcher
from std_daq_service.hp_io_agent.frame_publisher import FramePublisher
from std_daq_service.hp_io_agent.socket_hook import SocketBlock, SocketHook
from std_daq_service.hp_io_agent.tracker import Tracker
from std_daq_service.pff import DATA_PRODUCTS, PffReader
from std_daq_service.protocol import SOCKET_TOPIC_PREFIX, subscriber_topic

T0 = 1_721_882_092_779_007_488


def records(path: Path, module_id: int, n: int) -> list[bytes]:
    with PffReader(path) as reader:
        raw = reader.block(0, n).raw
    return [module_id.to_bytes(2, "big") + row.tobytes() for row in raw]


class QueuedHook(SocketHook):
    """A hook whose messages go to a queue (`published`) instead of a ZMQ socket."""

    def __init__(self, path_template: str, max_frames: int = 1000):
        self.published: queue.SimpleQueue[SocketBlock] = queue.SimpleQueue()
        super().__init__(path_template, self.published.put, max_frames)


@pytest.fixture
def hook():
    directory = tempfile.mkdtemp(prefix="hook", dir="/tmp")  # AF_UNIX paths are limited to 107 bytes
    with QueuedHook(f"{directory}/hp.dp_{{dp}}.sock") as hook:
        yield hook
    shutil.rmtree(directory)


def send(hook: SocketHook, dp: str, data: bytes, chunks: list[int]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(hook.paths[dp]))
        position = 0
        for size in [*chunks, len(data)]:
            client.sendall(data[position : position + size])
            position += size
            if position >= len(data):
                break


def collect(hook: SocketHook, n: int, timeout: float = 10) -> list:
    blocks = []
    wait_until(lambda: (blocks.extend(iter_queue(hook)) or True) and sum(len(b.block) for b in blocks) >= n,
               timeout, message=f"{n} frames from the hook")
    return blocks


def iter_queue(hook: QueuedHook):
    while not hook.published.empty():
        yield hook.published.get()


def frames_by_module(blocks) -> dict[int, np.ndarray]:
    out: dict[int, list] = {}
    for b in blocks:
        out.setdefault(b.module_id, []).append(b.block.raw)
    return {m: np.concatenate(rows) for m, rows in out.items()}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.integers(1, 5000), max_size=40))
def test_interleaved_modules_arrive_whole_and_in_order_whatever_the_chunking(hook, chunks):
    m1, m3 = records(SAMPLE_PH256_M1, 1, 60), records(SAMPLE_PH256_M3, 3, 60)
    data = b"".join(a + b for a, b in zip(m1, m3, strict=True))
    before = hook.counters.frames
    send(hook, "ph256", data, chunks)
    got = frames_by_module(collect(hook, 120))
    assert hook.counters.frames - before == 120
    assert [r[2:] for r in m1] == [row.tobytes() for row in got[1]]
    assert [r[2:] for r in m3] == [row.tobytes() for row in got[3]]
    assert hook.counters.bad_records == 0


def test_garbage_is_dropped_and_the_stream_resynchronises(hook):
    good = records(SAMPLE_IMG16, 7, 30)
    bad_header = bytearray(good[12])
    bad_header[40:60] = b"#" * 20  # marker in place, text broken: dropped by the layout check
    data = (b"".join(good[:10]) + b"\x00\x07garbage" * 500 + good[10][:1000] + b"".join(good[11:12])
            + bytes(bad_header) + b"".join(good[13:]))
    send(hook, "img16", data, [777] * 200)
    got = frames_by_module(collect(hook, 28))[7]
    expected = [r[2:] for r in good[:10] + good[11:12] + good[13:]]
    assert [row.tobytes() for row in got] == expected
    assert hook.counters.bad_records >= 2 and hook.counters.bad_bytes >= 3500
    # the hook keeps serving: a new connection delivers again
    send(hook, "img16", b"".join(good[:5]), [])
    assert len(frames_by_module(collect(hook, 5))[7]) == 5


class FailingOnceHook(QueuedHook):
    """A hook whose first publish raises, as a bug in the publisher would."""

    def __init__(self, path_template: str):
        super().__init__(path_template)
        self.failed = threading.Event()
        put = self.publish

        def publish(block: SocketBlock) -> None:
            if not self.failed.is_set():
                self.failed.set()
                raise RuntimeError("planted")
            put(block)

        self.publish = publish


def test_frames_lost_to_a_failing_publish_are_counted_and_are_a_seq_gap():
    directory = tempfile.mkdtemp(prefix="hook", dir="/tmp")
    try:
        with FailingOnceHook(f"{directory}/hp.dp_{{dp}}.sock") as hook:
            first = records(SAMPLE_IMG16, 1, 5)
            send(hook, "img16", b"".join(first), [])
            wait_until(lambda: hook.counters.unpublished_frames > 0, 10, message="the failed round counted")
            lost = hook.counters.unpublished_frames
            send(hook, "img16", b"".join(records(SAMPLE_IMG16, 1, 3)), [])
            got = collect(hook, 8 - lost)
            assert hook.status()["unpublished_frames"] == lost
            assert got[0].block.first_frame_number == lost, "the next published frame's seq shows the gap"
            assert sum(len(b.block) for b in got) == 8 - lost
    finally:
        shutil.rmtree(directory)


def test_a_stale_socket_file_is_replaced_but_a_live_one_or_a_regular_file_is_not(hook):
    with pytest.raises(OSError, match="in use"):
        QueuedHook(str(hook.paths["img16"]).replace("img16", "{dp}")).start()
    directory = Path(tempfile.mkdtemp(prefix="hook", dir="/tmp"))
    try:
        (directory / "x.dp_img16.sock").write_text("not a socket")
        with pytest.raises(OSError, match="not a socket"):
            QueuedHook(f"{directory}/x.dp_{{dp}}.sock").start()
        assert not (directory / "x.dp_ph256.sock").exists(), "a failed start leaves nothing bound"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(directory / "y.dp_img16.sock"))
        stale.close()  # the file stays, nobody listens
        with QueuedHook(f"{directory}/y.dp_{{dp}}.sock") as fresh:
            send(fresh, "img16", b"".join(records(SAMPLE_IMG16, 1, 3)), [])
            assert len(frames_by_module(collect(fresh, 3))[1]) == 3
        assert not (directory / "y.dp_img16.sock").exists(), "close removes the socket files"
    finally:
        shutil.rmtree(directory)


def snapshot_records(module_id: int, n: int, dp: str = "img16", seed: int = 1) -> list[bytes]:
    """Frames as Hashpipe's snapshot.c sends them (478-byte image header text), without the module id."""
    rng = np.random.default_rng(seed + module_id)
    product = DATA_PRODUCTS[dp]
    frames = []
    for k in range(n):
        image = rng.integers(-50, 4000, product.shape[0] * product.shape[1]).astype(product.dtype).tobytes()
        fields = quabo_fields(T0 + k * 100_000_000, 1000 + k)
        frames.append(header_text(dp, fields, "snapshot", quabo_num=k % 4) + image)
    return frames


def test_image_snapshots_with_hashpipes_478_byte_headers_are_all_published(hook):
    frames = {m: snapshot_records(m, 25) for m in (1, 2)}
    assert all(f.index(b"\n\n*") == 478 for f in frames[1])
    sender = SnapshotSender(str(hook.paths["img16"]), "img16")
    for k in range(25):
        for m in (1, 2):
            sender.send(m, frames[m][k])
    sent = {m: [f for module_id, f in sender.sent_whole if module_id == m] for m in (1, 2)}
    got = frames_by_module(collect(hook, len(sender.sent_whole)))
    sender.close()
    assert len(sender.sent_whole) + sender.dropped == 50 and len(sender.sent_whole) >= 40
    assert {m: [row.tobytes() for row in rows] for m, rows in got.items()} == sent
    assert hook.counters.bad_records == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.one_of(st.none(), st.integers(10, 2 + 481 + 2047))),
                     min_size=1, max_size=30),
       reconnect_at=st.one_of(st.none(), st.integers(0, 29)))
def test_partial_writes_never_publish_a_torn_record_and_show_as_seq_gaps_of_its_module(hook, plan, reconnect_at):
    """snapshot.c counts a partial writev as sent and goes on with the next record: the rest never comes.

    (A record cut within its first bytes cannot always be told from image bytes, see `FrameScanner`:
    the plan cuts at 10 bytes or more.)
    """
    frames = {m: snapshot_records(m, len(plan), seed=len(plan)) for m in (1, 2, 3)}
    list(iter_queue(hook))  # what an earlier example left
    before = {m: hook._next_seq.get((m, "img16"), 0) for m in (1, 2, 3)}
    frames_before = hook.counters.frames
    sender = SnapshotSender(str(hook.paths["img16"]), "img16")
    expected: dict[int, list[tuple[int, bytes]]] = {1: [], 2: [], 3: []}
    seq = dict(before)
    for k, (module_id, cut) in enumerate(plan):
        if k == reconnect_at:
            sender.close()  # a broken connection: Hashpipe reconnects at the next snapshot
        whole, torn = len(sender.sent_whole), len(sender.torn)
        sender.send(module_id, frames[module_id][k], cut)
        if len(sender.sent_whole) > whole:
            expected[module_id].append((seq[module_id], frames[module_id][k]))
        if len(sender.sent_whole) > whole or len(sender.torn) > torn:
            seq[module_id] += 1  # a dropped record (EAGAIN, no connection) never reaches the agent
    sender.close()
    n_whole = sum(len(v) for v in expected.values())
    wait_until(lambda: hook.counters.frames - frames_before >= n_whole and
               all(hook._next_seq.get((m, "img16"), 0) >= seq[m] for m in seq), 5,
               message=f"every whole record received and every torn one counted; plan {plan}, reconnect at "
               f"{reconnect_at}, outcomes {sender.outcomes}, seq {seq}, hook {hook._next_seq} {hook.counters}")
    received: dict[int, list[tuple[int, bytes]]] = {1: [], 2: [], 3: []}
    for item in iter_queue(hook):
        for i in range(len(item.block)):
            received[item.module_id].append((int(item.block.frame_numbers[i]), item.block.raw[i].tobytes()))
    assert {m: [f for _, f in v] for m, v in received.items()} == {m: [f for _, f in v] for m, v in expected.items()}
    assert received == expected
    for m, frames_seq in received.items():
        numbers = [n for n, _ in frames_seq]
        assert numbers == sorted(set(numbers)) and all(before[m] <= n < seq[m] for n in numbers)
    assert {m: hook._next_seq.get((m, "img16"), 0) for m in seq} == seq, "each torn record is one seq gap"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.integers(1, 6000), max_size=30))
def test_blocks_of_one_module_or_several_give_the_same_frames_seq_and_gaps_whatever_the_chunking(hook, chunks):
    """A block of one module is queued as it is, one of several modules is split: the chunking decides which
    blocks are which, and each module's frames, `seq` numbers and torn records stay the same."""
    plan = ([(1, None)] * 5 + [(1, 300)] + [(1, None)] * 3 + [(2, None), (1, None)] * 4
            + [(2, 1000), (1, None), (2, None), (1, 2000), (1, None)] + [(1, None)] * 4)
    frames = {m: snapshot_records(m, len(plan)) for m in (1, 2)}
    list(iter_queue(hook))
    before = {m: hook._next_seq.get((m, "img16"), 0) for m in (1, 2)}
    frames_before, torn_before = hook.counters.frames, hook.counters.torn_records
    expected: dict[int, list[tuple[int, bytes]]] = {1: [], 2: []}
    seq = dict(before)
    data = b""
    for k, (module_id, cut) in enumerate(plan):
        record = module_id.to_bytes(2, "big") + frames[module_id][k]
        data += record[:cut]
        if cut is None:
            expected[module_id].append((seq[module_id], frames[module_id][k]))
        seq[module_id] += 1
    send(hook, "img16", data, chunks)
    n_whole = sum(len(v) for v in expected.values())
    wait_until(lambda: hook.counters.frames - frames_before >= n_whole and
               all(hook._next_seq.get((m, "img16"), 0) >= seq[m] for m in seq), 5,
               message=f"every whole record received and every torn one counted; hook {hook._next_seq}")
    received: dict[int, list[tuple[int, bytes]]] = {1: [], 2: []}
    for item in iter_queue(hook):
        for i in range(len(item.block)):
            received[item.module_id].append((int(item.block.frame_numbers[i]), item.block.raw[i].tobytes()))
    assert received == expected
    assert hook.counters.torn_records - torn_before == 3
    assert {m: hook._next_seq.get((m, "img16"), 0) for m in seq} == seq


def test_the_agent_sees_subscribers_come_and_go_while_the_hook_publishes_all_the_time():
    """The hook's thread sends on the data socket while the tracker's loop sleeps on its descriptor, which ZMQ
    signals once: a send that takes the signal of a (un)subscription must still get it read."""
    directory = tempfile.mkdtemp(prefix="hook", dir="/tmp")
    context = zmq.Context()
    stop = threading.Event()
    data = b"".join(records(SAMPLE_IMG16, 1, 10))

    def hashpipe(path: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            while not stop.is_set():
                client.sendall(data)
                stop.wait(0.001)

    with (FileWatcher() as watcher,
          FramePublisher("t", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", 1000, watcher.wake) as publisher,
          SocketHook(f"{directory}/hp.dp_{{dp}}.sock", publisher.publish_socket, 20) as hook,  # copied sends
          Tracker(publisher, watcher, 60.0, 1000, hook) as tracker):
        sender = threading.Thread(target=hashpipe, args=(str(hook.paths["img16"]),))
        sender.start()
        try:
            for i in range(5):
                sub = context.socket(zmq.SUB)
                sub.connect(publisher.data_endpoint)
                sub.setsockopt(zmq.SUBSCRIBE, subscriber_topic("writer", f"w{i}"))
                sub.setsockopt(zmq.SUBSCRIBE, SOCKET_TOPIC_PREFIX)
                wait_until(lambda: tracker.status()["subscribed"]["names"].get("writer") == [f"w{i}"], 10,  # noqa: B023
                           message=f"subscriber w{i} seen")
                assert sub.poll(10_000), "the hook's frames reach the subscriber"
                sub.close(0)
                wait_until(lambda: not tracker.status()["subscribed"]["names"], 10, message=f"w{i} gone")
        finally:
            stop.set()
            sender.join()
            context.term()
    assert hook.counters.frames > 0 and hook.counters.bad_records == 0
    shutil.rmtree(directory)
