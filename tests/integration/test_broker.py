"""Requests and statuses over the real RabbitMQ: lifecycle, kill, failure, malformed input, restarts."""

import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pika
import pytest
from conftest import close_broker_connections, wait_until

from std_daq_service.broker import RequestCaller, RequestConsumer, SharedCaller, connection_parameters
from std_daq_service.broker.dispatcher import PROGRESS_PERIOD_S
from std_daq_service.broker.topology import KILL_EXCHANGE, REQUEST_EXCHANGE
from std_daq_service.protocol import Busy, StatusRequest, StopHpIoRequest, UnknownTarget, WriteRequest


def handle_status(request, ctx):
    return {"answer": 42}


def handle_write(request, ctx):
    """Counts frames until n_images, or until killed; progress on every step."""
    count = 0
    while not ctx.cancelled.is_set() and (request.n_images is None or count < request.n_images):
        count += 1
        ctx.progress(f"{count} frames", {"n_frames": count})
        ctx.cancelled.wait(0.01)
    return {"n_frames": count}


def handle_stop(request, ctx):
    raise Busy("cannot stop: a simulated run is being re-initialised; retry in a moment")


HANDLERS = {"status": handle_status, "write": handle_write, "stop_hp_io": handle_stop}


@contextmanager
def running_service(broker_url, service_name):
    consumer = RequestConsumer(broker_url, service_name, HANDLERS)
    with consumer:
        assert consumer.wait_connected(10), "service did not connect to RabbitMQ"
        try:
            yield consumer
        finally:
            consumer.dispatcher.close()


@pytest.fixture
def caller(broker_url):
    with RequestCaller(broker_url, "test-caller") as caller:
        yield caller


def actions(result, source):
    return [s.action for s in result.history if s.source == source]


def test_request_lifecycle_received_start_success(broker_url, service_name, caller):
    with running_service(broker_url, service_name):
        result = caller.call(service_name, StatusRequest(), timeout=10)
    assert result.ok, result
    assert actions(result, service_name) == ["request_received", "request_start", "request_success"]
    assert result.finals[service_name].result == {"answer": 42}
    assert result.finals[service_name].request == {"request_type": "status"}


def test_progress_is_rate_limited_and_counts_grow(broker_url, service_name, caller):
    with running_service(broker_url, service_name):
        result = caller.call(service_name, WriteRequest(output_file="x.h5", n_images=150), timeout=20)
    assert result.ok
    progress = [s for s in result.history if s.action == "request_progress"]
    assert 1 <= len(progress) < 150, "progress on every step is not rate-limited"
    # the service stamps each status after its rate check: a stalled thread can only shift a stamp by its stall
    spacing = [b.timestamp - a.timestamp for a, b in zip(progress, progress[1:], strict=False)]
    assert all(gap > PROGRESS_PERIOD_S / 2 for gap in spacing), spacing
    counts = [s.result["n_frames"] for s in progress]
    assert counts == sorted(counts)
    assert result.finals[service_name].result == {"n_frames": 150}


def test_kill_before_the_request_arrives_cancels_it_on_arrival(broker_url, service_name, caller):
    with running_service(broker_url, service_name):
        pass
    request_id = caller.publish(service_name, WriteRequest(output_file="x.h5"))
    caller.kill(service_name, request_id)
    with running_service(broker_url, service_name):
        result = caller.wait(request_id, [service_name], 10)
    assert result.finals[service_name].action == "request_killed"


def test_kill_stops_a_running_request_with_request_killed(broker_url, service_name, caller):
    with running_service(broker_url, service_name):
        request_id = caller.publish(service_name, WriteRequest(output_file="x.h5"))
        assert caller.wait(request_id, [service_name], 10, until_action="request_progress").finals == {}
        caller.kill(service_name, request_id)
        result = caller.wait(request_id, [service_name], 10)
    assert result.finals[service_name].action == "request_killed"
    assert result.finals[service_name].result["n_frames"] >= 1


def test_handler_error_becomes_request_fail_with_reason_and_code(broker_url, service_name, caller):
    with running_service(broker_url, service_name):
        result = caller.call(service_name, StopHpIoRequest(), timeout=10)
    final = result.finals[service_name]
    assert final.action == "request_fail"
    assert "re-initialised; retry" in final.message and final.result["http_status"] == 409


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"\xff\xfe not json", "not valid JSON"),
        (b'{"request_type": "teleport"}', "unknown request_type"),
        (b'{"request_type": "write", "output_file": 7}', "output_file"),
        (b'{"request_type": "init_sim"}', "does not handle 'init_sim' requests"),
        (b'{"request_type": "status", "x": "' + b"x" * (2 << 20) + b'"}', "the limit is 1048576"),
    ],
    ids=["not json", "unknown type", "wrong field", "not handled", "2 MiB body"],
)
def test_malformed_requests_fail_readably_and_the_service_keeps_serving(broker_url, service_name, caller, body, reason):
    with running_service(broker_url, service_name):
        request_id = caller.publish(service_name, body)
        result = caller.wait(request_id, [service_name], 10)
        assert result.finals[service_name].action == "request_fail"
        assert reason in result.finals[service_name].message
        assert caller.call(service_name, StatusRequest(), timeout=10).ok


