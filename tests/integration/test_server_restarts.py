"""RabbitMQ and Redis restarted for real: servers of the test's own, killed (-9) or stopped cleanly, started again
on the same port and data dir, while services write, init or idle."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

import h5py
import pika
import pika.exceptions
import pytest
import requests
from conftest import ServiceProcess, delete_queues, wait_until
from helpers.servers import RabbitServer, RedisServer, missing_servers
from helpers.services import free_port

from std_daq_service.broker import STATUS_EXCHANGE, RequestCaller, connection_parameters, read_history
from std_daq_service.client.daq_client import DaqDataClient
from std_daq_service.config import connect_redis
from std_daq_service.protocol import InitSimRequest, StatusRequest, WriteRequest, decode_status

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_servers() is not None, reason=str(missing_servers()))]

RECONNECT_DEADLINE_S = 60
"""Generous: the point is that services come back, the measured time is printed (and in docs/reliability.md)."""


@pytest.fixture
def own_redis(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def own_rabbitmq(tmp_path):
    with RabbitServer(tmp_path / "rabbitmq") as server:
        yield server


class Stack:
    """Services of a test against its own servers, stopped at the end (each must exit with code 0)."""

    def __init__(self, redis_server: RedisServer, rabbit: RabbitServer | None, directory):
        self.redis_url = redis_server.url
        self.broker_url = rabbit.url if rabbit else None
        self.directory = directory
        self.redis = connect_redis(self.redis_url)
        self.processes: list[ServiceProcess] = []

    def start(self, kind: str, config: dict) -> ServiceProcess:
        name = f"test.{uuid.uuid4().hex[:8]}.{kind}"
        env = {"BROKER_URL": self.broker_url} if self.broker_url else {}
        process = ServiceProcess(kind, name, config, self.redis_url, self.directory, env=env)
        self.processes.append(process)
        process.wait_ready(self.redis, timeout=60)
        return process

    def agent(self, **sim) -> tuple[ServiceProcess, str]:
        agent = self.start("hp_io_agent", {"data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*",
                                           "sim_data_dir": str(self.directory / "sim"),
                                           "min_update_interval_seconds": 0.05})
        with RequestCaller(self.broker_url, "test-restarts-setup") as caller:
            endpoint = caller.call(agent.service_name, StatusRequest(), 30).finals[agent.service_name]
            assert endpoint.action == "request_success"
            if sim:
                final = caller.call(agent.service_name, InitSimRequest(**sim), 30).finals[agent.service_name]
                assert final.action == "request_success", final.message
        return agent, endpoint.result["endpoints"]["data"]

    def writer(self, agent: str, endpoint: str) -> ServiceProcess:
        return self.start("writer", {"agents": [{"name": agent, "data": endpoint}],
                                     "output_root": str(self.directory / "out"), "ring_buffer_seconds": 6})

    def close(self) -> None:
        codes = {p.service_name: p.stop() for p in reversed(self.processes)}
        self.redis.close()
        assert all(code == 0 for code in codes.values()), "\n".join(p.log() for p in self.processes)


@pytest.fixture
def stack(own_redis, own_rabbitmq, tmp_path):
    services = Stack(own_redis, own_rabbitmq, tmp_path)
    yield services
    services.close()


def beacon(client, process: ServiceProcess, field: str):
    raw = client.hget(f"status.{process.service_name}", field)
    return None if raw is None else json.loads(raw)


def wait_reconnected(stack: Stack, processes: list[ServiceProcess], before: dict[str, int], since: float) -> float:
    """Seconds from `since` until every process's beacon shows a new broker connection."""
    def back() -> bool:
        return all(p.process.poll() is None and beacon(stack.redis, p, "broker_connected") is True
                   and beacon(stack.redis, p, "broker_reconnects") > before[p.service_name] for p in processes)

    wait_until(back, RECONNECT_DEADLINE_S, interval=0.05, message="services reconnected to the restarted broker")
    return time.monotonic() - since


