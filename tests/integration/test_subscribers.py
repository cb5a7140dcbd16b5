"""Who is subscribed to an agent, and which subscribers an init without `force` waits for (real services)."""

from __future__ import annotations

import pytest
from conftest import service_stack, wait_until
from helpers.services import start_agent, start_writer

from std_daq_service.broker import RequestCaller
from std_daq_service.client import DaqDataClient
from std_daq_service.protocol import InitSimRequest, StatusRequest


@pytest.fixture
def node(tmp_path, redis_url, broker_url):
    """An agent simulating a run and a writer subscribed to it (the normal deployment)."""
    with service_stack(redis_url, broker_url) as stack:
        agent_name = stack.name("hp_io_agent")
        agent, endpoint = start_agent(agent_name, redis_url, stack.redis, tmp_path, movie_rate_hz=200,
                                      pulse_height_rate_hz=50, update_interval_seconds=0.1)
        stack.add(agent)
        writer_name = stack.name("writer")
        stack.add(start_writer(writer_name, redis_url, stack.redis, tmp_path, [(agent_name, endpoint)]))
        with RequestCaller(broker_url, "test-subscribers") as caller:
            yield caller, agent_name, writer_name


def subscribed(caller: RequestCaller, agent: str) -> dict:
    final = caller.call(agent, StatusRequest(), 10).finals[agent]
    return final.result["subscribed"]


def init_sim(caller: RequestCaller, agent: str, **fields):
    return caller.call(agent, InitSimRequest(movie_rate_hz=200, pulse_height_rate_hz=50, **fields), 15).finals[agent]


def test_a_writer_does_not_block_an_init_but_a_user_stream_does_and_is_named(node):
    caller, agent, writer = node
    wait_until(lambda: subscribed(caller, agent)["names"].get("writer") == [writer], 10,
               message="the agent knows the writer by name")
    assert subscribed(caller, agent) == {"users": 0, "infrastructure": 1, "unknown": 0, "names": {"writer": [writer]}}
    final = init_sim(caller, agent)
    assert final.action == "request_success", final.message

    with DaqDataClient() as client:
        images = client.stream_images([agent], update_interval_seconds=0.1)
        next(images)  # subscribed; the stream stays open while the generator waits
        wait_until(lambda: subscribed(caller, agent)["users"] == 1, 10, message="the agent counts the user stream")
        now = subscribed(caller, agent)
        assert now["infrastructure"] == 1 and now["unknown"] == 0 and len(now["names"]["user"]) == 1
        user = now["names"]["user"][0]
        refused = init_sim(caller, agent)
        assert refused.action == "request_fail" and refused.result["http_status"] == 409, refused
        assert f"1 user stream(s) (stream request {user})" in refused.message and "force=true" in refused.message
        images.close()
    wait_until(lambda: subscribed(caller, agent)["users"] == 0, 10, message="the closed stream is no longer counted")
    final = init_sim(caller, agent)
    assert final.action == "request_success", final.message
