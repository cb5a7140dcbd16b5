"""Wake up when files under a data dir change: inotify where available, polling otherwise."""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import zmq

from std_daq_service.lifecycle import Lifecycle

log = logging.getLogger(__name__)

_REMEMBERED = 4096
_EVENT = struct.Struct("iIII")
"""An inotify event's fixed part (wd, mask, cookie, name length); its NUL-padded name follows."""
_READ_SIZE = 65536

try:
    from inotify_simple import INotify
    from inotify_simple import flags as _flags

    _MASK = int(_flags.MODIFY | _flags.CREATE | _flags.MOVED_TO | _flags.MOVED_FROM | _flags.DELETE
                | _flags.DELETE_SELF | _flags.CLOSE_WRITE)
    _STRUCTURE = int(_flags.CREATE | _flags.MOVED_TO | _flags.MOVED_FROM | _flags.DELETE | _flags.DELETE_SELF)
    _CLOSE_WRITE = int(_flags.CLOSE_WRITE)
except ImportError:  # not Linux: polling only
    INotify = None


class Wakeup(NamedTuple):
    """Why `FileWatcher.wait` returned."""

    structure: bool
    """A file or directory was created, moved or deleted (always without inotify); not for a `wake()`."""
    sockets: bool
    """One of the ZMQ sockets (or descriptors) given to `wait` is readable."""


class FileWatcher(Lifecycle):
    """Watch directories (not recursively) and wait for changes with a timeout; `start()` opens inotify.

    `wait()` says whether a file or directory was created, moved or deleted (a reason to look for
    new runs and files): not for only appended data or a timeout. Without inotify it sleeps at most
    `poll_interval_s` and says so, so callers rescan and reread on every poll. It also wakes for
    readable ZMQ sockets, so one thread can wait for files and sockets together.

    When a writer closes a file it wrote (inotify's CLOSE_WRITE), the file's size and mtime are
    noted: `closed_as(path, size, mtime)` then tells a reader that the file it sees is what the
    writer left at its close (Hashpipe's rollover closes, so flushes, the old file only after the
    next one was opened), and not content written after by another writer.
    """

    def __init__(self, poll_interval_s: float = 0.5):
        self.poll_interval_s = poll_interval_s
        self._inotify = None
        self._watches: dict[Path, int] = {}
        self._wake_r = self._wake_w = -1
        self._lock = threading.Lock()
        self._dirs: dict[int, Path] = {}
        self._closed: dict[Path, tuple[int, int]] = {}
        self._poller = zmq.Poller()
        self._sockets: set[zmq.Socket | int] = set()

    def _open(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a waker never blocks: a full pipe already wakes `wait`
        if INotify is not None:
            try:
                self._inotify = INotify(nonblocking=True)
            except OSError as exc:
                log.warning("inotify unavailable (%s); polling every %.2f s", exc, self.poll_interval_s)
        self._poller = zmq.Poller()
        self._sockets.clear()
        self._poller.register(self._wake_r, zmq.POLLIN)
        if self._inotify is not None:
            self._poller.register(self._inotify.fileno(), zmq.POLLIN)

    @property
    def uses_inotify(self) -> bool:
        return self._inotify is not None

    def watch(self, directories: list[Path]) -> int:
        """Watch exactly these directories from now on; return how many were not watched before.

        What changed in a new directory before its watch was added is not reported: callers rescan
        when this returns more than 0.
        """
        if self._inotify is None:
            return 0
        added = 0
        with self._lock:
            wanted = set(directories)
            for path in list(self._watches):
                if path not in wanted:
                    try:
                        wd = self._watches.pop(path)
                        self._dirs.pop(wd, None)
                        self._inotify.rm_watch(wd)
                    except OSError:
                        pass  # the directory is already gone, and its watch with it
            for path in wanted - set(self._watches):
                try:
                    self._watches[path] = self._inotify.add_watch(path, _MASK)
                    self._dirs[self._watches[path]] = path
                    added += 1
                except OSError:
                    continue  # vanished since it was listed; the next scan finds out
        return added

    def wait(self, timeout_s: float, sockets: Sequence[zmq.Socket | int] = ()) -> Wakeup:
        """Block until a change, a `wake()`, a readable socket or file descriptor of `sockets` or the timeout."""
        inotify_fd = self._inotify.fileno() if self._inotify is not None else None
        if inotify_fd is None:
            timeout_s = min(timeout_s, self.poll_interval_s)
        for sock in sockets:
            if sock not in self._sockets:
                self._sockets.add(sock)
                self._poller.register(sock, zmq.POLLIN)
        ready = dict(self._poller.poll(math.ceil(timeout_s * 1000)))  # whole ms: less would not wait at all
        structure = inotify_fd is None
        if self._wake_r in ready:
            os.read(self._wake_r, 4096)
        if inotify_fd is not None and inotify_fd in ready:
            structure = self._read_events(inotify_fd)
        return Wakeup(structure, len(ready) > (self._wake_r in ready) + (inotify_fd in ready))

    def _read_events(self, fd: int) -> bool:
        """Read the queued inotify events (one read: appends are a MODIFY each); note closes; say if the structure
        changed. More than one read's worth leaves the fd readable for the next `wait`."""
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return False
        structure, pos, unpack = False, 0, _EVENT.unpack_from
        while pos < len(data):
            wd, mask, _, length = unpack(data, pos)
            pos += _EVENT.size + length
            if mask & _STRUCTURE:
                structure = True
            if mask & _CLOSE_WRITE and wd in self._dirs:
                name = data[pos - length : pos].split(b"\0", 1)[0]
                self._note_close(self._dirs[wd] / os.fsdecode(name))
        return structure

    def _note_close(self, path: Path) -> None:
        try:
            info = os.stat(path)
        except OSError:
            return  # gone already
        self._closed.pop(path, None)
        self._closed[path] = (info.st_size, info.st_mtime_ns)
        if len(self._closed) > _REMEMBERED:
            for old in list(self._closed)[: _REMEMBERED // 2]:
                del self._closed[old]

    def closed_as(self, path: Path, size: int, mtime_ns: int) -> bool:
        """Did a writer close `path` after writing, and has it stayed as it was then (`size`, `mtime_ns`)?"""
        return self._closed.get(path) == (size, mtime_ns)

    def wake(self) -> None:
        """Make a waiting `wait()` return at once (thread-safe); nothing once closed."""
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # the pipe is full of wakes not yet read

    def _release(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._watches.clear()
        self._dirs.clear()