def reconnect_counts(stack: Stack, processes: list[ServiceProcess]) -> dict[str, int]:
    return {p.service_name: beacon(stack.redis, p, "broker_reconnects") for p in processes}


def durable_status_queue(url: str) -> str:
    """A durable queue bound to every status: it outlives a broker restart, like an operator's monitor."""
    name = f"test-statuses-{uuid.uuid4().hex[:6]}"
    connection = pika.BlockingConnection(connection_parameters(url, "std_daq:test-monitor"))
    channel = connection.channel()
    channel.queue_declare(name, durable=True)
    channel.queue_bind(name, STATUS_EXCHANGE, routing_key="#")
    connection.close()
    return name


def statuses_in(url: str, queue: str, request_id: str, until_action: str, timeout: float) -> list[str]:
    """The actions of `request_id` read from `queue` until `until_action` arrives."""
    actions: list[str] = []
    connection = pika.BlockingConnection(connection_parameters(url, "std_daq:test-monitor"))
    channel = connection.channel()
    deadline = time.monotonic() + timeout
    for _, _, body in channel.consume(queue, auto_ack=True, inactivity_timeout=1):
        if body is not None:
            status = decode_status(body)
            if status.request_id == request_id:
                actions.append(status.action)
                if status.action == until_action:
                    break
        if time.monotonic() > deadline:
            break
    connection.close()
    return actions


def audit_actions(client, request_id: str, service: str) -> list[str]:
    records = read_history(client, request_id=request_id, service=service)
    assert len(records) == 1, records
    return [step["action"] for step in records[0]["statuses"]]


