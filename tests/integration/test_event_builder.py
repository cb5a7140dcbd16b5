"""The event builder process: two real agents tailing Hashpipe-written ph256 files, and the real Lick archive."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import SHARED_DATA, wait_until
from helpers.coincidences import WINDOW_NS, start_builder, start_tracking_agent, write_modules
from helpers.streams import ask, subscriber

from std_daq_service.protocol import EVENT_TOPIC, FindCoincidencesRequest, StatusRequest, decode_event

LICK_RUN = SHARED_DATA / "lick_2024-07-25" / "obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"
def test_two_agents_injected_coincidences_are_all_found_and_accidentals_match_the_random_rate(
        tmp_path, redis_url, redis_client, new_service_name, caller):
    rng = np.random.default_rng(16)
    seconds, rate_hz = 3, 3000
    t0 = time.time_ns()
    injected = t0 + np.sort(rng.choice(np.arange(1, seconds * 100), 60, replace=False)) * 10_000_000
    randoms = {m: rng.integers(t0, t0 + seconds * 10**9, seconds * rate_hz) for m in (1, 3)}
    for m, times in randoms.items():  # a random hit just before an injected one would take its place as anchor
        after = np.clip(np.searchsorted(injected, times), 0, len(injected) - 1)
        before = np.clip(after - 1, 0, len(injected) - 1)
        randoms[m] = times[(np.abs(injected[after] - times) > 2 * WINDOW_NS)
                           & (np.abs(injected[before] - times) > 2 * WINDOW_NS)]
    module_1 = [(int(t), int(rng.integers(4)), True) for t in randoms[1]]
    module_1 += [(int(t), 0, True) for t in injected] + [(int(t) + 12, 2, True) for t in injected]  # two quabos
    module_1 += [(int(t) + 5_000_000, 1, False) for t in injected[:10]]  # WR time invalid
    module_3 = [(int(t), int(rng.integers(4)), True) for t in randoms[3]] + [(int(t) + 300, 1, True) for t in injected]

    agents, directories = [], {}
    try:
        for m in (1, 3):
            directories[m] = tmp_path / f"node{m}"
            directories[m].mkdir()
            name = new_service_name("hp_io_agent")
            agents.append((name, *start_tracking_agent(name, redis_url, redis_client, directories[m], caller)))
        builder_name = new_service_name("event_builder")
        builder, endpoint = start_builder(tmp_path, builder_name, redis_url, redis_client,
                                          [(name, data) for name, _, data in agents], max_latency_ms=3000)
        try:
            with subscriber(endpoint, [EVENT_TOPIC.decode()]) as sock:
                wait_until(lambda: ask(caller, builder_name, StatusRequest()).action == "request_success", 10)
                for agent_name, _, _ in agents:  # infrastructure: an init without force does not wait for it
                    wait_until(lambda n=agent_name: builder_name in ask(caller, n, StatusRequest()).result[
                        "subscribed"]["names"].get("event_builder", []), 10, message="the builder declared")
                write_modules(directories, {1: module_1, 3: module_3}, t0)
                events = []
                done = lambda: ask(caller, builder_name, StatusRequest()).result  # noqa: E731

                def all_released():
                    while sock.poll(0):
                        events.append(decode_event(sock.recv_multipart()))
                    status = done()
                    return (sum(status["frames_received"].values()) == len(module_1) + len(module_3)
                            and status["pending_frames"] == 0
                            and status["events"] == status["events_published"] == len(events))

                wait_until(all_released, 60, interval=0.2, message="every frame matched and every event received")
                status = done()
        finally:
            assert builder.stop() == 0, builder.log()
    finally:
        for _, agent, _ in agents:
            assert agent.stop() == 0, agent.log()

    members = {(m.module_id, m.wr_timestamp_ns) for e in events for m in e.header.members}
    assert status["late_frames"] == 0, f"one agent fell more than the 3 s budget behind the other: {status}"
    assert all((1, int(t)) in members and (1, int(t) + 12) in members and (3, int(t) + 300) in members
               for t in injected)
    assert status["invalid_wr_frames"] == 10 and status["lost_frames"] == 0
    assert status["multiplicity"] == {"2": len(events)}
    accidental = status["accidental"]
    expected = rate_hz * rate_hz * 2 * WINDOW_NS * 1e-9 * accidental["covered_seconds"]
    assert abs(accidental["mean_events"] - expected) < 5 * np.sqrt(expected / accidental["shifts"]) + 1
    randoms_found = len(events) - len(injected)
    assert abs(randoms_found - len(randoms[1]) * len(randoms[3]) * 2 * WINDOW_NS / (seconds * 1e9)) \
        < 5 * np.sqrt(expected) + 1


@pytest.mark.real_data
def test_find_coincidences_in_the_lick_run_finds_three_events_half_a_microsecond_apart(
        tmp_path, redis_url, redis_client, new_service_name, caller):
    if not LICK_RUN.is_dir():
        pytest.skip(f"{LICK_RUN} is absent")
    name = new_service_name("event_builder")
    builder, _ = start_builder(tmp_path, name, redis_url, redis_client, [("none.n.hp_io_agent", "tcp://127.0.0.1:9")],
                               archive_root=str(SHARED_DATA))
    try:
        final = ask(caller, name, FindCoincidencesRequest(path=str(LICK_RUN.relative_to(SHARED_DATA)),
                                                          module_ids=[1, 3], accidental_shifts=200), timeout=120)
        outside = ask(caller, name, FindCoincidencesRequest(path="/etc"))
    finally:
        assert builder.stop() == 0, builder.log()
    assert final.action == "request_success", final.message
    result = final.result
    assert result["frames"] == 2 * 16487 and result["invalid_wr_frames"] == 0
    assert result["hits"] == {"1": 16393, "3": 16363}
    assert result["domes"] == {"1": "astrograph", "3": "barnard"}
    assert result["events"] == 3 and result["multiplicity"] == {"2": 3}
    assert result["time_differences_ns"] == {"1-3": [-474, -496, -507]}  # t(module 3) - t(module 1)
    assert result["accidental"]["events_per_shift_mean"] < 0.1 and result["accidental"]["poisson_expectation"] < 0.3
    assert outside.action == "request_fail" and "archive_root" in outside.message