@pytest.mark.parametrize("body", [b"", b"stop it", b'{"request_id": "the same", "reason": "operator"}'])
def test_a_kill_named_by_its_correlation_id_alone_stops_the_request(broker_url, service_name, caller, body):
    with running_service(broker_url, service_name):
        request_id = caller.publish(service_name, WriteRequest(output_file="x.h5"))
        assert caller.wait(request_id, [service_name], 10, until_action="request_progress").finals == {}
        connection = pika.BlockingConnection(connection_parameters(broker_url, "test-raw-kill"))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(KILL_EXCHANGE, service_name, body.replace(b"the same", request_id.encode()),
                              pika.BasicProperties(correlation_id=request_id), mandatory=True)
        connection.close()
        result = caller.wait(request_id, [service_name], 10)
    assert result.finals[service_name].action == "request_killed"


def test_unroutable_request_is_an_immediate_error(caller):
    with pytest.raises(UnknownTarget, match="no service named 'test.nobody.writer'"):
        caller.publish("test.nobody.writer", StatusRequest())


def test_request_sent_while_the_service_is_down_is_served_when_it_returns(broker_url, service_name, caller):
    with running_service(broker_url, service_name):
        pass  # declares the durable queues, then the service stops
    request_id = caller.publish(service_name, StatusRequest())
    with running_service(broker_url, service_name):
        result = caller.wait(request_id, [service_name], 10)
    assert result.ok


def test_service_reconnects_after_the_broker_closes_its_connection(broker_url, service_name, caller):
    with running_service(broker_url, service_name) as consumer:
        request_id = caller.publish(service_name, WriteRequest(output_file="x.h5", n_images=300))
        caller.wait(request_id, [service_name], 10, until_action="request_start")
        assert close_broker_connections(f"std_daq:{service_name}") == 1
        wait_until(lambda: consumer.reconnects >= 1, 10, message="service noticed the closed connection")
        assert consumer.wait_connected(10)
        result = caller.wait(request_id, [service_name], 20)
        assert result.finals[service_name].action == "request_success"
        assert result.finals[service_name].result == {"n_frames": 300}
        assert caller.call(service_name, StatusRequest(), timeout=10).ok


def test_redelivered_request_is_not_run_twice(broker_url, service_name, caller):
    with running_service(broker_url, service_name):
        first = caller.call(service_name, StatusRequest(), timeout=10)
        connection = pika.BlockingConnection(connection_parameters(broker_url, "test-redeliver"))
        channel = connection.channel()
        channel.confirm_delivery()  # the copy is in the request queue before the marker below is published
        channel.basic_publish(REQUEST_EXCHANGE, service_name, b'{"request_type": "status"}',
                              pika.BasicProperties(correlation_id=first.request_id))
        connection.close()
        # the service takes its queue in order and confirms a request_received before it takes the next request,
        # on the channel that carries all its statuses: a status of the copy would arrive before the marker's
        marker = caller.call(service_name, StatusRequest(), timeout=10)
    assert marker.ok
    assert caller.store.history(first.request_id) == first.history, "the redelivered request produced new statuses"


def test_concurrent_requests_run_at_the_same_time(broker_url, service_name, caller):
    with running_service(broker_url, service_name):
        ids = [caller.publish(service_name, WriteRequest(output_file=f"{i}.h5", n_images=60)) for i in range(4)]
        results = {rid: caller.wait(rid, [service_name], 20) for rid in ids}
    assert all(r.ok for r in results.values())
    starts = [next(s.timestamp for s in r.history if s.action == "request_start") for r in results.values()]
    ends = [r.finals[service_name].timestamp for r in results.values()]
    assert max(starts) < min(ends), "a request started only after another had finished"


def test_a_caller_catches_the_services_error_as_its_own_class(broker_url, service_name, caller):
    with running_service(broker_url, service_name):
        with pytest.raises(Busy, match="re-initialised; retry"):
            caller.call(service_name, StopHpIoRequest(), timeout=10).results()


def test_shared_caller_publishes_from_other_threads_and_raises_there(broker_url, service_name):
    with running_service(broker_url, service_name), SharedCaller(broker_url, "test-shared") as shared:
        wait_until(shared.connected.is_set, 10, message="shared caller connected")
        ids = [str(uuid.uuid4()) for _ in range(8)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda rid: shared.publish([service_name], StatusRequest(), rid), ids))
            results = list(pool.map(lambda rid: shared.wait(rid, [service_name], 10), ids))
        assert all(r.results() == {service_name: {"answer": 42}} for r in results)
        assert [s.action for s in shared.history(ids[0])] == ["request_received", "request_start", "request_success"]
        with pytest.raises(UnknownTarget, match="test.nobody.writer"):
            shared.publish(["test.nobody.writer"], StatusRequest(), str(uuid.uuid4()))
