"""`DaqDataClient`: panoseti_grpc's client API over this system's broker, Redis and ZMQ streams."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pika.exceptions

from std_daq_service.broker import RequestCaller
from std_daq_service.client.discovery import Discovery, Hosts, load_json_arg
from std_daq_service.client.event_stream import stream_events
from std_daq_service.client.frame_stream import Subscription
from std_daq_service.client.image_stream import stream_images
from std_daq_service.config import connect_redis
from std_daq_service.protocol import (
    DaqError,
    InvalidRequest,
    Request,
    Status,
    StatusRequest,
    StopHpIoRequest,
    StreamRequest,
    WriteRequest,
    decode_request,
)

log = logging.getLogger(__name__)

CLIENT_METHODS = ("get_valid_daq_hosts", "ping", "reflect_services", "init_hp_io", "init_sim", "stop_hp_io",
                  "status", "write", "write_async", "kill", "wait", "stream_images", "stream_events", "default_writer",
                  "request")
"""The public methods of `DaqDataClient`; `AioDaqDataClient` has each with the same signature, awaited (tested)."""

OnStatus = Callable[[Status], None] | None


class DaqDataClient:
    """Talk to agents and writers: the methods and meanings of panoseti_grpc's `DaqDataClient`.

    Hosts are agent SERVICE_NAMEs (`lick.daq1.hp_io_agent`); a method given `hosts=None` uses every live
    agent. Connection settings come from the arguments, else `BROKER_URL` / `REDIS_URL`, else the local
    defaults. `daq_config` (panoseti's daq_config.json, or a dict) may name the agents under `"agents"`.

    Use as a context manager; one client per thread.
    """

    def __init__(self, daq_config: str | Path | dict | None = None, network_config: str | Path | dict | None = None,
                 *, broker_url: str | None = None, redis_url: str | None = None, timeout: float = 30.0):
        self.daq_config = load_json_arg(daq_config)
        network = load_json_arg(network_config)
        self.broker_url = broker_url or network.get("broker_url")
        self.redis = connect_redis(redis_url or network.get("redis_url"))
        self.timeout = timeout
        self.discovery = Discovery(self.redis, self.daq_config)
        self.caller = RequestCaller(self.broker_url, "std_daq-client")
        self.failed_hosts: dict[str, str] = {}

    def __enter__(self) -> DaqDataClient:
        self.caller.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.caller.close()
        self.redis.close()

    def _call(self, targets: list[str], request: Request, timeout: float | None = None,
              on_status: OnStatus = None) -> dict[str, dict]:
        """Send `request` to every target and wait; each one's result, or the call's `DaqError` raised."""
        return self.caller.call(targets, request, timeout or self.timeout, on_status).results()

    # discovery

    def get_valid_daq_hosts(self) -> set[str]:
        """Agents whose liveness beacon is alive, limited by daq_config's `agents` or `daq_nodes`."""
        return self.discovery.valid_daq_hosts()

    def ping(self, host: str, timeout: float = 5.0) -> bool:
        """True if `host` (a SERVICE_NAME, or a host name or address standing for the agents on it) answers a
        status request within `timeout` seconds."""
        try:
            self._call(self.discovery.resolve(host), StatusRequest(), timeout)
        except DaqError:
            return False
        return True

    def reflect_services(self, hosts: Hosts = None) -> dict[str, Any]:
        """The request types (with their JSON schemas) and the live services that take them."""
        return self.discovery.reflect(hosts)

    def default_writer(self) -> str:
        """The writer named in daq_config's `writers`, or the only live one."""
        return self.discovery.default_writer()

    # agents

    def init_hp_io(self, hosts: Hosts, hp_io_cfg: str | Path | dict, timeout: float | None = None) -> bool:
        """Start tracking a data dir on each host (panoseti's hp_io_config.json, a path or a dict).

        Returns:
            True if every host succeeded; each failure is logged with its reason, as in panoseti_grpc.

        Raises:
            InvalidRequest: `hp_io_cfg` is unreadable or a field is wrong (nothing was sent).
            UnknownTarget: no live agent on a host address, or a SERVICE_NAME that never ran.
            NoServiceAnswered: `hosts` empty or None and no agent is live.
        """
        request = decode_request({**load_json_arg(hp_io_cfg), "request_type": "init_hp_io"})
        return self._succeeded_everywhere(hosts, request, timeout)

    def init_sim(self, hosts: Hosts = None, hp_io_cfg: str | Path | dict | None = None,
                 timeout: float | None = None, **sim: Any) -> bool:
        """Replay an archived run as a live one on each host.

        `hp_io_cfg` is panoseti's simulate config (`simulate_daq` must be true; its `module_ids`, `force` and
        `update_interval_seconds` are used); `sim` takes `InitSimRequest` fields as keywords. Returns and
        raises as `init_hp_io`.
        """
        fields: dict[str, Any] = {}
        if hp_io_cfg is not None:
            config = decode_request({**load_json_arg(hp_io_cfg), "request_type": "init_hp_io"})
            if not config.simulate_daq:
                raise InvalidRequest("init_sim: hp_io_cfg must have simulate_daq: true (or call init_hp_io)")
            fields = config.model_dump(include={"module_ids", "force", "update_interval_seconds"})
        request = decode_request({**fields, **sim, "request_type": "init_sim"})
        return self._succeeded_everywhere(hosts, request, timeout)

    def _succeeded_everywhere(self, hosts: Hosts, request: Request, timeout: float | None) -> bool:
        """Send `request` to every host and wait; True if all succeeded, each outcome logged."""
        targets = self.discovery.resolve(hosts)
        outcome = self.caller.call(targets, request, timeout or self.timeout)
        for target in targets:
            error = outcome.error_of(target)
            if error is None:
                log.info("%s on %s succeeded: %s", request.request_type, target, outcome.finals[target].result)
            else:
                log.error("%s failed on %s", request.request_type, error)
        return outcome.ok

    def stop_hp_io(self, hosts: Hosts = None, timeout: float | None = None) -> dict:
        return self._call(self.discovery.resolve(hosts), StopHpIoRequest(), timeout)

    def status(self, hosts: Hosts = None, timeout: float | None = None) -> dict:
        """The `status` result of each service named (agents or writers)."""
        return self._call(self.discovery.resolve(hosts), StatusRequest(), timeout)

    # writers

    def write(self, writer: str | None = None, timeout: float | None = None, on_status: OnStatus = None,
              **fields: Any) -> dict:
        """Record a file and wait for it; returns the writer's result (`output_file`, frames, ...)."""
        writer = writer or self.default_writer()
        return self._call([writer], WriteRequest(**fields), timeout, on_status)[writer]

    def write_async(self, writer: str | None = None, **fields: Any) -> str:
        """Start a write; returns its request_id (follow it with `wait` or the REST proxy)."""
        return self.caller.publish(writer or self.default_writer(), WriteRequest(**fields))

    def kill(self, request_id: str, service: str | None = None) -> None:
        """Stop a running request (a write, by default on the configured writer)."""
        self.caller.kill(service or self.default_writer(), request_id)

    def wait(self, request_id: str, service: str, timeout: float | None = None, on_status: OnStatus = None) -> dict:
        """Wait for the final status of a request sent with `write_async`; its result, or raise."""
        return self.caller.wait(request_id, [service], timeout or self.timeout, on_status).results()[service]

    def request(self, targets: str | list[str], request: Request, timeout: float | None = None,
                on_status: OnStatus = None) -> dict:
        """Send any request to one or more services; each one's result, or raise the call's error."""
        return self._call([targets] if isinstance(targets, str) else targets, request, timeout, on_status)

    # streams

    def stream_images(self, hosts: Hosts, stream_movie_data: bool = True, stream_pulse_height_data: bool = True,
                      update_interval_seconds: float = 1.0, module_ids: Iterable[int] = (),
                      wait_for_ready: bool = False, parse_pano_images: bool = True,
                      stop_event: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """Yield frames of several agents, merged fairly, as PanoImage dicts.

        `update_interval_seconds` > 0: the latest frame of every module and data product at that rate
        (served from the agents' preview sockets when they are fast enough); 0: every frame. A host that
        stops (its beacon expires, or it says `stop`) is logged and listed in `failed_hosts`; the others go on.
        Setting `stop_event` ends the iteration (from another thread).
        """
        subscriptions = self._subscribe(self.discovery.resolve(hosts), stream_movie_data, stream_pulse_height_data,
                                        update_interval_seconds, list(module_ids), wait_for_ready)
        yield from stream_images(subscriptions, update_interval_seconds, parse_pano_images, self.failed_hosts,
                                 self.discovery.live_agents, stop_event, self._answer_heartbeats)

    def stream_events(self, builders: Hosts = None,
                      stop_event: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """Yield the coincidence events of event builders (SERVICE_NAMEs; None or empty: every live one).

        Each event is a dict of the `EventHeader` fields (`event_id`, `time_ns`, `window_ns`, `multiplicity`,
        `modules`, `domes`, `members`, `source`...), each member with its image as `image_array` (int16). Events
        published before the subscription took hold are not seen. A builder whose beacon expires is logged and
        listed in `failed_hosts`; the others go on. Setting `stop_event` ends the iteration (from another thread).

        Raises:
            UnknownTarget: a named builder is not live.
            NoServiceAnswered: none named and no event builder is live.
        """
        endpoints = self.discovery.event_endpoints(builders)
        yield from stream_events(endpoints, self.failed_hosts, self.discovery.live_builders, stop_event,
                                 self._answer_heartbeats)

    def _answer_heartbeats(self) -> None:
        """Keep the broker connection alive while a stream runs (it sends no requests, but the broker
        drops a connection that misses its heartbeats); a lost one is reopened by the next request."""
        try:
            self.caller.pump(0)
        except pika.exceptions.AMQPError as exc:
            log.info("broker connection lost while streaming (%r); the next request reconnects", exc)
            self.caller.close()

    def _subscribe(self, hosts: list[str], movie: bool, pulse_height: bool, interval: float,
                   module_ids: list[int], wait_for_ready: bool) -> list[Subscription]:
        request = StreamRequest(stream_movie_data=movie, stream_pulse_height_data=pulse_height,
                                update_interval_seconds=interval, module_ids=module_ids)
        deadline = time.monotonic() + (self.timeout if wait_for_ready else 0)
        while True:
            try:
                answers = self._call(hosts, request)
                statuses = self._call(hosts, StatusRequest())
                break
            except DaqError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
        return [Subscription.from_answer(host, answers[host], interval,
                                         statuses[host].get("update_interval_seconds")) for host in hosts]
