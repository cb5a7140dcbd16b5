"""Run requests with their handlers and report every step as a status message.

The dispatcher alone publishes statuses, so every service reports the same way: a handler gets a
typed request and a `RequestContext`, returns a result dict (or None) or raises; it never sees pika.
It also times every request it runs (`durations`, a Prometheus histogram by request type and outcome).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from std_daq_service.metrics import request_duration_histogram
from std_daq_service.protocol import DaqError, InvalidRequest, Request, Status, error_result

log = logging.getLogger(__name__)

Handler = Callable[[Request, "RequestContext"], "dict[str, Any] | None"]
Publish = Callable[[Status], None]

PROGRESS_PERIOD_S = 0.5
_REMEMBERED = 10_000


class RequestContext:
    """What a handler may use: the request's id, a cancellation event, and progress reporting."""

    def __init__(self, request_id: str, request: Request, service_name: str, publish: Publish):
        self.request_id = request_id
        self.request = request
        self.service_name = service_name
        self.cancelled = threading.Event()
        self._publish = publish
        self._last_progress = 0.0
        self.log = logging.LoggerAdapter(log, {"service": service_name, "request_id": request_id})

    def status(self, action: str, message: str = "", result: dict[str, Any] | None = None) -> None:
        self._publish(
            Status(
                request_id=self.request_id,
                source=self.service_name,
                action=action,
                message=message,
                request=self.request.model_dump(mode="json"),
                result=result,
            )
        )

    def progress(self, message: str, result: dict[str, Any], force: bool = False) -> None:
        """Report progress; calls closer than 0.5 s apart are dropped unless `force`."""
        now = time.monotonic()
        if force or now - self._last_progress >= PROGRESS_PERIOD_S:
            self._last_progress = now
            self.status("request_progress", message, result)


class Dispatcher:
    """Validate requests, run each in its own thread, and publish its statuses.

    Args:
        handlers: request_type to handler; other valid types are answered with request_fail.
        publish: sends one status (thread-safe; the broker consumer's outbox).
    """

    def __init__(self, service_name: str, handlers: dict[str, Handler], publish: Publish):
        self.service_name = service_name
        self.handlers = handlers
        self.publish = publish
        self.durations = request_duration_histogram(handlers)
        self._lock = threading.Lock()
        self._running: dict[str, tuple[RequestContext, threading.Thread]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._killed_early: OrderedDict[str, None] = OrderedDict()

    def _remember(self, table: OrderedDict, request_id: str) -> None:
        table[request_id] = None
        while len(table) > _REMEMBERED:
            table.popitem(last=False)

    def already_accepted(self, request_id: str) -> bool:
        """True if a request with this id was already submitted here (a redelivery)."""
        with self._lock:
            return request_id in self._seen

    def received(self, request_id: str, request: Request | InvalidRequest) -> Status:
        """The `request_received` status for a request as it arrives (decoded, or why it is not a request)."""
        return Status(request_id=request_id, source=self.service_name, action="request_received",
                      message="request received",
                      request=None if isinstance(request, InvalidRequest) else request.model_dump(mode="json"))

    def submit(self, request_id: str, request: Request | InvalidRequest) -> None:
        """Start a decoded request; one that is invalid or not handled here is answered with request_fail."""
        with self._lock:
            self._remember(self._seen, request_id)
        if isinstance(request, InvalidRequest):
            self._reject(request_id, request)
            return
        handler = self.handlers.get(request.request_type)
        if handler is None:
            self._reject(request_id, InvalidRequest(
                f"{self.service_name} does not handle {request.request_type!r} requests; "
                f"it handles {', '.join(sorted(self.handlers))}"))
            return
        ctx = RequestContext(request_id, request, self.service_name, self.publish)
        with self._lock:
            if request_id in self._killed_early:
                ctx.cancelled.set()
            thread = threading.Thread(target=self._run, args=(handler, ctx), name=f"request-{request_id[:8]}",
                                      daemon=True)
            self._running[request_id] = (ctx, thread)
        thread.start()

    def _reject(self, request_id: str, problem: InvalidRequest) -> None:
        log.warning("request %s rejected: %s", request_id, problem)
        self.publish(Status(request_id=request_id, source=self.service_name, action="request_fail",
                            message=str(problem), result=error_result(problem)))

    def _run(self, handler: Handler, ctx: RequestContext) -> None:
        request_type = ctx.request.request_type
        started = time.monotonic()
        outcome = "fail"
        try:
            if ctx.cancelled.is_set():
                outcome = "killed"
                ctx.status("request_killed", "killed before it started")
                return
            ctx.log.info("%s started", request_type)
            ctx.status("request_start", f"{request_type} started")
            result = handler(ctx.request, ctx)
            if ctx.cancelled.is_set():
                outcome = "killed"
                ctx.log.info("%s killed", request_type)
                ctx.status("request_killed", f"{request_type} killed", result)
            else:
                outcome = "success"
                ctx.log.info("%s succeeded", request_type)
                ctx.status("request_success", f"{request_type} done", result)
        except DaqError as exc:
            ctx.log.warning("%s failed: %s", request_type, exc)
            ctx.status("request_fail", str(exc), error_result(exc))
        except Exception as exc:
            ctx.log.exception("%s failed with an unexpected error", request_type)
            ctx.status("request_fail", f"internal error in {self.service_name}: {type(exc).__name__}: {exc}",
                       error_result(exc))
        finally:
            self.durations.labels(request_type, outcome).observe(time.monotonic() - started)
            with self._lock:
                self._running.pop(ctx.request_id, None)

    def kill(self, request_id: str) -> bool:
        """Ask a running request to stop; a kill that arrives first cancels the request on arrival."""
        with self._lock:
            entry = self._running.get(request_id)
            if entry is None:
                self._remember(self._killed_early, request_id)
                log.info("kill for %s, which is not running here; it is cancelled if it arrives", request_id)
                return False
        log.info("killing request %s", request_id)
        entry[0].cancelled.set()
        return True

    def running(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"request_id": rid, "request_type": ctx.request.request_type}
                    for rid, (ctx, _) in self._running.items()]

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every running request and wait for their final statuses."""
        with self._lock:
            entries = list(self._running.values())
        for ctx, _ in entries:
            ctx.cancelled.set()
        deadline = time.monotonic() + timeout
        for _, thread in entries:
            thread.join(max(0.0, deadline - time.monotonic()))
