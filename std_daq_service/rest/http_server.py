"""The REST proxy's HTTP server: waitress serving the Flask app in a background thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from waitress import create_server

from std_daq_service.lifecycle import BackgroundThread, Lifecycle

_CLOSE_WAIT_S = 10.0
"""Longest wait at close for the server loop, which ends only once its open connections are done."""


class HttpServer(Lifecycle):
    """Serve a WSGI app on `host:port` with `threads` workers; `start()` binds, `url` is where it listens."""

    def __init__(self, app: Callable[..., Any], host: str, port: int, threads: int = 16):
        self.app = app
        self.host = host
        self.port = port
        self.threads = threads
        self.url: str | None = None
        self._loop: BackgroundThread | None = None

    def _open(self) -> None:
        server = create_server(self.app, host=self.host, port=self.port, threads=self.threads)
        self.url = f"http://{self.host}:{server.effective_port}"
        self._loop = BackgroundThread("http", lambda stop: server.run(), wake=server.close,
                                      join_timeout_s=_CLOSE_WAIT_S).start()

    def _release(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
