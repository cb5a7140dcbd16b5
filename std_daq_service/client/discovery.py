"""Which services are live, and which of them a client's `hosts` and daq_config mean (Redis beacons)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from std_daq_service.config import CONFIG_MODELS, live_services, service_kind
from std_daq_service.protocol import REQUEST_TYPES, InvalidRequest, NoServiceAnswered, UnknownTarget

Hosts = str | Iterable[str] | None


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


def agents_on(host: str | None, live: dict[str, dict]) -> list[str]:
    """Live agents running on `host` (a host name or address), by their beacons and advertised endpoints."""
    found = []
    for name, beacon in live.items():
        endpoints = beacon.get("endpoints") if isinstance(beacon.get("endpoints"), dict) else {}
        hosts = {beacon.get("host")} | {urlsplit(e).hostname for e in endpoints.values()}
        if host in hosts:
            found.append(name)
    return sorted(found)


class Discovery:
    """Live services from their liveness beacons, narrowed by daq_config (`agents`, `daq_nodes`, `writers`)."""

    def __init__(self, redis_client: redis.Redis, daq_config: dict[str, Any]):
        self.redis = redis_client
        self.daq_config = daq_config

    def live_agents(self) -> set[str]:
        return set(live_services(self.redis, "hp_io_agent"))

    def live_builders(self) -> set[str]:
        return set(live_services(self.redis, "event_builder"))

    def event_endpoints(self, builders: Hosts) -> dict[str, str]:
        """The events address of each builder meant by `builders` (SERVICE_NAMEs; None or empty: every live one),
        from its liveness beacon (`events_endpoint`).

        Raises:
            NoServiceAnswered: `builders` empty or None and no event builder is live.
            UnknownTarget: a named builder is not live.
        """
        live = {name: beacon["events_endpoint"] for name, beacon in live_services(self.redis, "event_builder").items()
                if isinstance(beacon.get("events_endpoint"), str)}
        given = [] if not builders else [builders] if isinstance(builders, str) else list(builders)
        if not given and not live:
            raise NoServiceAnswered("no live event builders (std_daq list-hosts)")
        missing = [name for name in given if name not in live]
        if missing:
            raise UnknownTarget(f"no live event builder {', '.join(missing)} (std_daq list-hosts)")
        return {name: live[name] for name in given or sorted(live)}

    def valid_daq_hosts(self) -> set[str]:
        """Live agents, limited to daq_config's `agents` (SERVICE_NAMEs) or to the agents on its `daq_nodes`
        (panoseti's daq_config.json: `ip_addr` of each node) when given."""
        live = live_services(self.redis, "hp_io_agent")
        if self.daq_config.get("agents"):
            return set(live) & set(self.daq_config["agents"])
        nodes = [node.get("ip_addr") for node in self.daq_config.get("daq_nodes", [])]
        if nodes:
            return {name for node in nodes for name in agents_on(node, live)}
        return set(live)

    def resolve(self, hosts: Hosts) -> list[str]:
        """SERVICE_NAMEs meant by `hosts`: names as given, a host address as the agents on it, None or empty
        (as in panoseti) as every valid agent."""
        given = [] if not hosts else [hosts] if isinstance(hosts, str) else list(hosts)
        if not given:
            found = sorted(self.valid_daq_hosts())
            if not found:
                raise NoServiceAnswered("no live agents (std_daq list-hosts)")
            return found
        names = []
        for host in given:
            if service_kind(host) in CONFIG_MODELS:  # a SERVICE_NAME
                names.append(host)
                continue
            on_host = agents_on(host, live_services(self.redis, "hp_io_agent"))  # panoseti names hosts by address
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

    def reflect(self, hosts: Hosts) -> dict[str, Any]:
        """The request types (with their JSON schemas) and the live services that take them."""
        services = live_services(self.redis)
        if hosts is not None:
            wanted = set(self.resolve(hosts))
            services = {name: beacon for name, beacon in services.items() if name in wanted}
        return {
            "request_types": {name: model.model_json_schema() for name, model in REQUEST_TYPES.items()},
            "services": {name: {"kind": service_kind(name), "host": beacon.get("host"),
                                "version": beacon.get("version")} for name, beacon in services.items()},
        }
