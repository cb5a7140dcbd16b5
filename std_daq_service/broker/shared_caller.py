"""A request caller many threads can share (the REST proxy): one connection, owned by its pump thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

import pika.exceptions

from std_daq_service.broker.audit import Caller
from std_daq_service.broker.call_result import CallResult
from std_daq_service.broker.caller import RequestCaller
from std_daq_service.broker.status_store import StatusStore
from std_daq_service.lifecycle import BackgroundThread, Lifecycle
from std_daq_service.protocol import Request, Status

log = logging.getLogger(__name__)

_PUMP_S = 1.0  # statuses and submitted jobs wake the pump at once; this bounds only an idle wait
_RECONNECT_S = 1.0

Job = tuple[Callable[[RequestCaller], Any], Future]


class SharedCaller(Lifecycle):
    """Publish requests and kills from any thread; keep the status history of the last `keep` requests.

    Only the pump thread touches the pika connection: other threads hand it their publishes and wait for
    the broker's confirm (or refusal). Every status on the exchange is kept (also of requests sent by
    others), so `history` answers for any recent request. A request is registered before it is published,
    so its waiter misses nothing.
    """

    def __init__(self, broker_url: str | None, name: str, keep: int = 2000):
        self.broker_url = broker_url
        self.name = name
        self.store = StatusStore(keep, keep_all=True)
        self.connected = threading.Event()
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._caller: RequestCaller | None = None
        self._pump = BackgroundThread("shared-caller", self._run, wake=self._wake)

    def _open(self) -> None:
        self._pump.start()

    def _release(self) -> None:
        self._pump.close()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            caller = RequestCaller(self.broker_url, self.name, store=self.store)
            try:
                caller.start()
                self._caller = caller
                self.connected.set()
                while not stop.is_set():
                    self._run_jobs(caller)
                    caller.pump(_PUMP_S)
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._disconnect(caller)  # before the pause: no one is told "connected" meanwhile
                log.warning("broker connection lost (%r); reconnecting", exc)
                stop.wait(_RECONNECT_S)
            finally:
                self._disconnect(caller)

    def _wake(self) -> None:
        caller = self._caller
        connection = caller.connection if caller is not None else None
        if connection is not None:
            try:
                connection.add_callback_threadsafe(lambda: None)
            except (pika.exceptions.AMQPError, RuntimeError):
                pass  # closing already: the pump ends by itself

    def _disconnect(self, caller: RequestCaller) -> None:
        self.connected.clear()
        self._caller = None
        caller.close()
        self._fail_jobs(pika.exceptions.AMQPConnectionError("the broker connection closed; retry"))

    def _take_jobs(self) -> Iterator[Job]:
        while True:
            try:
                yield self._jobs.get_nowait()
            except queue.Empty:
                return

    def _run_jobs(self, caller: RequestCaller) -> None:
        for job, future in self._take_jobs():
            try:
                future.set_result(job(caller))
            except (pika.exceptions.AMQPError, OSError) as exc:
                future.set_exception(exc)
                raise
            except Exception as exc:  # the submitting thread raises it (UnknownTarget, NoServiceAnswered)
                future.set_exception(exc)

    def _fail_jobs(self, exc: Exception) -> None:
        for _, future in self._take_jobs():
            future.set_exception(exc)

    def _submit(self, job: Callable[[RequestCaller], Any]) -> Any:
        """Run `job` on the pump thread; its result, or its exception raised here."""
        caller = self._caller
        if caller is None or not self.connected.is_set():
            raise pika.exceptions.AMQPConnectionError("not connected to the broker; reconnecting")
        future: Future = Future()
        self._jobs.put((job, future))
        self._wake()  # run it now; if the connection is closing, the pump fails the job
        if self._caller is None:
            self._fail_jobs(pika.exceptions.AMQPConnectionError("the broker connection closed; retry"))
        return future.result()

    def publish(self, targets: Iterable[str], request: Request, request_id: str, caller: Caller | None = None) -> None:
        """Send one request (same id) to each target for `caller`; raises UnknownTarget / NoServiceAnswered."""
        targets = list(targets)
        self.store.register(request_id)

        def send(sender: RequestCaller) -> None:
            for target in targets:
                sender.publish(target, request, request_id, caller)

        self._submit(send)

    def kill(self, target: str, request_id: str, caller: Caller | None = None) -> None:
        self._submit(lambda sender: sender.kill(target, request_id, caller))

    def history(self, request_id: str) -> list[Status] | None:
        return self.store.history(request_id)

    def recent(self, n: int = 50) -> list[tuple[str, list[Status]]]:
        return self.store.recent(n)

    def wait(self, request_id: str, targets: list[str], timeout: float) -> CallResult:
        """Block until every target sent its final status or `timeout` passed."""
        return self.store.wait(request_id, targets, timeout)
