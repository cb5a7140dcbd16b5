"""Requests from the client to services: send, wait, and turn the answers into results or typed errors."""

from __future__ import annotations

from collections.abc import Callable

from std_daq_service.broker import RequestCaller
from std_daq_service.lifecycle import Lifecycle
from std_daq_service.protocol import Request, Status

OnStatus = Callable[[Status], None] | None


class Calls(Lifecycle):
    """One broker connection of a client: each call returns every target's result or raises the service's error.

    Args:
        timeout: seconds to wait when a call gives none.
    """

    def __init__(self, broker_url: str | None, timeout: float):
        self.timeout = timeout
        self.caller = RequestCaller(broker_url, "std_daq-client")

    def _open(self) -> None:
        self.caller.start()

    def _release(self) -> None:
        self.caller.close()

    def call(self, targets: list[str], request: Request, timeout: float | None = None,
             on_status: OnStatus = None) -> dict[str, dict]:
        """Send `request` to every target and wait; each one's result.

        Raises:
            DaqError: the call's error as its own class (`Busy`, `UnknownTarget`, `RequestTimeout`...).
        """
        return self.caller.call(targets, request, timeout or self.timeout, on_status).results()

    def publish(self, target: str, request: Request) -> str:
        """Send `request` without waiting; its request_id."""
        return self.caller.publish(target, request)

    def kill(self, target: str, request_id: str) -> None:
        self.caller.kill(target, request_id)

    def wait(self, request_id: str, target: str, timeout: float | None = None, on_status: OnStatus = None) -> dict:
        """The result of a request sent with `publish`, or its error raised."""
        return self.caller.wait(request_id, [target], timeout or self.timeout, on_status).results()[target]