def test_rabbitmq_killed_mid_write_the_write_ends_once_and_every_caller_reconnects(stack, own_rabbitmq, capsys):
    agent, endpoint = stack.agent(movie_rate_hz=200, pulse_height_rate_hz=50)
    writer = stack.writer(agent.service_name, endpoint)
    port = free_port()
    rest = stack.start("rest", {"host": "127.0.0.1", "port": port, "writers": [writer.service_name]})
    url = f"http://127.0.0.1:{port}"
    monitor = durable_status_queue(own_rabbitmq.url)
    with DaqDataClient(broker_url=own_rabbitmq.url, redis_url=stack.redis_url) as client:
        assert client.status([agent.service_name])
        with RequestCaller(own_rabbitmq.url, "test-restarts") as caller:
            request_id = caller.publish(writer.service_name, WriteRequest(output_file="through.h5",
                                                                          duration_seconds=6))
            caller.wait(request_id, [writer.service_name], 30, until_action="request_start")
        processes = [agent, writer, rest]
        before = reconnect_counts(stack, processes)
        own_rabbitmq.kill()
        wait_until(lambda: (read_history(stack.redis, request_id=request_id) or [{}])[0].get("outcome")
                   == "request_success", 60, interval=0.1, message="the write ending while the broker is down")
        restarted = time.monotonic()
        boot_s = own_rabbitmq.start()
        answered = time.time()
        back_s = wait_reconnected(stack, processes, before, restarted)
        actions = statuses_in(own_rabbitmq.url, monitor, request_id, "request_success", RECONNECT_DEADLINE_S)
        assert actions[-1] == "request_success", actions
        [record] = read_history(stack.redis, request_id=request_id, service=writer.service_name)
        history = [step["action"] for step in record["statuses"]]
        assert history.count("request_received") == 1 and history.count("request_start") == 1, history
        assert history[-1] == "request_success", history
        assert record["ended"] < answered, "the write ended while the broker was down: its statuses waited"
        with h5py.File(stack.directory / "out" / "through.h5") as f:
            assert f.attrs["complete"]
        wait_until(lambda: requests.get(f"{url}/health", timeout=5).json()["broker_connected"], RECONNECT_DEADLINE_S,
                   message="REST proxy reconnected")
        answer = requests.post(f"{url}/write_sync", json={"output_file": "after.h5", "n_images": 5}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert agent.service_name in client.status([agent.service_name]), "the client reconnects"
    cli = subprocess.run([sys.executable, "-m", "std_daq_service.cli", "--broker-url", own_rabbitmq.url, "--redis-url",
                          stack.redis_url, "status", agent.service_name], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "update_interval_seconds" in cli.stdout, cli.stderr
    with capsys.disabled():
        print(f"\nRabbitMQ kill -9 mid-write: broker booted again in {boot_s:.1f} s, agent, writer and proxy "
              f"reconnected {back_s - boot_s:.1f} s after it answered")


def test_rabbitmq_stopped_cleanly_as_an_init_arrives_the_init_runs_once_and_its_statuses_survive(
        stack, own_rabbitmq, capsys):
    agent, _ = stack.agent()
    monitor = durable_status_queue(own_rabbitmq.url)
    before = reconnect_counts(stack, [agent])
    with RequestCaller(own_rabbitmq.url, "test-restarts") as caller:
        request_id = caller.publish(agent.service_name, InitSimRequest(movie_rate_hz=100, pulse_height_rate_hz=10))
        caller.wait(request_id, [agent.service_name], 30, until_action="request_received")
    own_rabbitmq.stop()
    restarted = time.monotonic()
    boot_s = own_rabbitmq.start()
    back_s = wait_reconnected(stack, [agent], before, restarted)
    actions = statuses_in(own_rabbitmq.url, monitor, request_id, "request_success", RECONNECT_DEADLINE_S)
    history = audit_actions(stack.redis, request_id, agent.service_name)
    assert history.count("request_start") == 1 and history[-1] == "request_success", history
    assert actions[-1] == "request_success", actions  # sent before the stop (persistent) or after the start
    with capsys.disabled():
        print(f"\nRabbitMQ clean stop during an init: booted again in {boot_s:.1f} s, the agent reconnected "
              f"{back_s - boot_s:.1f} s after it answered")


def test_requests_queued_before_a_kill_or_sent_while_the_broker_is_down_run_once(stack, own_rabbitmq, capsys):
    stack.agent()
    spare = stack.processes.pop()  # stopped now: its durable queue keeps what is sent to it meanwhile
    assert spare.stop() == 0
    with RequestCaller(own_rabbitmq.url, "test-restarts") as caller:
        queued_id = caller.publish(spare.service_name, StatusRequest())
    own_rabbitmq.kill()  # while idle, with a persistent request in a durable queue

    sent: dict[str, str] = {}

    def retrying_caller() -> None:  # the caller side keeps trying while the broker is down
        deadline = time.monotonic() + RECONNECT_DEADLINE_S + 60
        while time.monotonic() < deadline:
            try:
                with RequestCaller(own_rabbitmq.url, "test-restarts-retry") as retry:
                    sent["id"] = retry.publish(spare.service_name, StatusRequest())
                    return
            except pika.exceptions.AMQPError:
                time.sleep(0.2)

    thread = threading.Thread(target=retrying_caller, name="retrying-caller")
    thread.start()
    boot_s = own_rabbitmq.start()
    thread.join()
    assert "id" in sent, "the retrying caller got its request through"
    again = ServiceProcess("hp_io_agent", spare.service_name, {"data_bind": "tcp://127.0.0.1:*",
                                                                "preview_bind": "tcp://127.0.0.1:*",
                                                                "sim_data_dir": str(stack.directory / "sim")},
                           stack.redis_url, stack.directory, env={"BROKER_URL": own_rabbitmq.url})
    stack.processes.append(again)
    again.wait_ready(stack.redis, timeout=60)
    for request_id in (queued_id, sent["id"]):
        wait_until(lambda rid=request_id: audit_actions_or_none(stack.redis, rid, spare.service_name), 30,
                   message=f"request {request_id} served")
        history = audit_actions(stack.redis, request_id, spare.service_name)
        assert history == ["request_received", "request_start", "request_success"], history
    with capsys.disabled():
        print(f"\nRabbitMQ kill -9 while idle: booted again in {boot_s:.1f} s; the queued request and the one "
              f"sent while it was down were each served once")


def audit_actions_or_none(client, request_id: str, service: str) -> list[str] | None:
    records = read_history(client, request_id=request_id, service=service)
    return records and records[0]["outcome"] != "running" and records[0]["statuses"]


@pytest.fixture
def redis_stack(request, tmp_path, broker_url):
    """Services on the machine's broker and a Redis of the test's own (`persistent` by parametrization)."""
    with RedisServer(tmp_path / "redis", persistent=getattr(request, "param", False)) as server:
        services = Stack(server, None, tmp_path)
        try:
            yield server, services
        finally:
            services.close()
            delete_queues(broker_url, [f"{p.service_name}.{q}" for p in services.processes
                                       for q in ("request", "kill")])


def test_redis_restarted_empty_services_keep_running_and_store_beacons_config_and_checkpoint_again(
        redis_stack, capsys):
    server, stack = redis_stack
    agent, endpoint = stack.agent(movie_rate_hz=100, pulse_height_rate_hz=10)
    writer = stack.writer(agent.service_name, endpoint)
    keys = [f"status.{agent.service_name}", f"status.{writer.service_name}", f"config.{agent.service_name}",
            f"config.{writer.service_name}", f"checkpoint.{agent.service_name}"]
    assert stack.redis.exists(*keys) == len(keys)
    server.kill()
    server.start()
    restarted = time.monotonic()
    client = connect_redis(server.url)
    wait_until(lambda: client.exists(*keys) == len(keys), 30, interval=0.05,
               message="beacons, configs and the agent's checkpoint stored again")
    back_s = time.monotonic() - restarted
    assert agent.process.poll() is None and writer.process.poll() is None
    checkpoint = json.loads(client.get(f"checkpoint.{agent.service_name}"))
    assert checkpoint["simulation"] is not None and checkpoint["streams"], "the agent goes on checkpointing"
    with RequestCaller(stack.broker_url, "test-restarts") as caller:
        final = caller.call(writer.service_name, WriteRequest(output_file="after.h5", n_images=5), 60)
        assert final.finals[writer.service_name].action == "request_success"
    wait_until(lambda: read_history(client, request_id=final.request_id), 10, message="the audit trail goes on")
    assert agent.stop() == 0
    again = ServiceProcess("hp_io_agent", agent.service_name, json.loads(client.get(f"config.{agent.service_name}")),
                           server.url, stack.directory)
    stack.processes.append(again)
    again.wait_ready(client, timeout=60)
    with RequestCaller(stack.broker_url, "test-restarts") as caller:
        status = caller.call(again.service_name, StatusRequest(), 30).finals[again.service_name].result
    assert status["simulator"] and "restarted; resuming" in again.log(), "resumed from the checkpoint stored again"
    client.close()
    with capsys.disabled():
        print(f"\nRedis killed and started empty: beacons, configs and the checkpoint were back {back_s:.1f} s after "
              "it answered")


@pytest.mark.parametrize("redis_stack", [True], indirect=True, ids=["appendonly"])
def test_with_persistence_agent_checkpoints_and_configs_survive_a_redis_kill(redis_stack):
    server, stack = redis_stack
    agent, _ = stack.agent(movie_rate_hz=100, pulse_height_rate_hz=10)
    key = f"checkpoint.{agent.service_name}"
    wait_until(lambda: (json.loads(stack.redis.get(key) or "{}").get("streams")), 30, message="a checkpoint")
    before = json.loads(stack.redis.get(key))
    server.kill()
    server.start()
    client = connect_redis(server.url)
    after = json.loads(client.get(key))  # read before the agent writes it again
    assert after["tracking"] == before["tracking"] and after["simulation"] == before["simulation"]
    assert all(after["streams"][s]["next_seq"] >= before["streams"][s]["next_seq"] for s in before["streams"])
    assert client.get(f"config.{agent.service_name}") is not None
    client.close()
