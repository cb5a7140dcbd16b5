"""The statuses of recent requests, shared by the threads that receive them and those that wait for them."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from std_daq_service.broker.call_result import CallResult
from std_daq_service.protocol import Status

_WAIT_SLICE_S = 0.2


class StatusStore:
    """Thread-safe status history of the `keep` most recently active requests (the others are dropped).

    Args:
        keep: how many requests to remember.
        keep_all: also keep statuses of requests nobody registered (sent by other callers).
    """

    def __init__(self, keep: int = 10_000, keep_all: bool = False):
        self.keep = keep
        self.keep_all = keep_all
        self._changed = threading.Condition()
        self._statuses: OrderedDict[str, list[Status]] = OrderedDict()

    def register(self, request_id: str) -> None:
        """Keep the statuses of this request from now on (call before publishing it)."""
        with self._changed:
            self._entry(request_id)

    def add(self, status: Status) -> None:
        with self._changed:
            if status.request_id not in self._statuses and not self.keep_all:
                return
            self._entry(status.request_id).append(status)
            self._changed.notify_all()

    def history(self, request_id: str) -> list[Status] | None:
        """The statuses of a request so far; None if it is not (or no longer) kept."""
        with self._changed:
            history = self._statuses.get(request_id)
            return None if history is None else list(history)

    def recent(self, n: int) -> list[tuple[str, list[Status]]]:
        """The `n` most recently active requests, newest first."""
        with self._changed:
            items = list(self._statuses.items())[-n:]
            return [(request_id, list(history)) for request_id, history in reversed(items)]

    def wait(
        self,
        request_id: str,
        targets: Iterable[str],
        timeout: float,
        on_status: Callable[[Status], None] | None = None,
        until_action: str | None = None,
        pump: Callable[[float], None] | None = None,
    ) -> CallResult:
        """Wait until every target sent a final status (or any status is `until_action`) or `timeout` passes.

        Args:
            on_status: called with each status as it is seen, in order, outside the lock.
            pump: receives statuses for up to the given seconds (a single-threaded caller); without it,
                another thread adds them and this one sleeps until it does.
        """
        targets = list(targets)
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            with self._changed:
                history = list(self._entry(request_id, touch=False))
            for status in history[seen:]:
                if on_status is not None:
                    on_status(status)
            seen = len(history)
            result = CallResult(request_id, targets, history, timeout)
            reached = any(s.action == until_action for s in history) if until_action else result.complete
            remaining = deadline - time.monotonic()
            if reached or remaining <= 0:
                return result
            if pump is not None:
                pump(min(remaining, _WAIT_SLICE_S))
                continue
            with self._changed:
                if len(self._entry(request_id, touch=False)) == seen:
                    self._changed.wait(remaining)

    def _entry(self, request_id: str, touch: bool = True) -> list[Status]:
        """The request's history, registered if new; `touch` marks it most recently active (holding the lock)."""
        history = self._statuses.get(request_id)
        if history is None:
            history = self._statuses[request_id] = []
            while len(self._statuses) > self.keep:
                self._statuses.popitem(last=False)
        elif touch:
            self._statuses.move_to_end(request_id)
        return history
