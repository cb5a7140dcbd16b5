"""Service logs: JSON lines with service and request id (LOG_FORMAT=json), text lines that carry both too."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import ServiceProcess

from std_daq_service.broker import RequestCaller
from std_daq_service.protocol import StatusRequest

AGENT_CONFIG = {"data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*",
                "min_update_interval_seconds": 0.05}


def run_one_request(service_name: str, redis_url: str, redis_client, tmp_path) -> tuple[str, str]:
    """Start an agent, send it a status request, stop it; its request id and its log."""
    agent = ServiceProcess("hp_io_agent", service_name, {**AGENT_CONFIG, "sim_data_dir": str(tmp_path / "sim")},
                           redis_url, tmp_path)
    try:
        agent.wait_ready(redis_client)
        with RequestCaller(None, "test-logs") as caller:
            request_id = caller.publish(service_name, StatusRequest())
            final = caller.wait(request_id, [service_name], 15).finals[service_name]
            assert final.action == "request_success", final.message
    finally:
        assert agent.stop() == 0, agent.log()
    return request_id, agent.log()


def test_json_logs_are_parseable_lines_with_service_and_request_id(monkeypatch, service_name, redis_url,
                                                                   redis_client, tmp_path):
    monkeypatch.setenv("LOG_FORMAT", "json")
    request_id, text = run_one_request(service_name, redis_url, redis_client, tmp_path)
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert records and all(r["service"] == service_name and r["host"] == socket.gethostname() for r in records)
    assert all({"level", "time", "logger", "message"} <= r.keys() for r in records)
    mine = [r for r in records if r.get("request_id") == request_id]
    assert any(r["message"] == "status started" and r["level"] == "INFO" for r in mine), records


@pytest.mark.parametrize("log_format", ["text", None])
def test_text_logs_carry_service_and_request_id(monkeypatch, service_name, redis_url, redis_client, tmp_path,
                                                log_format):
    if log_format is None:
        monkeypatch.delenv("LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("LOG_FORMAT", log_format)
    request_id, text = run_one_request(service_name, redis_url, redis_client, tmp_path)
    started = [line for line in text.splitlines() if "status started" in line]
    assert started and service_name in started[0] and request_id in started[0], text
