"""Fixtures for real Redis, RabbitMQ, sample data, unique service names, leak checks and loopback-only addresses."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pika
import pika.exceptions
import pytest
import redis
from helpers.child_processes import child_processes, kill
from helpers.loopback import LoopbackGuard, config_violations, url_violation

import std_daq_service
from std_daq_service.broker import RequestCaller, connection_parameters
from std_daq_service.broker import broker_url as default_broker_url
from std_daq_service.config import connect_redis

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RUN = (
    Path(std_daq_service.__file__).parent
    / "sample_data/lick_2024-07-25/obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"
)
SAMPLE_IMG16 = SAMPLE_RUN / "start_2024-07-25T04_34_46Z.dp_img16.bpp_2.module_1.seqno_0.debug_TRUNCATED.pff"
SAMPLE_PH256_M1 = SAMPLE_RUN / "start_2024-07-25T04_34_46Z.dp_ph256.bpp_2.module_1.seqno_0.debug_TRUNCATED.pff"
SAMPLE_PH256_M3 = SAMPLE_RUN / "start_2024-07-25T04_34_46Z.dp_ph256.bpp_2.module_3.seqno_0.debug_TRUNCATED.pff"
PYPFF_PH256 = REPO / "tests/data/pypff_example/start_2025-08-02T05:31:36Z.dp_ph256.bpp_2.module_254.seqno_0.pff"
SHARED_DATA = Path(os.environ.get("PANOSETI_DATA", REPO.parent / "shared" / "data"))
LEAK_GRACE_S = 5
"""How long a test's threads and child processes may take to end after its teardown."""

pytest_plugins = ["pytester"]


def wait_until(predicate, timeout: float, interval: float = 0.02, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert url_violation(url) is None, url_violation(url)
    try:
        connect_redis(url).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis not reachable at {url} ({exc}); run ./setup_dev_env.sh")
    return url


@pytest.fixture(scope="session")
def broker_url() -> str:
    url = default_broker_url()
    assert url_violation(url) is None, url_violation(url)
    try:
        pika.BlockingConnection(connection_parameters(url, "std_daq:test-check")).close()
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"RabbitMQ not reachable at {url} ({exc!r}); run ./setup_dev_env.sh")
    return url


@pytest.fixture
def redis_client(redis_url):
    client = connect_redis(redis_url)
    yield client
    client.close()


@pytest.fixture
def service_name(request, redis_url, broker_url):
    """A unique SERVICE_NAME of the requested kind; its Redis keys and queues are removed afterwards."""
    kind = getattr(request, "param", "hp_io_agent")
    name = f"test.{uuid.uuid4().hex[:8]}.{kind}"
    yield name
    cleanup_services(redis_url, broker_url, [name])


@pytest.fixture
def new_service_name(redis_url, broker_url):
    """Factory of unique SERVICE_NAMEs (`new_service_name("writer")`), all cleaned up afterwards."""
    names = []

    def make(kind: str) -> str:
        names.append(f"test.{uuid.uuid4().hex[:8]}.{kind}")
        return names[-1]

    yield make
    cleanup_services(redis_url, broker_url, names)


class ServiceStack:
    """The services of a test: unique names, stopped in reverse order, their Redis keys and queues removed.

    `add(process)` expects the process to exit with code 0 when stopped; `clean_exit=False` for one a test kills.
    """

    def __init__(self, redis_url: str, broker_url: str):
        self.redis_url = redis_url
        self.broker_url = broker_url
        self.redis = connect_redis(redis_url)
        self.names: list[str] = []
        self._processes: list[tuple[ServiceProcess, bool]] = []

    def name(self, kind: str) -> str:
        self.names.append(f"test.{uuid.uuid4().hex[:8]}.{kind}")
        return self.names[-1]

    def add(self, process: ServiceProcess, clean_exit: bool = True) -> ServiceProcess:
        self._processes.append((process, clean_exit))
        return process

    def close(self) -> None:
        failed = []
        for process, clean_exit in reversed(self._processes):
            if process.stop() != 0 and clean_exit:
                failed.append(process.log())
        self.redis.close()
        cleanup_services(self.redis_url, self.broker_url, self.names)
        assert not failed, "\n".join(failed)


@contextmanager
def service_stack(redis_url: str, broker_url: str):
    stack = ServiceStack(redis_url, broker_url)
    try:
        yield stack
    finally:
        stack.close()


def cleanup_services(redis_url: str, broker_url: str, names: list[str]) -> None:
    client = connect_redis(redis_url)
    for name in names:
        client.delete(f"config.{name}", f"status.{name}", f"checkpoint.{name}")
    client.close()
    delete_queues(broker_url, [q for name in names for q in (f"{name}.request", f"{name}.kill")])


def delete_queues(url: str, queues: list[str]) -> None:
    connection = pika.BlockingConnection(connection_parameters(url, "std_daq:test-cleanup"))
    channel = connection.channel()
    for queue in queues:
        channel.queue_delete(queue)
    connection.close()


