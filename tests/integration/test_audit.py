"""The audit trail in Redis: who sent each request, its statuses and outcome, bounded, queryable after restarts."""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager

import pika
import pytest
from conftest import wait_until

from std_daq_service.broker import (
    AuditTrail,
    Caller,
    RequestCaller,
    RequestConsumer,
    connection_parameters,
    read_history,
)
from std_daq_service.broker.topology import REQUEST_EXCHANGE
from std_daq_service.cli import main as cli_main
from std_daq_service.protocol import Busy, StatusRequest, StopHpIoRequest, WriteRequest


def handle_write(request, ctx):
    count = 0
    while not ctx.cancelled.is_set():
        count += 1
        ctx.progress(f"{count} frames", {"n_frames": count}, force=True)
        ctx.cancelled.wait(0.02)
    return {"n_frames": count}


def handle_stop(request, ctx):
    raise Busy("cannot stop now; retry")


HANDLERS = {"status": lambda request, ctx: {"answer": 42}, "write": handle_write, "stop_hp_io": handle_stop}


@contextmanager
def audited_service(broker_url, redis_client, service_name, stream, maxlen=1000):
    with AuditTrail(redis_client, service_name, maxlen, stream) as audit:
        consumer = RequestConsumer(broker_url, service_name, HANDLERS, audit)
        with consumer:
            assert consumer.wait_connected(10), "service did not connect to RabbitMQ"
            try:
                yield audit
            finally:
                consumer.dispatcher.close()


@pytest.fixture
def stream(redis_client):
    """A Redis stream of this test's own, deleted afterwards."""
    key = f"test.audit.{uuid.uuid4().hex[:8]}"
    yield key
    redis_client.delete(key)


def test_every_request_is_recorded_with_its_caller_statuses_and_outcome(broker_url, redis_client, service_name, stream):
    with audited_service(broker_url, redis_client, service_name, stream):
        before = time.time()
        with RequestCaller(broker_url, "test-audit", caller=Caller("control-room", "alice")) as caller:
            assert caller.call(service_name, StatusRequest(), 10).ok
            assert not caller.call(service_name, StopHpIoRequest(), 10).ok
            request_id = caller.publish(service_name, WriteRequest(output_file="x.h5"))
            caller.wait(request_id, [service_name], 10, until_action="request_progress")
            caller.kill(service_name, request_id, Caller("night-shift", "bob"))
            assert caller.wait(request_id, [service_name], 10).finals[service_name].action == "request_killed"

        def records():
            found = read_history(redis_client, service=service_name, stream=stream)
            return found if len(found) == 3 and all(r["outcome"] != "running" for r in found) else None

        write, stop, status = wait_until(records, 10, message="three finished requests in the audit trail")
    assert [r["request_type"] for r in (write, stop, status)] == ["write", "stop_hp_io", "status"]
    assert status["caller"] == {"host": "control-room", "user": "alice"} and status["service"] == service_name
    assert status["outcome"] == "request_success" and status["result"] == {"answer": 42}
    assert [s["action"] for s in status["statuses"]] == ["request_received", "request_start", "request_success"]
    assert status["request"] == {"request_type": "status"} and before <= status["received"] <= status["ended"]
    assert stop["outcome"] == "request_fail" and stop["result"]["error"] == "Busy"
    assert write["outcome"] == "request_killed" and write["request"]["output_file"] == "x.h5"
    kill = next(s for s in write["statuses"] if s["action"] == "kill")
    assert kill["caller"] == {"host": "night-shift", "user": "bob"}
    assert "request_progress" in [s["action"] for s in write["statuses"]]
    assert [r["request_id"] for r in read_history(redis_client, request_type="status", stream=stream)] == [
        status["request_id"]]
    assert read_history(redis_client, since=time.time() + 1, stream=stream) == []
    assert read_history(redis_client, until=before - 1, stream=stream) == []


def test_a_request_from_an_old_caller_without_caller_headers_and_an_invalid_body_are_recorded(
        broker_url, redis_client, service_name, stream):
    with audited_service(broker_url, redis_client, service_name, stream):
        connection = pika.BlockingConnection(connection_parameters(broker_url, "test-audit-raw"))
        channel = connection.channel()
        channel.basic_publish(REQUEST_EXCHANGE, service_name, b'{"request_type": "nonsense"}',
                              pika.BasicProperties(correlation_id="raw-1"))
        connection.close()
        record = wait_until(lambda: next(iter(read_history(redis_client, stream=stream)), None), 10,
                            message="the invalid request in the audit trail")
        wait_until(lambda: read_history(redis_client, stream=stream)[0]["outcome"] == "request_fail", 10,
                   message="its request_fail")
    assert record["request_id"] == "raw-1" and record["caller"] == {"host": "", "user": ""}
    assert record["request"] == {"request_type": "nonsense"} and record["request_type"] is None


def test_the_trail_is_bounded_and_outlives_the_service(broker_url, redis_client, service_name, stream):
    with audited_service(broker_url, redis_client, service_name, stream, maxlen=10) as audit:
        with RequestCaller(broker_url, "test-audit") as caller:
            for _ in range(40):
                assert caller.call(service_name, StatusRequest(), 10).ok
        wait_until(lambda: audit.written >= 120, 10, message="every entry written")
    assert redis_client.xlen(stream) < 120  # trimmed (approximately: whole radix-tree nodes)
    assert len(read_history(redis_client, service=service_name, stream=stream, limit=2)) == 2


def test_std_daq_history_prints_the_requests(broker_url, redis_client, service_name, capsys, redis_url):
    with audited_service(broker_url, redis_client, service_name, "audit.requests"):
        with RequestCaller(broker_url, "test-audit", caller=Caller("cli-host", "carol")) as caller:
            request_id = caller.call(service_name, StatusRequest(), 10).request_id
        wait_until(lambda: read_history(redis_client, service=service_name, request_id=request_id), 10,
                   message="the request in the audit trail")
    assert cli_main(["--redis-url", redis_url, "history", "--service", service_name]) == 0
    out = capsys.readouterr().out
    assert request_id[:8] in out and "carol@cli-host" in out and "request_success" in out
    assert cli_main(["--redis-url", redis_url, "history", "--service", service_name, "--json"]) == 0
    assert f'"request_id": "{request_id}"' in capsys.readouterr().out
