"""The REST proxy over real HTTP, in front of a real agent and writer (RabbitMQ, Redis, ZMQ)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import ServiceProcess, service_stack, wait_until
from helpers.services import start_agent, start_rest, start_writer


@dataclass
class Rest:
    process: ServiceProcess
    url: str
    agent: str
    writer: str
    output_root: Path


@pytest.fixture(scope="module")
def rest(tmp_path_factory, redis_url, broker_url):
    directory = tmp_path_factory.mktemp("rest")
    with service_stack(redis_url, broker_url) as stack:
        agent_name, writer_name = stack.name("hp_io_agent"), stack.name("writer")
        agent, endpoint = start_agent(agent_name, redis_url, stack.redis, directory, movie_rate_hz=500,
                                      pulse_height_rate_hz=100)
        stack.add(agent)
        stack.add(start_writer(writer_name, redis_url, stack.redis, directory, [(agent_name, endpoint)]))
        process, url = start_rest(stack.name("rest"), redis_url, stack.redis, directory, writers=[writer_name],
                                  agents=[agent_name], sync_timeout_seconds=20)
        stack.add(process)
        yield Rest(process, url, agent_name, writer_name, directory / "out")


def test_health_services_and_openapi_document_every_route(rest):
    health = requests.get(f"{rest.url}/health", timeout=5).json()
    assert health["status"] == "ok" and health["broker_connected"] and health["redis_connected"]
    services = requests.get(f"{rest.url}/services", timeout=5).json()["services"]
    assert {rest.agent, rest.writer, rest.process.service_name} <= set(services)
    paths = requests.get(f"{rest.url}/openapi.json", timeout=5).json()["paths"]
    assert set(paths) == {"/write_sync", "/write_async", "/write_kill", "/init_hp_io", "/init_sim", "/stop_hp_io",
                          "/services", "/requests", "/requests/{request_id}", "/status", "/config/{service}", "/health",
                          "/openapi.json"}
    assert set(paths["/config/{service}"]) == {"get", "put"}
    assert "n_images" in paths["/write_sync"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]


def test_write_sync_answers_like_std_daq_with_the_file(rest):
    answer = requests.post(f"{rest.url}/write_sync", json={"sources": rest.agent, "n_images": 20,
                                                           "output_file": "sync.h5"}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    response = body["response"]
    assert body["status"] == "ok" and response["status"] == "request_success"
    assert response["output_file"] == str(rest.output_root / "sync.h5") and Path(response["output_file"]).exists()
    assert response["init_timestamp"] <= response["end_timestamp"] and response["frames"] > 0
    history = requests.get(f"{rest.url}/requests/{body['request_id']}", timeout=5).json()["statuses"]
    assert [s["action"] for s in history][-1] == "request_success"
    assert {"request_received", "request_start"} <= {s["action"] for s in history}
    recent = requests.get(f"{rest.url}/status", timeout=5).json()["requests"]
    assert any(r["request_id"] == body["request_id"] and r["request_type"] == "write" for r in recent)


def test_request_history_names_the_http_caller_and_filters(rest):
    before = time.time()
    answer = requests.post(f"{rest.url}/write_sync", json={"n_images": 5, "output_file": "audited.h5"},
                           headers={"X-Caller-User": "alice"}, timeout=30).json()

    def records(**query):
        found = requests.get(f"{rest.url}/requests", params=query, timeout=5)
        assert found.status_code == 200, found.text
        return found.json()["requests"]

    record = wait_until(lambda: next((r for r in records(service=rest.writer, type="write", since=before)
                                      if r["request_id"] == answer["request_id"] and r["ended"]), None), 10,
                        message="the write in the audit trail")
    assert record["caller"] == {"host": "127.0.0.1", "user": "alice"} and record["outcome"] == "request_success"
    assert record["request"]["output_file"] == "audited.h5" and record["result"]["frames"] > 0
    assert not [r for r in records(service=rest.writer, until=before - 1) if r["request_id"] == answer["request_id"]]
    assert not records(service=rest.writer, type="init_sim", since=before)
    for bad in ({"since": "yesterday"}, {"until": "nan"}, {"limit": "0"}, {"limit": "x"}):
        answered = requests.get(f"{rest.url}/requests", params=bad, timeout=5)
        assert answered.status_code == 400 and answered.json()["status"] == "error", answered.text


def test_write_async_then_kill(rest):
    answer = requests.post(f"{rest.url}/write_async", json={"output_file": "async.h5"}, timeout=10).json()
    request_id = answer["request_id"]

    def actions():
        return [s["action"] for s in requests.get(f"{rest.url}/requests/{request_id}", timeout=5).json()["statuses"]]

    wait_until(lambda: "request_progress" in actions(), 15, interval=0.1, message="write in progress")
    kill = requests.post(f"{rest.url}/write_kill", json={"request_id": request_id}, timeout=30)
    assert kill.status_code == 200 and kill.json()["status"] == "ok", kill.text
    assert kill.json()["response"]["status"] == "request_killed" and actions()[-1] == "request_killed"
    assert (rest.output_root / "async.h5").exists()


def test_std_daq_readme_calls_get_std_daq_answers(rest):
    """The curl calls of std_daq_service/rest/README.md, with our source and output root."""
    headers = {"Content-type": "application/json"}
    output_file = str(rest.output_root / "test.h5")
    before = time.time()
    r = requests.post(url=f"{rest.url}/write_sync", json={"n_images": 5, "output_file": output_file,
                                                          "sources": rest.agent}, headers=headers, timeout=30)
    after = time.time()
    assert r.status_code == 200, r.text
    body = r.json()
    response = body["response"]
    assert {"request_id", "response"} <= set(body)
    assert response["status"] == "request_success" and response["output_file"] == output_file
    assert before <= response["init_timestamp"] <= response["end_timestamp"] <= after, "the request's start and end"
    assert response["first_timestamp_ns"] <= response["last_timestamp_ns"], "frame times keep their own names"

    r = requests.post(url=f"{rest.url}/write_async", json={"n_images": 100_000, "output_file": output_file,
                                                           "sources": rest.agent, "overwrite": True},
                      headers=headers, timeout=10)
    assert r.status_code == 200 and "request_id" in r.json()
    req_id = str(r.json()["request_id"])
    wait_until(lambda: any(s["action"] == "request_start" for s in requests.get(
        f"{rest.url}/requests/{req_id}", timeout=5).json()["statuses"]), 15, interval=0.1, message="write started")
    r = requests.post(url=f"{rest.url}/write_kill", json={"request_id": req_id}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    response = body["response"]
    assert body["request_id"] == req_id
    assert response["status"] == "request_killed" and response["output_file"] == output_file
    assert response["init_timestamp"] <= response["end_timestamp"] <= time.time()


def test_killing_a_request_the_proxy_never_saw_is_unknown(rest):
    r = requests.post(f"{rest.url}/write_kill", json={"request_id": "no-such-request"}, timeout=10)
    assert r.status_code == 404 and "saw no status of request no-such-request" in r.json()["message"]


def test_stop_init_sim_to_the_configured_agents_and_config_round_trip(rest):
    stop = requests.post(f"{rest.url}/stop_hp_io", json={"targets": rest.agent}, timeout=30)
    assert stop.status_code == 200 and stop.json()["responses"][rest.agent]["status"] == "request_success"
    answer = requests.post(f"{rest.url}/init_sim", json={"force": True, "movie_rate_hz": 500,  # no targets: config
                                                         "pulse_height_rate_hz": 100}, timeout=30)
    assert answer.status_code == 200, answer.text
    responses = answer.json()["responses"]
    assert set(responses) == {rest.agent} and responses[rest.agent]["status"] == "request_success"
    config = requests.get(f"{rest.url}/config/{rest.writer}", timeout=5).json()["config"]
    config["max_concurrent_writes"] = 4
    put = requests.put(f"{rest.url}/config/{rest.writer}", json=config, timeout=5)
    assert put.status_code == 200 and put.json()["config"]["max_concurrent_writes"] == 4


@pytest.mark.parametrize("method, path, kwargs, code, message", [
    ("post", "/write_sync", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
     "not valid JSON"),
    ("post", "/write_sync", {"json": [1, 2]}, 400, "must be a JSON object"),
    ("post", "/write_sync", {"json": {"output_file": "x.h5", "n_images": "many"}}, 400, "n_images"),
    ("post", "/write_sync", {"json": {"output_file": "x.h5", "colour": "red"}}, 400, "colour: unknown field"),
    ("post", "/write_sync", {"json": {"output_file": "x.h5", "n_images": 1, "writer": "no.such.writer"}}, 404,
     "no service named 'no.such.writer'"),
    ("post", "/write_sync", {"json": {"output_file": "../../etc/x.h5", "n_images": 1}}, 400, "'..' is not allowed"),
    ("post", "/write_kill", {"json": {}}, 400, "request_id"),
    ("post", "/write_kill", {"json": {"request_id": "x", "force": True}}, 400, "force: unknown field"),
    ("post", "/init_hp_io", {"json": {"data_dir": "/no/such/dir", "targets": "x.writer"}}, 400,
     "not hp_io_agent services"),
    ("get", "/requests/00000000-0000-0000-0000-000000000000", {}, 404, "no request"),
    ("get", "/config/nobody.nowhere.writer", {}, 404, "nobody.nowhere.writer"),
    ("put", "/config/nobody.nowhere.writer", {"json": {"agents": []}}, 400, "agents"),
    ("get", "/no_such_endpoint", {}, 404, "Not Found"),
    ("get", "/write_sync", {}, 405, "method is not allowed"),
    ("post", "/write_sync", {"data": b"x" * (2 << 20)}, 413, "too large"),
])
def test_bad_input_gets_the_right_code_and_a_message(rest, method, path, kwargs, code, message):
    answer = getattr(requests, method)(f"{rest.url}{path}", timeout=15, **kwargs)
    assert answer.status_code == code, answer.text
    body = answer.json()
    assert body["status"] == "error" and message.lower() in body["message"].lower(), body


def test_agent_failure_keeps_its_reason(rest):
    answer = requests.post(f"{rest.url}/init_hp_io", json={"data_dir": "/no/such/dir", "targets": rest.agent},
                           timeout=15)
    assert answer.status_code == 404, "a missing data dir is an unknown target"
    assert "data_dir '/no/such/dir' does not exist" in answer.json()["message"]


def test_a_proxy_beyond_loopback_without_a_token_refuses_to_start(new_service_name, redis_client, redis_url,
                                                                  tmp_path):
    name = new_service_name("rest")
    for config, reason in (({}, "beyond loopback and no token is set"),
                           ({"token": "t"}, "cannot listen"),  # 192.0.2.1 (TEST-NET) is on no interface here
                           ({"allow_unauthenticated_remote": True}, "cannot listen")):
        redis_client.set(f"config.{name}", json.dumps({"host": "192.0.2.1", "port": 5000, **config}))
        ended = subprocess.run([sys.executable, "-m", "std_daq_service.rest"], capture_output=True, text=True,
                               timeout=60, env={**os.environ, "SERVICE_NAME": name, "REDIS_URL": redis_url})
        assert ended.returncode == 2 and reason in ended.stderr, (config, ended.stderr)


def test_token_and_sync_timeout(rest, new_service_name, redis_url, redis_client, tmp_path):
    process, url = start_rest(new_service_name("rest"), redis_url, redis_client, tmp_path, writers=[rest.writer],
                              token="s3cret", sync_timeout_seconds=1)
    try:
        body = {"output_file": "slow.h5", "duration_seconds": 3}
        assert requests.post(f"{url}/write_sync", json=body, timeout=10).status_code == 401
        assert requests.get(f"{url}/services", timeout=5).status_code == 200, "reading needs no token"
        wrong = {"Authorization": "Bearer s3creT"}  # as long as the token: compared in constant time, refused
        assert requests.post(f"{url}/write_sync", json=body, headers=wrong, timeout=10).status_code == 401
        config = requests.get(f"{url}/config/{rest.writer}", timeout=5).json()["config"]
        for method, path, payload in (("PUT", f"/config/{rest.writer}", config), ("POST", "/write_kill",
                                      {"request_id": "x"}), ("POST", "/init_sim", {}), ("POST", "/stop_hp_io", {}),
                                      ("POST", "/ui", {}), ("POST", "/requests", {})):
            answer = requests.request(method, f"{url}{path}", json=payload, timeout=10)
            assert answer.status_code == 401, (method, path, answer.text)
        for path in ("/ui", "/ui/state.json", "/requests", "/status"):
            assert requests.get(f"{url}{path}", timeout=10).status_code == 200, f"GET {path} is read-only"
        answer = requests.post(f"{url}/write_sync", json=body, headers={"Authorization": "Bearer s3cret"},
                               timeout=10)
        assert answer.status_code == 504 and "keeps running" in answer.json()["message"]
        request_id = answer.json()["request_id"]
        wait_until(lambda: requests.get(f"{url}/requests/{request_id}", timeout=5).json()["statuses"][-1]["action"]
                   == "request_success", 15, interval=0.2, message="the timed-out write finishes")
    finally:
        assert process.stop() == 0, process.log()