def close_broker_connections(name_prefix: str) -> int:
    """Close, from the broker's side, every connection whose client name starts with `name_prefix`.

    Uses `rabbitmqctl` where the broker runs on this machine, else the management API at
    `RABBITMQ_API_URL` (a broker on another machine, such as a container's).
    """
    api = os.environ.get("RABBITMQ_API_URL")
    if api or shutil.which("rabbitmqctl") is None:
        return _close_through_management_api(api or "http://127.0.0.1:15672", name_prefix)
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True, text=True, check=True,
    ).stdout
    closed = 0
    for line in out.splitlines()[1:]:
        pid, _, properties = line.partition("\t")
        if f'{{"connection_name","{name_prefix}' in properties:
            subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "closed by test"], check=True,
                           capture_output=True)
            closed += 1
    return closed


def _close_through_management_api(api: str, name_prefix: str) -> int:
    import requests

    auth = ("guest", "guest")
    deadline = time.monotonic() + 15  # the API lists a new connection only after its next stats round (~5 s)
    while True:
        matching = [c["name"] for c in requests.get(f"{api}/api/connections", auth=auth, timeout=10).json()
                    if c.get("client_properties", {}).get("connection_name", "").startswith(name_prefix)]
        if matching or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for name in matching:
        requests.delete(f"{api}/api/connections/{requests.utils.quote(name, safe='')}", auth=auth, timeout=10,
                        headers={"X-Reason": "closed by test"}).raise_for_status()
    return len(matching)


@pytest.fixture(autouse=True)
def no_leaked_threads_or_processes():
    """Fail a test that leaves threads or child processes behind (after its fixtures' teardown, with a grace).

    Leaked child processes are killed, so they cannot disturb the tests after it.
    """
    threads, children = set(threading.enumerate()), set(child_processes())
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    while True:
        leaked_threads = [t.name for t in threading.enumerate() if t not in threads and t.is_alive()]
        leaked_children = {pid: name for pid, name in child_processes().items() if pid not in children}
        if not (leaked_threads or leaked_children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    kill(list(leaked_children))
    assert not (leaked_threads or leaked_children), (
        f"test left behind threads {leaked_threads} and child processes {leaked_children}")


@pytest.fixture(scope="session")
def loopback_guard() -> LoopbackGuard:
    """The audit hook that refuses non-loopback addresses, installed once per session."""
    return LoopbackGuard().install()


@pytest.fixture(autouse=True)
def only_loopback_addresses(loopback_guard):
    """Fail a test (or its fixtures) that tried to connect, bind or send to a non-loopback address."""
    yield
    violations = loopback_guard.take()
    assert not violations, f"non-loopback addresses used (refused before connecting): {violations}"


class ServiceProcess:
    """A service started as a subprocess with its own SERVICE_NAME and config; stopped by PID.

    `env` adds environment variables (a `BROKER_URL` of the test's own broker).
    """

    def __init__(self, kind: str, service_name: str, config: dict, redis_url: str, log_dir: Path,
                 preexec_fn=None, env: dict[str, str] | None = None):
        import json
        import sys

        problems = config_violations(config)
        assert not problems, f"config of {service_name} leaves loopback: {problems}"
        self.service_name = service_name
        self.log_path = log_dir / f"{service_name}.log"
        client = connect_redis(redis_url)
        client.set(f"config.{service_name}", json.dumps(config))
        client.close()
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", f"std_daq_service.{kind}"],
                                        env={**os.environ, **(env or {}), "SERVICE_NAME": service_name,
                                             "REDIS_URL": redis_url},
                                        stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                        preexec_fn=preexec_fn)

    def wait_ready(self, redis_client, timeout: float = 20) -> dict:
        def beacon():
            assert self.process.poll() is None, f"{self.service_name} exited:\n{self.log()}"
            raw = redis_client.hget(f"status.{self.service_name}", "broker_connected")
            return raw == "true"

        wait_until(beacon, timeout, message=f"{self.service_name} beacon with a broker connection")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"{self.service_name} did not stop within {timeout} s of SIGTERM:\n{self.log()}")
        self._log.close()
        return self.process.returncode


@pytest.fixture
def agent_config() -> dict:
    """Extra config keys of the agent under test (tests parametrize it)."""
    return {}


@pytest.fixture
def agent(service_name, redis_url, redis_client, broker_url, tmp_path, agent_config):
    config = {
        "data_bind": "tcp://127.0.0.1:*",
        "preview_bind": "tcp://127.0.0.1:*",
        "sim_data_dir": str(tmp_path / "sim"),
        "run_end_idle_seconds": 2,
        "min_update_interval_seconds": 0.05,
        **agent_config,
    }
    process = ServiceProcess("hp_io_agent", service_name, config, redis_url, tmp_path)
    try:
        process.wait_ready(redis_client)
        yield process
    finally:
        assert process.stop() == 0, process.log()


@pytest.fixture
def caller(broker_url):
    with RequestCaller(broker_url, "test-agent-caller") as caller:
        yield caller
