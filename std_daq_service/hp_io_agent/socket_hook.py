"""Hashpipe's low-latency hook: Unix sockets that Hashpipe connects to and writes snapshots into.

Per data product Hashpipe connects to `/tmp/hashpipe_grpc.dp_<dp>.sock` (the path template is
configurable) and sends each snapshot with one `writev` of `[2-byte big-endian module_id][PFF frame]`.
The snapshot headers are not the files' (image headers are 478 bytes of text, not 489): the
header layout is learnt from the first record of each connection, by the same `FrameScanner`
that reads files. A `writev` that sent only part of a record is never completed: the next record
follows directly, so a record is only taken when it is whole (its own header and image, then the
next record's start); a torn record is dropped, counted, and shows as a `seq` gap of its
module's stream. A last record whose end could be the start of the next one waits for more
bytes, at most `_SETTLE_S`. At the end of each round of receives the hook thread publishes the
round's frames itself, a stream's consecutive blocks as one message: one thread wakes per round, and
no other thread (the tracker, busy with files) holds them up.

A round's cost (wake-up, parse, publish) hardly depends on how many records it takes, so after a
small receive records gather before the next round: `_GATHER_S`, or `_GATHER_LONG_S` after a
round that took few records (low rates, where that fixed cost is most of the CPU), counted from the
round's start, so that the round's own work (parse, encode, send) overlaps the gathering.
"""

from __future__ import annotations

import logging
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from std_daq_service.lifecycle import BackgroundThread, Lifecycle
from std_daq_service.pff import DATA_PRODUCTS, DataProduct, FrameBlock, FrameScanner

log = logging.getLogger(__name__)

_RECV_BYTES = 1 << 20
_PREFIX = 2
_SETTLE_S = 0.02
"""How long a complete last record whose end could begin another waits for more bytes."""
_GATHER_S = 0.002
"""After a small receive, the next round starts this long after it: a round costs per receive, not per record."""
_GATHER_LONG_S = 0.005
"""The gather after a round that took fewer than `_FEW_RECORDS` records (low rates)."""
_FEW_RECORDS = 8
_SMALL_BYTES = 1 << 16


@dataclass
class SocketBlock:
    """Frames of one module received on one data product's socket.

    The block's frame numbers count the stream's frames since the agent started (its `seq`).
    """

    module_id: int
    dp: str
    block: FrameBlock


@dataclass(eq=False)
class _Connection:
    dp: DataProduct
    scanner: FrameScanner
    order: int
    buffer: bytes = b""
    """Received bytes not decided yet (immutable: queued blocks are views of them)."""
    waiting_since: float | None = None


@dataclass
class HookCounters:
    """What the hook has seen since it started."""

    connections: int = 0
    frames: int = 0
    torn_records: int = 0
    bad_records: int = 0
    bad_bytes: int = 0
    resyncs: int = 0
    unpublished_frames: int = 0
    """Taken from a socket, then lost to an error while publishing them (seq gaps of their streams)."""


