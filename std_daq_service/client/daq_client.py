"""`DaqDataClient`: panoseti_grpc's client API over this system's broker, Redis and ZMQ streams."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq

from std_daq_service.broker import RequestCaller
from std_daq_service.client.frame_stream import Subscription, Throttle
from std_daq_service.client.pano_image import pano_images
from std_daq_service.config import CONFIG_MODELS, connect_redis, live_services, service_kind
from std_daq_service.protocol import (
    REQUEST_TYPES,
    ControlHeader,
    DaqError,
    InitHpIoRequest,
    InitSimRequest,
    InvalidMessage,
    InvalidRequest,
    NoServiceAnswered,
    RequestBase,
    StatusRequest,
    StopHpIoRequest,
    StreamRequest,
    UnknownTarget,
    WriteRequest,
    decode_stream_message,
)

log = logging.getLogger(__name__)

Hosts = str | Iterable[str] | None
_LIVENESS_CHECK_S = 2.0


def _agents_on(host: str | None, live: dict[str, dict]) -> list[str]:
    """Live agents running on `host` (a host name or address), by their beacons and advertised endpoints."""
    found = []
    for name, beacon in live.items():
        endpoints = beacon.get("endpoints") if isinstance(beacon.get("endpoints"), dict) else {}
        hosts = {beacon.get("host")} | {urlsplit(e).hostname for e in endpoints.values()}
        if host in hosts:
            found.append(name)
    return sorted(found)


def load_json_arg(value: str | Path | dict | None) -> dict:
    """A dict, or the JSON object in a file (panoseti's daq_config.json, hp_io_config.json)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    try:
        loaded = json.loads(Path(value).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{value}: cannot read a JSON object: {exc}") from exc
    if not isinstance(loaded, dict):
        raise InvalidRequest(f"{value}: must hold a JSON object")
    return loaded


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

    # discovery

    def get_valid_daq_hosts(self) -> set[str]:
        """Agents whose liveness beacon is alive, limited to daq_config's `agents` (SERVICE_NAMEs) or to the
        agents on its `daq_nodes` (panoseti's daq_config.json: `ip_addr` of each node) when given."""
        live = live_services(self.redis, "hp_io_agent")
        if self.daq_config.get("agents"):
            return set(live) & set(self.daq_config["agents"])
        nodes = [node.get("ip_addr") for node in self.daq_config.get("daq_nodes", [])]
        if nodes:
            return {name for node in nodes for name in _agents_on(node, live)}
        return set(live)

    def ping(self, host: str, timeout: float = 5.0) -> bool:
        """True if `host` answers a status request within `timeout` seconds."""
        try:
            self._call([host], StatusRequest(), timeout)
        except DaqError:
            return False
        return True

    def reflect_services(self, hosts: Hosts = None) -> dict[str, Any]:
        """The request types (with their JSON schemas) and the live services that take them."""
        services = live_services(self.redis)
        if hosts is not None:
            wanted = set(self._hosts(hosts))
            services = {name: beacon for name, beacon in services.items() if name in wanted}
        return {
            "request_types": {name: model.model_json_schema() for name, model in REQUEST_TYPES.items()},
            "services": {name: {"kind": service_kind(name), "host": beacon.get("host"),
                                "version": beacon.get("version")} for name, beacon in services.items()},
        }

    # agents

    def init_hp_io(self, hosts: Hosts, hp_io_cfg: str | Path | dict, timeout: float | None = None) -> dict:
        """Start tracking a data dir on each host (panoseti's hp_io_config.json fields)."""
        request = InitHpIoRequest.model_validate(load_json_arg(hp_io_cfg))
        return self._call(self._hosts(hosts), request, timeout)

    def init_sim(self, hosts: Hosts = None, timeout: float | None = None, **sim: Any) -> dict:
        """Replay an archived run as a live one on each host (`InitSimRequest` fields as keywords)."""
        return self._call(self._hosts(hosts), InitSimRequest(**sim), timeout)

    def stop_hp_io(self, hosts: Hosts = None, timeout: float | None = None) -> dict:
        return self._call(self._hosts(hosts), StopHpIoRequest(), timeout)

    def status(self, hosts: Hosts = None, timeout: float | None = None) -> dict:
        """The `status` result of each service named (agents or writers)."""
        return self._call(self._hosts(hosts), StatusRequest(), timeout)

    # writers

    def write(self, writer: str | None = None, timeout: float | None = None, on_status=None, **fields: Any) -> dict:
        """Record a file and wait for it; returns the writer's result (`output_file`, frames, ...)."""
        writer = writer or self.default_writer()
        return self._call([writer], WriteRequest(**fields), timeout, on_status)[writer]

    def write_async(self, writer: str | None = None, **fields: Any) -> str:
        """Start a write; returns its request_id (follow it with `wait` or the REST proxy)."""
        return self.caller.publish(writer or self.default_writer(), WriteRequest(**fields))

    def kill(self, request_id: str, service: str | None = None) -> None:
        """Stop a running request (a write, by default on the configured writer)."""
        self.caller.kill(service or self.default_writer(), request_id)

    def wait(self, request_id: str, service: str, timeout: float | None = None, on_status=None) -> dict:
        """Wait for the final status of a request sent with `write_async`; its result, or raise."""
        return self.caller.wait(request_id, [service], timeout or self.timeout, on_status).results()[service]

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
        subscriptions = self._subscribe(self._hosts(hosts), stream_movie_data, stream_pulse_height_data,
                                        update_interval_seconds, list(module_ids), wait_for_ready)
        context = zmq.Context.instance()
        sockets: dict[zmq.Socket, str] = {}
        poller = zmq.Poller()
        try:
            for sub in subscriptions:
                sock = context.socket(zmq.SUB)
                sock.setsockopt(zmq.RCVHWM, 0 if update_interval_seconds <= 0 else 1000)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(sub.endpoint)
                for topic in sub.topics:
                    sock.setsockopt_string(zmq.SUBSCRIBE, topic)
                sockets[sock] = sub.host
                poller.register(sock, zmq.POLLIN)
            throttle = Throttle(update_interval_seconds)
            last_check = time.monotonic()
            while stop_event is None or not stop_event.is_set():
                events = dict(poller.poll(100))
                released = []
                for sock, host in sockets.items():  # one message per host per round: fair merge
                    if sock in events:
                        released += self._receive(sock, host, throttle)
                released += throttle.due()
                for host, batch in released:
                    yield from pano_images(batch, host, parse_pano_images)
                if time.monotonic() - last_check > _LIVENESS_CHECK_S:
                    last_check = time.monotonic()
                    self._check_hosts(set(sockets.values()))
        finally:
            for sock in sockets:
                sock.close(linger=0)

    def _receive(self, sock: zmq.Socket, host: str, throttle: Throttle) -> list:
        try:
            message = decode_stream_message(sock.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return []
        except InvalidMessage as exc:
            log.warning("%s: bad stream message skipped: %s", host, exc)
            return []
        if isinstance(message, ControlHeader):
            log.info("%s: %s %s", host, message.event, message.message)
            if message.event == "stop":
                self.failed_hosts[host] = f"stopped: {message.message}"
            return []
        return throttle.offer(host, message)

    def _check_hosts(self, hosts: set[str]) -> None:
        live = set(live_services(self.redis, "hp_io_agent"))
        for host in sorted(hosts - live):
            if host not in self.failed_hosts:
                self.failed_hosts[host] = "liveness beacon expired"
                log.warning("%s stopped answering (liveness beacon expired); streaming the others", host)

    def _subscribe(self, hosts: list[str], movie: bool, pulse_height: bool, interval: float,
                   module_ids: list[int], wait_for_ready: bool) -> list[Subscription]:
        request = StreamRequest(stream_movie_data=movie, stream_pulse_height_data=pulse_height,
                                update_interval_seconds=interval if interval > 0 else 1.0,  # 0: every frame
                                module_ids=module_ids)
        deadline = time.monotonic() + (self.timeout if wait_for_ready else 0)
        while True:
            try:
                answers = self._call(hosts, request, None)
                statuses = self._call(hosts, StatusRequest(), None)
                break
            except DaqError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
        return [Subscription.from_answer(host, answers[host], interval,
                                         statuses[host].get("update_interval_seconds")) for host in hosts]

    # plumbing

    def _hosts(self, hosts: Hosts) -> list[str]:
        if hosts is None:
            found = sorted(self.get_valid_daq_hosts())
            if not found:
                raise NoServiceAnswered("no live agents (std_daq list-hosts)")
            return found
        names = []
        for host in [hosts] if isinstance(hosts, str) else list(hosts):
            if service_kind(host) in CONFIG_MODELS:  # a SERVICE_NAME
                names.append(host)
                continue
            on_host = _agents_on(host, live_services(self.redis, "hp_io_agent"))  # panoseti names hosts by address
            if not on_host:
                raise UnknownTarget(f"no live agent on host {host!r} (std_daq list-hosts)")
            names += on_host
        return names

    def default_writer(self) -> str:
        """The writer named in daq_config's `writers`, or the only live one."""
        writers = self.daq_config.get("writers") or sorted(live_services(self.redis, "writer"))
        if len(writers) != 1:
            raise InvalidRequest(f"name the writer: {len(writers)} writers are live ({', '.join(writers)})")
        return writers[0]

    def request(self, targets: str | list[str], request: RequestBase, timeout: float | None = None,
                on_status=None) -> dict:
        """Send any request to one or more services; each one's result, or raise the first failure."""
        return self._call([targets] if isinstance(targets, str) else targets, request, timeout, on_status)

    def _call(self, targets: list[str], request: RequestBase, timeout: float | None, on_status=None) -> dict:
        return self.caller.call(targets, request, timeout or self.timeout, on_status).results()
