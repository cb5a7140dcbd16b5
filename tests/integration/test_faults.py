"""Faults injected for real: killed processes, broker connections closed, Redis connections dropped."""

from __future__ import annotations

import signal
import subprocess
import uuid

import h5py
import pytest
import requests
from conftest import cleanup_services, close_broker_connections, wait_until
from test_rest import start_rest
from test_writer import start_agent, start_writer

from std_daq_service.broker import RequestCaller
from std_daq_service.config import connect_redis
from std_daq_service.protocol import StatusRequest, WriteRequest


@pytest.fixture(scope="module")
def agent(tmp_path_factory, redis_url, broker_url):
    directory = tmp_path_factory.mktemp("faults")
    name = f"test.{uuid.uuid4().hex[:8]}.hp_io_agent"
    client = connect_redis(redis_url)
    process, endpoint = start_agent(name, redis_url, client, directory, movie_rate_hz=500, pulse_height_rate_hz=100)
    try:
        yield name, endpoint
    finally:
        process.stop()
        client.close()
        cleanup_services(redis_url, broker_url, [name])


@pytest.fixture
def caller(broker_url):
    with RequestCaller(broker_url, "test-faults") as caller:
        yield caller


def beacon_field(redis_client, name: str, field: str):
    return redis_client.hget(f"status.{name}", field)


def test_writer_killed_mid_write_leaves_a_part_file_that_the_restart_reports(agent, caller, new_service_name,
                                                                               redis_url, redis_client, tmp_path):
    name = new_service_name("writer")
    writer = start_writer(name, redis_url, redis_client, tmp_path, [agent])
    request_id = caller.publish(name, WriteRequest(output_file="crash.h5"))
    wait_until(lambda: any(s.action == "request_progress" and s.result["bytes"] > 0
                           for s in caller.wait(request_id, [name], 0.2).history), 15, message="bytes written")
    writer.process.send_signal(signal.SIGKILL)
    assert writer.stop() == -signal.SIGKILL
    out = tmp_path / "out"
    assert not (out / "crash.h5").exists(), "nothing under the final name"
    assert (out / "crash.h5.part").exists(), "the temporary file is recognisable"
    restarted = start_writer(name, redis_url, redis_client, tmp_path, [agent])
    try:
        status = caller.call(name, StatusRequest(), 15).finals[name].result
        assert status["stale_part_files"] == [str(out / "crash.h5.part")]
        assert "unfinished .part file" in restarted.log()
        again = caller.call(name, WriteRequest(output_file="crash.h5", n_images=10), 30).finals[name]
        assert again.action == "request_success", again.message
        assert h5py.File(out / "crash.h5").attrs["complete"]
    finally:
        assert restarted.stop() == 0, restarted.log()


def test_broker_connections_closed_mid_write_and_idle(agent, caller, new_service_name, redis_url, redis_client,
                                                      tmp_path):
    name = new_service_name("writer")
    writer = start_writer(name, redis_url, redis_client, tmp_path, [agent])
    try:
        request_id = caller.publish(name, WriteRequest(output_file="through.h5", duration_seconds=4))
        caller.wait(request_id, [name], 10, until_action="request_start")
        reconnects = int(beacon_field(redis_client, name, "broker_reconnects"))
        assert close_broker_connections(f"std_daq:{name}") >= 1
        wait_until(lambda: int(beacon_field(redis_client, name, "broker_reconnects")) > reconnects
                   and beacon_field(redis_client, name, "broker_connected") == "true", 5, interval=0.05,
                   message="the writer reconnected within 5 s")
        result = caller.wait(request_id, [name], 30)
        assert result.finals[name].action == "request_success", result.history
        actions = [s.action for s in result.history]
        assert actions.count("request_start") == 1 and actions.count("request_success") == 1, "run once"
        # idle: close again, then a new request is served
        assert close_broker_connections(f"std_daq:{name}") >= 1
        after = caller.call(name, WriteRequest(output_file="after.h5", n_images=5), 30).finals[name]
        assert after.action == "request_success", after.message
    finally:
        assert writer.stop() == 0, writer.log()


def test_rest_proxy_reconnects_to_the_broker(agent, new_service_name, redis_url, redis_client, tmp_path):
    writer_name = new_service_name("writer")
    writer = start_writer(writer_name, redis_url, redis_client, tmp_path, [agent])
    rest, url = start_rest(new_service_name("rest"), redis_url, redis_client, tmp_path, writers=[writer_name])
    try:
        assert close_broker_connections(f"std_daq:{rest.service_name}") >= 2  # its consumer and its caller
        wait_until(lambda: requests.get(f"{url}/health", timeout=5).json()["broker_connected"], 5, interval=0.05,
                   message="REST proxy reconnected")
        answer = requests.post(f"{url}/write_sync", json={"output_file": "rest.h5", "n_images": 5}, timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        for process in (rest, writer):
            assert process.stop() == 0, process.log()


def test_redis_connections_dropped_beacons_come_back(agent, new_service_name, redis_url, redis_client, tmp_path,
                                                     caller):
    name = new_service_name("writer")
    writer = start_writer(name, redis_url, redis_client, tmp_path, [agent])
    try:
        before = beacon_field(redis_client, name, "heartbeat_timestamp")
        subprocess.run(["redis-cli", "-u", redis_url, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
                       check=True, capture_output=True)
        redis_client.delete(f"status.{name}")  # as after a restart without persistence
        wait_until(lambda: beacon_field(redis_client, name, "heartbeat_timestamp") not in (None, before), 10,
                   message="the beacon written again")
        answer = caller.call(name, WriteRequest(output_file="redis.h5", n_images=5), 30).finals[name]
        assert answer.action == "request_success", "the service ran on through it"
    finally:
        assert writer.stop() == 0, writer.log()
