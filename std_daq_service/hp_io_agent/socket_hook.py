"""Hashpipe's low-latency hook: Unix sockets that Hashpipe connects to and writes frames into.

Per data product Hashpipe connects to `/tmp/hashpipe_grpc.dp_<dp>.sock` (the path template is
configurable) and sends records `[2-byte big-endian module_id][PFF frame]`. PFF frames of one data
product have a fixed size, so records are split without scanning; each is checked (header opens
with `{`, closes with `\\n\\n*` at its fixed offset, matches the stream's header layout). A bad
record is dropped and counted, and the reader resynchronises on the next record boundary it can
prove, so a garbage burst costs only the frames it overwrote. Blocks of good frames go to a queue
that the tracker thread drains (the ZMQ sockets belong to that thread).
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from std_daq_service.pff import DATA_PRODUCTS, HEADER_END, DataProduct, FrameBlock, HeaderLayout, PffError, parse_header

log = logging.getLogger(__name__)

_RECV_BYTES = 1 << 20
_OPEN_BRACE = ord("{")


@dataclass
class SocketBlock:
    """Frames of one module received on one data product's socket.

    The block's frame numbers count the stream's frames since the agent started (its `seq`).
    """

    module_id: int
    dp: str
    block: FrameBlock


@dataclass
class _Connection:
    dp: DataProduct
    buffer: bytearray = field(default_factory=bytearray)
    in_sync: bool = True


@dataclass
class HookCounters:
    """What the hook has seen since it started."""

    connections: int = 0
    frames: int = 0
    bad_records: int = 0
    bad_bytes: int = 0
    resyncs: int = 0


def _in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _record_ok(records: np.ndarray, dp: DataProduct) -> np.ndarray:
    """Bool per (N, 2 + frame_size) record: header opens with `{` and closes with the marker in place."""
    end = records[:, 2 + dp.header_size - len(HEADER_END) : 2 + dp.header_size]
    return (records[:, 2] == _OPEN_BRACE) & (end == np.frombuffer(HEADER_END, dtype=np.uint8)).all(axis=1)


def _is_record_start(buffer: bytearray, dp: DataProduct, begin: int) -> bool:
    marker = begin + 2 + dp.header_size - len(HEADER_END)
    return buffer[begin + 2] == _OPEN_BRACE and buffer[marker : marker + len(HEADER_END)] == HEADER_END


def _resync_point(buffer: bytearray, dp: DataProduct, start: int) -> tuple[int, bool]:
    """Where to go on after bad bytes at `start`: (offset, confirmed).

    A place is a confirmed record start when it and the record right after it both look like
    record starts, so a torn record followed by a whole one is not taken for a record. When no
    place in the buffer can be confirmed yet, the offset is where the undecided tail begins.
    """
    size = 2 + dp.frame_size
    marker_offset = 2 + dp.header_size - len(HEADER_END)
    undecided = max(start, len(buffer) - size - marker_offset - len(HEADER_END) + 1)
    position = start + marker_offset
    while (found := buffer.find(HEADER_END, position)) != -1:
        begin = found - marker_offset
        if begin >= undecided:
            break
        if _is_record_start(buffer, dp, begin) and _is_record_start(buffer, dp, begin + size):
            return begin, True
        position = found + 1
    return undecided, False


class SocketHook:
    """Listen on one Unix socket per data product in a thread; frames go to `blocks`.

    Args:
        path_template: socket path with a `{dp}` placeholder.
        notify: called (from the hook thread) after blocks were queued.
    """

    def __init__(self, path_template: str, notify: Callable[[], None]):
        self.notify = notify
        self.paths = {dp: Path(path_template.format(dp=dp)) for dp in DATA_PRODUCTS}
        self.blocks: queue.SimpleQueue[SocketBlock] = queue.SimpleQueue()
        self.counters = HookCounters()
        self._layouts: dict[tuple[int, str], HeaderLayout] = {}
        self._next_seq: dict[tuple[int, str], int] = {}
        self._selector = selectors.DefaultSelector()
        self._listeners: list[socket.socket] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SocketHook:
        """Bind every socket (raises OSError, leaving nothing bound) and start the thread."""
        try:
            for dp, path in self.paths.items():
                self._listeners.append(self._listen(path, DATA_PRODUCTS[dp]))
        except OSError:
            self.close()
            raise
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="socket-hook", daemon=True)
        self._thread.start()
        log.info("socket hook listening on %s", ", ".join(str(p) for p in self.paths.values()))
        return self

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

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._wake_w.send(b"x")
            self._thread.join()
            self._thread = None
        for listener in self._listeners:
            Path(listener.getsockname()).unlink(missing_ok=True)
            listener.close()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> SocketHook:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def status(self) -> dict:
        c = self.counters
        return {
            "paths": {dp: str(p) for dp, p in self.paths.items()},
            "connections": c.connections,
            "frames_received": c.frames,
            "bad_records": c.bad_records,
            "bad_bytes": c.bad_bytes,
            "resyncs": c.resyncs,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._wake_r:
                    continue
                try:
                    if sock in self._listeners:
                        self._accept(sock, key.data)
                    else:
                        self._receive(sock, key.data)
                except Exception:  # a bug must not close the hook for every connection: say it, go on
                    log.exception("socket hook error on %s; going on", key.data)

    def _accept(self, listener: socket.socket, dp: DataProduct) -> None:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return
        connection.setblocking(False)
        self._selector.register(connection, selectors.EVENT_READ, _Connection(dp))
        self.counters.connections += 1
        log.info("Hashpipe connected to the %s socket", dp.name)

    def _receive(self, sock: socket.socket, connection: _Connection) -> None:
        try:
            data = sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("%s socket connection failed: %s", connection.dp.name, exc)
            data = b""
        if not data:
            if connection.buffer:
                log.warning("%s socket closed with %d bytes of a partial record", connection.dp.name,
                            len(connection.buffer))
            self._selector.unregister(sock)
            sock.close()
            self.counters.connections -= 1
            return
        connection.buffer += data
        if self._parse(connection):
            self.notify()

    def _parse(self, connection: _Connection) -> bool:
        """Queue every complete good record of the buffer; keep the partial tail. True if any queued."""
        dp, buffer = connection.dp, connection.buffer
        size = 2 + dp.frame_size
        queued = False
        start = 0
        while True:
            if not connection.in_sync:
                resume, confirmed = _resync_point(buffer, dp, start)
                self.counters.bad_bytes += resume - start
                start = resume
                if not confirmed:
                    break
                connection.in_sync = True
            n = (len(buffer) - start) // size
            if n == 0:
                break
            records = np.frombuffer(buffer, dtype=np.uint8, count=n * size, offset=start).reshape(n, size)
            ok = _record_ok(records, dp)
            good = n if ok.all() else int(ok.argmin())
            if good:
                queued |= self._queue(records[:good], dp)  # copies the rows it keeps
                start += good * size
            del records  # the buffer cannot be resized while a view exports it
            if good == n:
                break
            connection.in_sync = False
            self.counters.bad_records += 1
            self.counters.resyncs += 1
            log.warning("%s socket: bad record, resynchronising on the next whole frames", dp.name)
        del buffer[:start]
        return queued

    def _layout(self, key: tuple[int, str], rows: np.ndarray, dp: DataProduct) -> HeaderLayout | None:
        """The header layout of a stream, learnt from its first frame whose header parses."""
        if key not in self._layouts:
            for row in rows[:8]:
                header = row[: dp.header_size].tobytes()
                try:
                    parse_header(header)
                    self._layouts[key] = HeaderLayout(header)
                    break
                except PffError:
                    continue
        return self._layouts.get(key)

    def _drop(self, dp: DataProduct, module_id: int, frames: int) -> None:
        self.counters.bad_records += frames
        self.counters.bad_bytes += frames * (2 + dp.frame_size)
        log.warning("%s socket, module %d: %d frames with bad headers dropped", dp.name, module_id, frames)

    def _queue(self, records: np.ndarray, dp: DataProduct) -> bool:
        module_ids = records[:, 0].astype(np.int64) << 8 | records[:, 1]
        queued = False
        for module_id in np.unique(module_ids):
            rows = records[module_ids == module_id, 2:]
            key = (int(module_id), dp.name)
            layout = self._layout(key, rows, dp)
            if layout is None:
                self._drop(dp, int(module_id), len(rows))
                continue
            first = self._next_seq.get(key, 0)
            block = FrameBlock(dp, rows, first, layout)
            valid = block.valid_rows()
            if not valid.all():
                self._drop(dp, int(module_id), int((~valid).sum()))
                block = FrameBlock(dp, rows[valid], first, layout)
            if len(block):
                self._next_seq[key] = first + len(block)
                self.counters.frames += len(block)
                self.blocks.put(SocketBlock(*key, block))
                queued = True
        return queued
