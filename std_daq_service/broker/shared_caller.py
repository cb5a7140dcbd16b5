"""A request caller many threads can share (the REST proxy): one connection, pumped by its own thread."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable

import pika.exceptions

from std_daq_service.broker.caller import CallResult, RequestCaller
from std_daq_service.protocol import RequestBase, Status

log = logging.getLogger(__name__)

_PUMP_S = 0.05
_RECONNECT_S = 1.0


class SharedCaller:
    """Publish requests and kills from any thread; keep the status history of the last `keep` requests.

    Every status on the exchange is kept (also of requests sent by others), so `history` answers for
    any recent request. A waiter registers before its request is published, so it misses nothing.
    """

    def __init__(self, broker_url: str | None, name: str, keep: int = 2000):
        self._caller = RequestCaller(broker_url, name, listener=self._on_status)
        self._keep = keep
        self._lock = threading.Lock()
        self._changed = threading.Condition(threading.Lock())
        self._statuses: collections.OrderedDict[str, list[Status]] = collections.OrderedDict()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def start(self) -> SharedCaller:
        self._thread = threading.Thread(target=self._run, name="shared-caller", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            self._caller.close()

    def __enter__(self) -> SharedCaller:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._caller.pump(_PUMP_S)
                self.connected.set()
                time.sleep(0.001)  # let publishers take the lock
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.connected.clear()
                log.warning("broker connection lost (%r); reconnecting", exc)
                with self._lock:
                    self._caller.close()
                self._stop.wait(_RECONNECT_S)

    def _on_status(self, status: Status) -> None:
        with self._changed:
            self._register(status.request_id).append(status)
            self._changed.notify_all()

    def _register(self, request_id: str) -> list[Status]:
        history = self._statuses.get(request_id)
        if history is None:
            history = self._statuses[request_id] = []
            while len(self._statuses) > self._keep:
                old, _ = self._statuses.popitem(last=False)
                self._caller.forget(old)
        return history

    def publish(self, targets: Iterable[str], request: RequestBase, request_id: str) -> None:
        """Send one request (same id) to each target; raises UnknownTarget / NoServiceAnswered."""
        with self._changed:
            self._register(request_id)
        with self._lock:
            for target in targets:
                self._caller.publish(target, request, request_id)
                self._caller.forget(request_id)  # statuses reach this object through the listener

    def kill(self, target: str, request_id: str) -> None:
        with self._lock:
            self._caller.kill(target, request_id)

    def history(self, request_id: str) -> list[Status] | None:
        with self._changed:
            history = self._statuses.get(request_id)
            return None if history is None else list(history)

    def recent(self, n: int = 50) -> list[tuple[str, list[Status]]]:
        with self._changed:
            items = list(self._statuses.items())[-n:]
        return [(request_id, list(history)) for request_id, history in reversed(items)]

    def wait(self, request_id: str, targets: list[str], timeout: float) -> CallResult:
        """Block until every target sent its final status or `timeout` passed."""
        result = CallResult(request_id, list(targets))
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                history = list(self._statuses.get(request_id, ()))
                result.finals = {s.source: s for s in history if s.is_final and s.source in targets}
                remaining = deadline - time.monotonic()
                if result.complete or remaining <= 0:
                    break
                self._changed.wait(remaining)
        result.history = history
        return result
