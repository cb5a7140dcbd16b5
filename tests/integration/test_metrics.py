"""Prometheus metrics scraped over HTTP from a running agent and writer, checked against their `status` answers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import requests
from conftest import ServiceProcess, service_stack, wait_until
from helpers.services import free_port, start_agent, start_writer
from prometheus_client.parser import text_string_to_metric_families

from std_daq_service import __version__
from std_daq_service.broker import RequestCaller
from std_daq_service.metrics import METRICS
from std_daq_service.protocol import StatusRequest, WriteRequest


@dataclass
class System:
    agent: ServiceProcess
    writer: ServiceProcess
    agent_metrics: str
    writer_metrics: str


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_url, broker_url):
    directory = tmp_path_factory.mktemp("metrics")
    with service_stack(redis_url, broker_url) as stack:
        agent_name = stack.name("hp_io_agent")
        agent_port, writer_port = free_port(), free_port()
        agent, endpoint = start_agent(agent_name, redis_url, stack.redis, directory, {"metrics_port": agent_port},
                                      movie_rate_hz=500, pulse_height_rate_hz=200)
        stack.add(agent)
        writer = stack.add(start_writer(stack.name("writer"), redis_url, stack.redis, directory,
                                        [(agent_name, endpoint)], metrics_port=writer_port))
        yield System(agent, writer, f"http://127.0.0.1:{agent_port}/metrics",
                     f"http://127.0.0.1:{writer_port}/metrics")


@pytest.fixture
def caller(broker_url):
    with RequestCaller(broker_url, "test-metrics-caller") as caller:
        yield caller


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (sample name, sorted labels) -> value."""
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def status(caller, process: ServiceProcess) -> dict:
    final = caller.call(process.service_name, StatusRequest(), 15).finals[process.service_name]
    assert final.action == "request_success", final.message
    return final.result


def test_every_metric_a_service_exports_is_declared(system):
    names = {name for url in (system.agent_metrics, system.writer_metrics) for name, _ in scrape(url)}
    declared = set().union(*(spec.exposed() for spec in METRICS.values()))
    assert names <= declared, names - declared


def test_agent_counters_lie_between_the_status_answers_before_and_after_the_scrape(system, caller):
    wait_until(lambda: sample(scrape(system.agent_metrics), "std_daq_agent_frames_published_total",
                              module="1", dp="img16", origin="simulator"), 15, message="frames counted")
    before = status(caller, system.agent)
    samples = scrape(system.agent_metrics)
    after = status(caller, system.agent)
    streams = [(m, dp) for m, products in before["modules"].items() for dp in products]
    assert ("1", "img16") in streams
    for module_id, dp in streams:
        labels = {"module": module_id, "dp": dp, "origin": "simulator"}
        for metric, key in (("frames_published", "frames_published"), ("bytes_published", "bytes_published"),
                            ("frames_lost", "frames_lost"), ("corrupt_bytes", "corrupt_bytes_skipped")):
            value = sample(samples, f"std_daq_agent_{metric}_total", **labels)
            assert before["modules"][module_id][dp][key] <= value <= after["modules"][module_id][dp][key], metric
        assert sample(samples, "std_daq_agent_lag_bytes", **labels) >= 0
    assert before["messages_published"] <= sample(samples, "std_daq_agent_messages_published_total") \
        <= after["messages_published"]
    assert sample(samples, "std_daq_agent_tracking") == 1
    assert sample(samples, "std_daq_agent_subscribers", socket="data") == after["subscribers"]
    assert sample(samples, "std_daq_agent_subscribers_by_kind", kind="infrastructure") == 1  # the writer
    assert sample(samples, "std_daq_broker_connected") == 1
    assert sample(samples, "std_daq_service_info", service=system.agent.service_name, kind="hp_io_agent",
                  version=__version__) == 1


def test_request_durations_are_counted_by_type_and_outcome(system, caller):
    def answered() -> float:
        return sample(scrape(system.agent_metrics), "std_daq_request_duration_seconds_count",
                      request_type="status", outcome="success") or 0

    done = answered()
    status(caller, system.agent)
    wait_until(lambda: answered() == done + 1, 10, message="one more status request counted")
    samples = scrape(system.agent_metrics)
    assert sample(samples, "std_daq_request_duration_seconds_count", request_type="init_sim", outcome="success") == 1
    assert sample(samples, "std_daq_request_duration_seconds_count", request_type="init_sim", outcome="fail") == 0
    assert sample(samples, "std_daq_beacon_age_seconds") < float("inf")


def test_writer_metrics_match_its_status_and_the_results_of_its_writes(system, caller):
    name = system.writer.service_name
    wait_until(lambda: status(caller, system.writer)["streams"], 15, message="the writer receiving")
    final = caller.call(name, WriteRequest(output_file="counted.h5", n_images=300), 30).finals[name]
    assert final.action == "request_success", final.message

    def counted() -> dict:
        samples = scrape(system.writer_metrics)
        done = sample(samples, "std_daq_request_duration_seconds_count", request_type="write", outcome="success")
        return samples if done == 1 else {}

    samples = wait_until(counted, 10, message="the write counted")
    assert sample(samples, "std_daq_writer_written_frames_total") == final.result["frames"]
    assert sample(samples, "std_daq_writer_written_bytes_total") == final.result["bytes"]
    assert sample(samples, "std_daq_writer_writes_running") == 0
    assert sample(samples, "std_daq_request_duration_seconds_count", request_type="write", outcome="killed") == 0
    before = status(caller, system.writer)
    samples = scrape(system.writer_metrics)
    after = status(caller, system.writer)
    for key, stream in before["streams"].items():
        agent, module_id, dp = key.rsplit("/", 2)
        value = sample(samples, "std_daq_writer_frames_received_total", agent=agent, module=module_id, dp=dp)
        assert stream["frames"] <= value <= after["streams"][key]["frames"], key
    assert sample(samples, "std_daq_writer_ring_buffer_max_bytes") == after["ring_buffer"]["max_bytes"]
    assert sample(samples, "std_daq_writer_bad_messages_total") == after["bad_messages"]


def test_a_taken_metrics_port_refuses_the_start(system, new_service_name, redis_url, tmp_path):
    port = int(system.writer_metrics.split(":")[2].split("/")[0])
    writer = ServiceProcess("writer", new_service_name("writer"),
                            {"agents": [{"name": "x.y.hp_io_agent", "data": "tcp://127.0.0.1:5999"}],
                             "output_root": str(tmp_path / "out"), "metrics_port": port}, redis_url, tmp_path)
    try:
        assert writer.process.wait(30) == 2
    finally:
        writer.stop()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in writer.log()
