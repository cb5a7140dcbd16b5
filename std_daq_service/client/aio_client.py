"""`AioDaqDataClient`: the asyncio face of `DaqDataClient` (same methods and signatures, awaited)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

from std_daq_service.client.daq_client import DaqDataClient, OnStatus
from std_daq_service.client.discovery import Hosts
from std_daq_service.protocol import Request

_END = object()


class AsyncStream:
    """What `AioDaqDataClient.stream_images` and `stream_events` return: an async iterator of dicts.

    Awaiting it gives itself, since panoseti_grpc's README shows both `client.stream_images(...)` and
    `await client.stream_images(...)` before the `async for`.
    """

    def __init__(self, items: AsyncIterator[dict[str, Any]]):
        self._items = items

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._items

    def __await__(self) -> Generator[Any, None, AsyncStream]:
        return self._itself().__await__()

    async def _itself(self) -> AsyncStream:
        return self


class AioDaqDataClient:
    """Async context manager; every method of `DaqDataClient` (`CLIENT_METHODS`) is a coroutine here.

    Requests run one at a time in a worker thread on one `DaqDataClient` (the broker connection is
    blocking); each `stream_images` or `stream_events` iterator reads in a thread of its own, with its own
    client, so streams never wait for requests or for each other. Setting `stop_event` (as in panoseti_grpc)
    ends every stream of this client; `options` are `DaqDataClient`'s keywords.
    """

    def __init__(self, daq_config: str | Path | dict | None = None, network_config: str | Path | dict | None = None,
                 *, stop_event: asyncio.Event | None = None, **options: Any):
        self._args = (daq_config, network_config)
        self._options = options
        self._stop_event = stop_event
        self._client: DaqDataClient | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AioDaqDataClient:
        self._client = await asyncio.to_thread(lambda: DaqDataClient(*self._args, **self._options).__enter__())
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    async def _run(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(method, *args, **kwargs)

    async def get_valid_daq_hosts(self) -> set[str]:
        return await self._run(self._client.get_valid_daq_hosts)

    async def ping(self, host: str, timeout: float = 5.0) -> bool:
        return await self._run(self._client.ping, host, timeout)

    async def reflect_services(self, hosts: Hosts = None) -> dict[str, Any]:
        return await self._run(self._client.reflect_services, hosts)

    async def default_writer(self) -> str:
        return await self._run(self._client.default_writer)

    async def init_hp_io(self, hosts: Hosts, hp_io_cfg: str | Path | dict, timeout: float | None = None) -> bool:
        return await self._run(self._client.init_hp_io, hosts, hp_io_cfg, timeout)

    async def init_sim(self, hosts: Hosts = None, hp_io_cfg: str | Path | dict | None = None,
                       timeout: float | None = None, **sim: Any) -> bool:
        return await self._run(self._client.init_sim, hosts, hp_io_cfg, timeout, **sim)

    async def stop_hp_io(self, hosts: Hosts = None, timeout: float | None = None) -> dict:
        return await self._run(self._client.stop_hp_io, hosts, timeout)

    async def status(self, hosts: Hosts = None, timeout: float | None = None) -> dict:
        return await self._run(self._client.status, hosts, timeout)

    async def write(self, writer: str | None = None, timeout: float | None = None, on_status: OnStatus = None,
                    **fields: Any) -> dict:
        """As `DaqDataClient.write`; `on_status` is called from the worker thread."""
        return await self._run(self._client.write, writer, timeout, on_status, **fields)

    async def write_async(self, writer: str | None = None, **fields: Any) -> str:
        return await self._run(self._client.write_async, writer, **fields)

    async def kill(self, request_id: str, service: str | None = None) -> None:
        await self._run(self._client.kill, request_id, service)

    async def wait(self, request_id: str, service: str, timeout: float | None = None,
                   on_status: OnStatus = None) -> dict:
        """As `DaqDataClient.wait`; `on_status` is called from the worker thread."""
        return await self._run(self._client.wait, request_id, service, timeout, on_status)

    async def request(self, targets: str | list[str], request: Request, timeout: float | None = None,
                      on_status: OnStatus = None) -> dict:
        return await self._run(self._client.request, targets, request, timeout, on_status)

    def stream_images(self, hosts: Hosts, stream_movie_data: bool = True, stream_pulse_height_data: bool = True,
                      update_interval_seconds: float = 1.0, module_ids: Iterable[int] = (),
                      wait_for_ready: bool = False, parse_pano_images: bool = True,
                      stop_event: threading.Event | None = None) -> AsyncStream:
        """Async iterator over PanoImage dicts (see `DaqDataClient.stream_images`), awaitable too; `stop_event`
        is set when it ends. It ends when the client's `stop_event` is set."""
        return AsyncStream(self._stream(lambda client, stop: client.stream_images(
            hosts, stream_movie_data, stream_pulse_height_data, update_interval_seconds, module_ids, wait_for_ready,
            parse_pano_images, stop), stop_event))

    def stream_events(self, builders: Hosts = None, stop_event: threading.Event | None = None) -> AsyncStream:
        """Async iterator over coincidence event dicts (see `DaqDataClient.stream_events`), awaitable too;
        `stop_event` is set when it ends. It ends when the client's `stop_event` is set."""
        return AsyncStream(self._stream(lambda client, stop: client.stream_events(builders, stop), stop_event))

    async def _stream(self, items: Callable[[DaqDataClient, threading.Event], Iterator[dict[str, Any]]],
                      stop_event: threading.Event | None) -> AsyncIterator[dict[str, Any]]:
        """Run `items` on a client of its own in a reader thread; hand what it yields to the loop."""
        loop = asyncio.get_running_loop()
        queued: asyncio.Queue = asyncio.Queue(maxsize=1000)
        stop = stop_event if stop_event is not None else threading.Event()

        def put(item: Any) -> None:
            asyncio.run_coroutine_threadsafe(queued.put(item), loop).result()

        def read() -> None:
            try:
                with DaqDataClient(*self._args, **self._options) as client:
                    for item in items(client, stop):
                        put(item)
                    put(_END)
            except Exception as exc:  # handed to the awaiting side, raised there
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                    put(exc)

        reader = threading.Thread(target=read, name="aio-stream", daemon=True)
        reader.start()
        client_stop = asyncio.ensure_future(self._stop_event.wait()) if self._stop_event is not None else None
        if client_stop is not None:
            client_stop.add_done_callback(lambda _: stop.set())  # the reader ends, then _END comes
        try:
            while True:
                item = await queued.get()
                if item is _END or (self._stop_event is not None and self._stop_event.is_set()):
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()
            if client_stop is not None:
                client_stop.cancel()
            while not queued.empty():
                queued.get_nowait()
            await asyncio.to_thread(reader.join, 5)