def _in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class SocketHook(Lifecycle):
    """Listen on one Unix socket per data product in a thread that publishes the frames through `publish`.

    `start()` binds every socket (raises OSError, leaving nothing bound) and starts the thread.

    Args:
        path_template: socket path with a `{dp}` placeholder.
        publish: called from the hook thread with each message's frames: a stream's consecutive blocks of one
            round (same header layout), at most `max_frames`; it must not block.
        max_frames: most frames in one message.
    """

    def __init__(self, path_template: str, publish: Callable[[SocketBlock], None], max_frames: int):
        self.publish = publish
        self.max_frames = max_frames
        self.paths = {dp: Path(path_template.format(dp=dp)) for dp in DATA_PRODUCTS}
        self._round: list[SocketBlock] = []
        self.counters = HookCounters()
        self._next_seq: dict[tuple[int, str], int] = {}
        self._module_prefixes: dict[str, set[bytes]] = {dp: set() for dp in DATA_PRODUCTS}
        self._accepted = 0
        self._waiting: set[_Connection] = set()
        self._listeners: list[socket.socket] = []
        self._selector: selectors.BaseSelector | None = None
        self._wake_w: socket.socket | None = None
        self._received = bytearray(_RECV_BYTES)
        self._loop = BackgroundThread("socket-hook", self._run, wake=self._wake)

    def _open(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        for dp, path in self.paths.items():
            self._listeners.append(self._listen(path, DATA_PRODUCTS[dp]))
        self._loop.start()
        log.info("socket hook listening on %s", ", ".join(str(p) for p in self.paths.values()))

    def _listen(self, path: Path, dp: DataProduct) -> socket.socket:
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(f"socket hook path {path} exists and is not a socket; refusing to replace it")
            if _in_use(path):
                raise OSError(f"socket hook path {path} is in use by another process")
            path.unlink()  # left by an agent that died; Hashpipe reconnects to the new one
        path.parent.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            listener.listen(8)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, dp)
        return listener

    def _wake(self) -> None:
        self._wake_w.send(b"x")

    def _release(self) -> None:
        self._loop.close()
        for listener in self._listeners:
            Path(listener.getsockname()).unlink(missing_ok=True)
        self._listeners.clear()
        if self._selector is not None:
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # the listeners, the connections and the wake socket
            self._selector.close()
            self._selector = None
        self._waiting.clear()
        if self._wake_w is not None:
            self._wake_w.close()
            self._wake_w = None

    def status(self) -> dict:
        c = self.counters
        return {
            "paths": {dp: str(p) for dp, p in self.paths.items()},
            "connections": c.connections,
            "frames_received": c.frames,
            "torn_records": c.torn_records,
            "bad_records": c.bad_records,
            "bad_bytes": c.bad_bytes,
            "resyncs": c.resyncs,
            "unpublished_frames": c.unpublished_frames,
        }

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            events = self._selector.select(_SETTLE_S if self._waiting else None)
            now = time.monotonic()
            frames = self.counters.frames
            for connection in list(self._waiting):
                if now - connection.waiting_since >= _SETTLE_S:
                    self._parse(connection, final=True)
            received = 0
            # older connections first: a connection Hashpipe closed is finished before its new one is read
            for key, _ in sorted(events, key=lambda e: getattr(e[0].data, "order", -1)):
                sock = key.fileobj
                if sock is self._wake_r:
                    continue
                try:
                    if sock in self._listeners:
                        self._accept(sock, key.data)
                    else:
                        received += max(self._receive(sock, key.data), 0)
                except Exception:  # a bug must not close the hook for every connection: say it, go on
                    log.exception("socket hook error on %s; going on", key.data)
            taken = self.counters.frames - frames
            if self._round:
                self._publish_round()
            if 0 < received < _SMALL_BYTES:
                gather = _GATHER_LONG_S if taken < _FEW_RECORDS else _GATHER_S
                stop.wait(max(0.0, now + gather - time.monotonic()))

    def _accept(self, listener: socket.socket, dp: DataProduct) -> None:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return
        connection.setblocking(False)
        scanner = FrameScanner(dp, prefix=_PREFIX, max_rows=self.max_frames, check_every_row=True,
                               known_prefixes=self._module_prefixes[dp.name])
        self._accepted += 1
        self._selector.register(connection, selectors.EVENT_READ, _Connection(dp, scanner, self._accepted))
        self.counters.connections += 1
        log.info("Hashpipe connected to the %s socket", dp.name)

    def _receive(self, sock: socket.socket, connection: _Connection) -> int:
        """Take what the connection sent; return how many bytes (-1: the connection closed)."""
        try:
            nbytes = sock.recv_into(self._received)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            log.warning("%s socket connection failed: %s", connection.dp.name, exc)
            nbytes = 0
        if not nbytes:
            self._parse(connection, final=True)
            if connection.buffer:
                torn = connection.scanner.torn_prefixes(np.frombuffer(connection.buffer, dtype=np.uint8))
                self._lose(connection, len(connection.buffer), max(1, len(torn)), torn)
                log.warning("%s socket closed with %d bytes of a torn record", connection.dp.name,
                            len(connection.buffer))
            self._waiting.discard(connection)
            self._selector.unregister(sock)
            sock.close()
            self.counters.connections -= 1
            return -1
        with memoryview(self._received) as received:  # one buffer for every receive: no 1 MiB allocation each
            data = received[:nbytes]
            connection.buffer = connection.buffer + data if connection.buffer else bytes(data)
        self._parse(connection)
        return nbytes

    def _parse(self, connection: _Connection, final: bool = False) -> None:
        """Queue every whole record of the buffer; keep an undecided tail."""
        buffer = np.frombuffer(connection.buffer, dtype=np.uint8)
        position = 0
        while position < len(buffer):
            step = connection.scanner.step(buffer[position:], final=final)
            if step.skipped:
                self._lose(connection, step.skipped, step.lost_frames, step.torn_prefixes)
            if step.block is not None:
                self._queue(connection.dp, step.block, step.prefixes)
            position += step.end
            if step.end == 0:
                break
        connection.buffer = connection.buffer[position:]
        if len(connection.buffer) >= _PREFIX + connection.scanner.frame_size:  # a whole record, undecided
            connection.waiting_since = connection.waiting_since or time.monotonic()
            self._waiting.add(connection)
        else:
            connection.waiting_since = None
            self._waiting.discard(connection)

    def _lose(self, connection: _Connection, nbytes: int, frames: int, torn_prefixes: list[bytes]) -> None:
        """Count bytes that were no whole record; a torn record is a `seq` gap in its module's stream."""
        c = self.counters
        c.bad_bytes += nbytes
        c.bad_records += frames
        c.torn_records += len(torn_prefixes)
        c.resyncs += 1
        for prefix in torn_prefixes:
            if len(prefix) == _PREFIX:
                key = (int.from_bytes(prefix, "big"), connection.dp.name)
                self._next_seq[key] = self._next_seq.get(key, 0) + 1
        log.warning("%s socket: %d bytes (%d record(s), %d torn) were no whole record; dropped",
                    connection.dp.name, nbytes, frames, len(torn_prefixes))

    def _queue(self, dp: DataProduct, block: FrameBlock, prefixes: np.ndarray) -> None:
        """Queue a block's frames per module; a block of one module (the usual case) goes as it is."""
        if len(block) == 1 or (prefixes == prefixes[0]).all():
            self._put(int.from_bytes(prefixes[0].tobytes(), "big"), dp, block)
            return
        module_ids = prefixes[:, 0].astype(np.int64) << 8 | prefixes[:, 1]
        for module_id in np.unique(module_ids):
            self._put(int(module_id), dp, FrameBlock(dp, block.raw[module_ids == module_id], 0, block.layout))

    def _put(self, module_id: int, dp: DataProduct, block: FrameBlock) -> None:
        """Number the block's frames in its module's stream (its `seq`) and add it to the round's."""
        key = (module_id, dp.name)
        block.first_frame_number = self._next_seq.get(key, 0)
        self._next_seq[key] = block.first_frame_number + len(block)
        self.counters.frames += len(block)
        self._round.append(SocketBlock(*key, block))

    def _publish_round(self) -> None:
        """Publish the round's blocks, a stream's consecutive ones (same header layout) as one message."""
        runs: dict[tuple[int, str], list[FrameBlock]] = {}
        published = 0
        try:
            for received in self._round:
                key = (received.module_id, received.dp)
                run = runs.setdefault(key, [])
                if run and not _continues(run, received.block, self.max_frames):
                    published += self._publish_run(key, run)
                    run.clear()
                run.append(received.block)
            for key, run in runs.items():
                published += self._publish_run(key, run)
        except Exception:  # a bug must not stop the hook: the frames not sent are counted, and seen as seq gaps
            unpublished = sum(len(received.block) for received in self._round) - published
            log.exception("socket hook: publishing failed, %d frames lost; going on", unpublished)
            self.counters.unpublished_frames += unpublished
        self._round.clear()

    def _publish_run(self, key: tuple[int, str], run: list[FrameBlock]) -> int:
        """Publish `run` as one message; return its frames."""
        first = run[0]
        block = first if len(run) == 1 else FrameBlock(first.dp, np.concatenate([b.raw for b in run]),
                                                       first.first_frame_number, first.layout)
        self.publish(SocketBlock(*key, block))
        return len(block)


def _continues(run: list[FrameBlock], block: FrameBlock, max_frames: int) -> bool:
    """Does `block` follow the frames of `run` (next numbers, same header layout) and fit in one message?"""
    last = run[-1]
    return (block.first_frame_number == last.first_frame_number + len(last) and block.layout is last.layout
            and sum(len(b) for b in run) + len(block) <= max_frames)
