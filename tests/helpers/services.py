"""Services started for a test: an agent simulating a run, a writer recording agents, the REST proxy."""

from __future__ import annotations

import socket
from pathlib import Path

import requests
from conftest import ServiceProcess, wait_until

from std_daq_service.broker import RequestCaller
from std_daq_service.protocol import InitSimRequest, StreamRequest


def free_port() -> int:
    """A TCP port on loopback that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_agent(name: str, redis_url: str, redis_client, directory: Path, config: dict | None = None,
                **sim) -> tuple[ServiceProcess, str]:
    """Start an agent (extra `config` keys), wait for its beacon, start a simulated run with `sim`; return it and
    its data endpoint."""
    config = {"data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*",
              "sim_data_dir": str(directory / "sim"), "min_update_interval_seconds": 0.05, **(config or {})}
    agent = ServiceProcess("hp_io_agent", name, config, redis_url, directory)
    agent.wait_ready(redis_client)
    with RequestCaller(None, "test-writer-setup") as caller:
        endpoint = caller.call(name, StreamRequest(), 15).finals[name].result["endpoints"]["data"]
        final = caller.call(name, InitSimRequest(**sim), 15).finals[name]
        assert final.action == "request_success", final.message
    return agent, endpoint


def start_writer(name: str, redis_url: str, redis_client, directory: Path, agents: list[tuple[str, str]],
                 preexec_fn=None, **config) -> ServiceProcess:
    """Start a writer recording `agents` ((name, data endpoint) pairs) into `directory / "out"`."""
    config = {"agents": [{"name": n, "data": e} for n, e in agents], "output_root": str(directory / "out"),
              "ring_buffer_seconds": 6, **config}
    writer = ServiceProcess("writer", name, config, redis_url, directory, preexec_fn=preexec_fn)
    writer.wait_ready(redis_client)
    return writer


def start_rest(name: str, redis_url: str, client, directory: Path, **config) -> tuple[ServiceProcess, str]:
    """Start the REST proxy on a free loopback port; return it and its base URL once it answers."""
    port = free_port()
    process = ServiceProcess("rest", name, {"host": "127.0.0.1", "port": port, **config}, redis_url, directory)
    process.wait_ready(client)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(url), 10, message="REST proxy answering")
    return process, url


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
