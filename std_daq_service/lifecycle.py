"""Explicit lifecycles: everything holding a socket, file, connection or thread starts and closes the same way.

`Lifecycle` is the base: `start()` acquires (once; a second call does nothing), `close()` releases (safe to
call any number of times, also when `start()` failed half way), and the object is a context manager.
`__init__` only stores arguments; all I/O happens in `_open`. `BackgroundThread` is the one way a
service runs a loop in a thread: a named daemon thread with a stop event, started and joined by its owner.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

_Self = TypeVar("_Self", bound="Lifecycle")


class Lifecycle:
    """Base of every owner of a resource: override `_open` (acquire) and `_release` (give back).

    `start()` after `close()` starts again, so an owner can be restarted; `_release` runs once per start.
    """

    _lifecycle_state = "new"  # "new" -> "started" -> "closed" -> ("started" again)

    def _open(self) -> None:
        """Acquire the resources (sockets, files, threads)."""

    def _release(self) -> None:
        """Give back what `_open` acquired; must cope with a half-finished `_open`."""

    @property
    def started(self) -> bool:
        return self._lifecycle_state == "started"

    def start(self: _Self) -> _Self:
        """Acquire the resources; a second call does nothing."""
        if self._lifecycle_state != "started":
            self._lifecycle_state = "started"
            try:
                self._open()
            except BaseException:
                self.close()
                raise
        return self

    def close(self) -> None:
        """Release the resources; safe to call twice and before `start()`."""
        if self._lifecycle_state == "started":
            self._lifecycle_state = "closed"
            self._release()

    def __enter__(self: _Self) -> _Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BackgroundThread(Lifecycle):
    """A named daemon thread running `target(stop)` until `stop` is set.

    Args:
        name: the thread's name (shown in logs and py-spy).
        target: the loop; it returns when `stop.is_set()` (it should wait on `stop`, not sleep).
        wake: called after `stop` is set, to interrupt a loop blocked elsewhere (a poll, a watcher).
        join_timeout_s: longest wait for the loop to end at `close()` (None: until it ends); for a loop
            that may be kept busy by others (an HTTP server finishing its open connections).
    """

    def __init__(self, name: str, target: Callable[[threading.Event], None],
                 wake: Callable[[], None] | None = None, join_timeout_s: float | None = None):
        self.name = name
        self.target = target
        self.wake = wake
        self.join_timeout_s = join_timeout_s
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _open(self) -> None:
        self.stop.clear()
        self._thread = threading.Thread(target=self.target, args=(self.stop,), name=self.name, daemon=True)
        self._thread.start()

    def _release(self) -> None:
        self.stop.set()
        thread, self._thread = self._thread, None
        try:
            if self.wake is not None:
                self.wake()
        finally:  # a wake that fails (its target already closed) must not leave the thread running
            if thread is not None and thread is not threading.current_thread():
                thread.join(self.join_timeout_s)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
