"""Hostile or careless input, generated with hypothesis: REST endpoints and broker requests never answer 500."""

from __future__ import annotations

import json

import pytest
import requests
from conftest import REPO, service_stack
from helpers.services import start_agent, start_rest, start_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from std_daq_service.broker import RequestCaller
from std_daq_service.protocol import REQUEST_TYPES, StatusRequest

FIELDS = sorted({name for model in REQUEST_TYPES.values() for name in model.model_fields} | {"targets", "writer"})
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                   st.text(max_size=300), st.lists(st.one_of(st.integers(-5, 2000), st.text(max_size=20)), max_size=5),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
BODIES = st.one_of(
    st.dictionaries(st.sampled_from([*FIELDS, "junk", ""]), VALUES, max_size=6),
    st.lists(VALUES, max_size=3),
    VALUES,
)
RAW = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def services(tmp_path_factory, redis_url, broker_url):
    directory = tmp_path_factory.mktemp("fuzz")
    with service_stack(redis_url, broker_url) as stack:
        names = [stack.name(kind) for kind in ("hp_io_agent", "writer", "rest")]
        agent, endpoint = start_agent(names[0], redis_url, stack.redis, directory, movie_rate_hz=200,
                                      pulse_height_rate_hz=50)
        stack.add(agent)
        stack.add(start_writer(names[1], redis_url, stack.redis, directory, [(names[0], endpoint)]))
        rest, url = start_rest(names[2], redis_url, stack.redis, directory, writers=["nobody.nowhere.writer"],
                               agents=["nobody.nowhere.hp_io_agent"])  # never the live agents of other tests
        stack.add(rest)
        yield names, url


def check_answer(answer: requests.Response) -> None:
    assert answer.status_code < 500 or answer.status_code in (502, 504), answer.text
    body = answer.json()
    assert body["status"] in ("ok", "error") and (body["status"] == "ok" or body["message"])


@SETTINGS
@given(path=st.sampled_from(["/write_sync", "/write_async", "/write_kill", "/init_hp_io", "/init_sim",
                             "/stop_hp_io", "/config/test.fuzz.writer"]), body=BODIES)
def test_rest_endpoints_answer_any_json_with_a_clear_error_or_a_result(services, path, body):
    _, url = services
    if isinstance(body, dict) and path in ("/init_hp_io", "/init_sim", "/stop_hp_io"):
        body["targets"] = "nobody.nowhere.hp_io_agent"  # validation is fuzzed; no live agent is driven
    method = requests.put if path.startswith("/config") else requests.post
    data = json.dumps(body, allow_nan=True)  # NaN and Infinity too, which JSON does not allow
    check_answer(method(f"{url}{path}", data=data, headers={"Content-Type": "application/json"}, timeout=30))


@SETTINGS
@given(path=st.sampled_from(["/write_sync", "/init_sim", "/config/test.fuzz.writer",
                             "/requests/x", "/services"]), raw=RAW)
def test_rest_endpoints_answer_any_bytes(services, path, raw):
    _, url = services
    method = requests.put if path.startswith("/config") else requests.get if path[1] in "rs" else requests.post
    check_answer(method(f"{url}{path}", data=raw, headers={"Content-Type": "application/json"}, timeout=30))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(BODIES.map(lambda b: json.dumps(b, allow_nan=True).encode()), RAW),
       request_type=st.sampled_from([*REQUEST_TYPES, None]))
def test_broker_requests_of_any_shape_get_a_final_status_and_no_service_wedges(services, broker_url, body,
                                                                               request_type):
    (agent, writer, _), _ = services
    if request_type is not None and body.startswith(b"{") and body != b"{}":
        body = b'{"request_type": "%s", ' % request_type.encode() + body[1:]
    with RequestCaller(broker_url, "test-fuzz") as caller:
        for target in (agent, writer):
            request_id = caller.publish(target, body)
            result = caller.wait(request_id, [target], 10)
            if not result.complete:  # a valid long request (an open-ended write): stop it
                caller.kill(target, request_id)
                result = caller.wait(request_id, [target], 30)
            final = result.finals[target]
            assert final.action in ("request_success", "request_fail", "request_killed"), final
            if final.action == "request_fail":
                assert final.result["http_status"] < 500 or final.result["http_status"] == 507, final.message
        assert caller.call([agent, writer], StatusRequest(), 15).ok, "both services still answer"


def test_no_pickle_eval_or_exec_of_received_data():
    sources = "\n".join(p.read_text() for p in (REPO / "std_daq_service").rglob("*.py"))
    for banned in ("import pickle", "pickle.loads", "eval(", "exec(", "yaml.load(", "marshal.loads"):
        assert banned not in sources, f"{banned} in std_daq_service"
