"""Event builder on synthetic hits: grouping, window edges, offsets, multiplicity, domes, reorder buffer, events."""

import json

import numpy as np
import orjson
import pytest

from std_daq_service.config import EventBuilderConfig
from std_daq_service.event_builder.accidentals import AccidentalEstimator
from std_daq_service.event_builder.coincidence import (
    MatchRules,
    find_events,
    group_hits,
    multiplicity,
    shifted_event_counts,
)
from std_daq_service.event_builder.domes import domes_of_obs_config, module_id_of_ip
from std_daq_service.event_builder.event_assembler import EventAssembler, match_rules
from std_daq_service.protocol import (
    EVENT_TOPIC,
    EventHeader,
    InvalidMessage,
    decode_event,
    decode_frames,
    encode_event,
    encode_frames,
)

T0 = 1_721_882_693_000_000_000
AGENTS = [{"name": "a.n1.hp_io_agent", "data": "tcp://127.0.0.1:1"}, {"name": "a.n2.hp_io_agent",
                                                                      "data": "tcp://127.0.0.1:2"}]


def events_of(times, modules, rules, hit_window_ns=100):
    hits = group_hits(np.array(modules), np.array(times, dtype=np.int64), hit_window_ns)
    events = find_events(hits.time_ns, hits.module, rules)
    return [sorted(set(hits.module[a:b].tolist())) for a, b in zip(events.start, events.stop, strict=True)]


def ph256_batch(module_id, times, quabos=None, seq0=0, peak=100):
    n = len(times)
    images = np.zeros((n, 16, 16), dtype="<i2")
    images[:, 3, 4] = peak
    parts = encode_frames(
        source="test", origin="file", module_id=module_id, dp="ph256", shape=(16, 16), run="obs_test", file=None,
        seqno=0, frame_number=np.arange(n), seq=np.arange(seq0, seq0 + n),
        wr_timestamp_ns=np.asarray(times, dtype=np.int64), host_timestamp_ns=np.asarray(times, dtype=np.int64),
        pff_fields={"quabo_num": np.asarray(quabos if quabos is not None else np.zeros(n), dtype=np.int64)},
        image_bytes=images.tobytes())
    return decode_frames(parts)


def assembler(**config):
    config = EventBuilderConfig(agents=AGENTS, **config)
    return EventAssembler("a.head.event_builder", config, match_rules(config, config.domes),
                          [agent["name"] for agent in AGENTS])


# --- grouping and matching ---------------------------------------------------------------------------------------

def test_quabo_frames_of_one_module_within_the_hit_window_are_one_hit_and_the_window_edge_is_inclusive():
    times = [T0, T0 + 7, T0 + 30, T0 + 130, T0 + 231]  # gaps 7, 23, 100 (joins), 101 (splits)
    hits = group_hits(np.full(5, 1), np.array(times), 100)
    assert hits.time_ns.tolist() == [T0, T0 + 231]
    assert np.diff(hits.starts).tolist() == [4, 1]
    assert hits.last_ns.tolist() == [T0 + 130, T0 + 231]


def test_frames_of_different_modules_never_join_one_hit():
    hits = group_hits(np.array([1, 3]), np.array([T0, T0 + 5]), 100)
    assert hits.module.tolist() == [1, 3]


def test_hits_at_exactly_the_window_coincide_and_one_ns_more_do_not():
    rules = MatchRules(window_ns=1000)
    assert events_of([T0, T0 + 1000], [1, 3], rules) == [[1, 3]]
    assert events_of([T0, T0 + 1001], [1, 3], rules) == []
    assert events_of([T0 + 1000, T0], [1, 3], rules) == [[1, 3]]  # either module first


def test_hits_of_one_module_alone_never_make_an_event():
    assert events_of([T0, T0 + 500], [1, 1], MatchRules(1000)) == []


def test_multiplicity_counts_modules_and_min_modules_refuses_smaller_events():
    times, modules = [T0, T0 + 300, T0 + 900, T0 + 50_000, T0 + 50_400], [1, 2, 3, 1, 2]
    assert events_of(times, modules, MatchRules(1000)) == [[1, 2, 3], [1, 2]]
    assert events_of(times, modules, MatchRules(1000, min_modules=3)) == [[1, 2, 3]]
    hits = group_hits(np.array(modules), np.array(times), 100)
    assert multiplicity(hits.module, find_events(hits.time_ns, hits.module, MatchRules(1000))).tolist() == [3, 2]


def test_modules_of_one_dome_do_not_coincide_when_domes_are_known_and_do_when_one_is_unknown():
    domes = {1: "astrograph", 2: "astrograph", 3: "barnard"}
    rules = MatchRules(1000, domes=domes)
    assert events_of([T0, T0 + 100], [1, 2], rules) == []
    assert events_of([T0, T0 + 100], [1, 3], rules) == [[1, 3]]
    assert events_of([T0, T0 + 100], [1, 7], rules) == [[1, 7]]  # module 7's dome unknown: 2 modules suffice
    assert events_of([T0, T0 + 100], [1, 2], MatchRules(1000, min_domes=1, domes=domes)) == [[1, 2]]


def test_a_failed_anchor_lets_the_next_hit_start_an_event():
    rules = MatchRules(1000, domes={1: "a", 2: "a", 3: "b"})
    assert events_of([T0, T0 + 500, T0 + 1200], [1, 2, 3], rules) == [[2, 3]]


def test_the_anchor_window_does_not_chain_beyond_its_width():
    assert events_of([T0, T0 + 900, T0 + 1800], [1, 2, 3], MatchRules(1000)) == [[1, 2]]


def reference_events(times, modules, rules):
    """The rules of coincidence.py read literally, one hit at a time (slow, obviously right)."""
    events, i = [], 0
    while i < len(times):
        j = i
        while j < len(times) and times[j] - times[i] <= rules.window_ns:
            j += 1
        if rules.accepts(set(modules[i:j])):
            events.append((i, j))
            i = j
        else:
            i += 1
    return events


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_matching_equals_the_rules_read_one_hit_at_a_time(seed):
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(0, 2_000_000, 3000))  # dense: many crowded windows and isolated pairs
    modules = rng.choice([1, 2, 3, 4], len(times))
    rules = MatchRules(1000, min_modules=2, domes={1: "a", 2: "a", 3: "b"})
    events = find_events(times, modules, rules)
    assert list(zip(events.start.tolist(), events.stop.tolist(), strict=True)) == \
        reference_events(times.tolist(), modules.tolist(), rules)


def test_time_offsets_move_a_module_before_matching():
    config = dict(coincidence_window_ns=1000, time_offsets_ns={3: 5000}, max_latency_ms=1)
    builder = assembler(**config)
    builder.add(AGENTS[0]["name"], ph256_batch(1, [T0]), 0.0)
    builder.add(AGENTS[1]["name"], ph256_batch(3, [T0 + 5400]), 0.0)
    [message] = builder.release(10.0)
    event = decode_event(message)
    assert [(m.module_id, m.wr_timestamp_ns, m.time_ns) for m in event.header.members] == \
        [(1, T0, T0), (3, T0 + 5400, T0 + 400)]


def test_shifted_matching_finds_the_random_rate_not_the_injected_coincidences():
    rng = np.random.default_rng(1)
    seconds, rate, window = 100, 2000.0, 1000
    t1 = np.sort(rng.integers(T0, T0 + seconds * 10**9, int(rate * seconds)))
    t3 = np.sort(rng.integers(T0, T0 + seconds * 10**9, int(rate * seconds)))
    injected = T0 + np.arange(1, 50) * 2 * 10**9
    times = np.concatenate((t1, injected, t3, injected + 250))
    modules = np.repeat([1, 1, 3, 3], [len(t1), len(injected), len(t3), len(injected)])
    order = np.argsort(times)
    hits = group_hits(modules[order], times[order], 100)
    found = find_events(hits.time_ns, hits.module, MatchRules(window))
    expected_random = rate * rate * 2 * window * 1e-9 * seconds  # 800
    counts = shifted_event_counts(hits.time_ns, hits.module, MatchRules(window), 20_000, 10)
    assert abs(counts.mean() - expected_random) < 5 * np.sqrt(expected_random / 10)
    assert abs(len(found) - len(injected) - expected_random) < 5 * np.sqrt(expected_random)


def test_the_live_accidental_estimator_agrees_with_one_pass_over_everything():
    rng = np.random.default_rng(2)
    times = np.sort(rng.integers(T0, T0 + 10**9, 20_000))
    modules = rng.choice([1, 3], len(times))
    rules = MatchRules(1000)
    whole = shifted_event_counts(times, modules, rules, 20_000, 10)
    estimator = AccidentalEstimator(rules, 20_000, 10)
    for chunk in np.array_split(np.arange(len(times)), 37):
        estimator.add(times[chunk], modules[chunk])
    assert 0 < estimator.counts.sum() <= whole.sum()
    assert estimator.counts.sum() >= 0.9 * whole.sum()  # only the last margin is not counted yet


# --- the live path: reorder buffer, late and invalid frames, events ----------------------------------------------

def test_frames_with_invalid_wr_time_are_counted_and_never_matched():
    builder = assembler(max_latency_ms=1)
    builder.add(AGENTS[0]["name"], ph256_batch(1, [T0, -1]), 0.0)
    builder.add(AGENTS[1]["name"], ph256_batch(3, [-1, -1]), 0.0)
    assert builder.release(10.0) == []
    assert builder.buffer.invalid_wr_frames == 3


def test_out_of_order_streams_are_matched_once_both_passed_the_budget():
    builder = assembler(max_latency_ms=1)  # 1 ms of WR time, 1 ms of wall time
    a, b = AGENTS[0]["name"], AGENTS[1]["name"]
    builder.add(b, ph256_batch(3, [T0 - 10_000_000]), 0.0)
    builder.add(a, ph256_batch(1, [T0, T0 + 5_000_000]), 0.0)
    assert builder.release(0.0) == []  # stream 3 is behind: its frames may still come
    builder.add(b, ph256_batch(3, [T0 + 200], seq0=1), 0.0)
    assert builder.release(0.0) == []  # T0 + 200 is not 1 ms behind stream 3's latest time yet
    builder.add(b, ph256_batch(3, [T0 + 3_000_000], seq0=2), 0.0)
    [message] = builder.release(0.0)
    assert decode_event(message).header.modules == [1, 3]
    assert builder.buffer.late_frames == 0


def test_a_stream_first_heard_behind_the_watermark_is_late():
    builder = assembler(max_latency_ms=1)
    builder.add(AGENTS[0]["name"], ph256_batch(1, [T0, T0 + 5_000_000]), 0.0)
    builder.release(0.0)
    builder.add(AGENTS[1]["name"], ph256_batch(3, [T0 + 200]), 0.0)
    assert builder.buffer.late_frames == 1


def test_frames_behind_the_watermark_are_late_counted_and_dropped():
    builder = assembler(max_latency_ms=1)
    a, b = AGENTS[0]["name"], AGENTS[1]["name"]
    builder.add(a, ph256_batch(1, [T0, T0 + 10_000_000]), 0.0)
    builder.add(b, ph256_batch(3, [T0 + 10_000_000]), 0.0)
    builder.release(0.0)
    assert builder.buffer.watermark_ns == T0 + 9_000_000
    builder.add(b, ph256_batch(3, [T0 + 100, T0 + 9_500_000], seq0=1), 0.0)
    assert builder.buffer.late_frames == 1
    assert builder.release(0.0) == []


def test_a_stream_that_stops_holds_the_others_no_longer_than_the_budget():
    builder = assembler(max_latency_ms=1000)
    a, b = AGENTS[0]["name"], AGENTS[1]["name"]
    builder.add(b, ph256_batch(3, [T0 + 300]), 0.0)  # stream 3 sends once, then stops
    builder.add(a, ph256_batch(1, [T0]), 0.5)
    assert builder.release(0.5) == []
    for step in range(1, 4):  # stream 1 goes on, 0.5 s of WR time per 0.5 s
        builder.add(a, ph256_batch(1, [T0 + step * 500_000_000], seq0=step), 0.5 + 0.5 * step)
    messages = builder.release(2.0)  # stream 3 silent for 2 s > 1 s: only stream 1's time counts
    assert [decode_event(m).header.modules for m in messages] == [[1, 3]]
    assert builder.buffer.watermark_ns == T0 + 500_000_000


def test_everything_pending_is_released_once_every_stream_is_silent():
    builder = assembler(max_latency_ms=1000)
    builder.add(AGENTS[0]["name"], ph256_batch(1, [T0]), 0.0)
    builder.add(AGENTS[1]["name"], ph256_batch(3, [T0 + 999]), 0.0)
    assert builder.release(0.5) == []
    assert len(builder.release(1.5)) == 1
    assert builder.buffer.n_pending == 0


def test_live_matching_in_batches_finds_what_one_pass_over_all_hits_finds():
    rng = np.random.default_rng(3)
    times = {m: np.sort(rng.integers(T0, T0 + 2 * 10**9, 5000)) for m in (1, 3)}
    times[3][:200] = times[1][::25][:200] + rng.integers(-900, 900, 200)  # injected coincidences
    times[3].sort()
    builder = assembler(max_latency_ms=50)
    found, now = [], 0.0
    cursors = {1: 0, 3: 0}
    while any(cursors[m] < len(times[m]) for m in cursors):
        now += 0.01
        for m, agent in ((1, AGENTS[0]["name"]), (3, AGENTS[1]["name"])):
            n = int(rng.integers(1, 60))
            chunk = times[m][cursors[m] : cursors[m] + n]
            if len(chunk):
                builder.add(agent, ph256_batch(m, chunk, seq0=cursors[m]), now)
            cursors[m] += n
        found += builder.release(now)
    found += builder.release(now + 10)
    all_t = np.concatenate((times[1], times[3]))
    all_m = np.repeat([1, 3], [len(times[1]), len(times[3])])
    hits = group_hits(all_m, all_t, 100)
    offline = find_events(hits.time_ns, hits.module, MatchRules(1000))
    assert [decode_event(m).header.time_ns for m in found] == hits.time_ns[offline.start].tolist()
    assert builder.buffer.late_frames == 0
    status = builder.status()
    assert status["events"] == len(offline) and status["multiplicity"] == {"2": len(offline)}
    assert sum(status["hits"].values()) == len(hits)


# --- the event message ---------------------------------------------------------------------------------------------

def test_event_message_round_trip_carries_members_and_images_and_matches_its_schema():
    builder = assembler(max_latency_ms=1)
    builder.add(AGENTS[0]["name"], ph256_batch(1, [T0, T0 + 20], quabos=[0, 2], peak=50), 0.0)
    builder.add(AGENTS[1]["name"], ph256_batch(3, [T0 + 480], quabos=[1], peak=77), 0.0)
    [message] = builder.release(10.0)
    assert message[0] == EVENT_TOPIC
    EventHeader.model_validate(orjson.loads(message[1]))
    event = decode_event(message)
    assert event.header.multiplicity == 2 and event.header.window_ns == 1000 and event.header.time_ns == T0
    assert [(m.module_id, m.quabo, m.seq, m.pixel_max, m.pixel_sum) for m in event.header.members] == \
        [(1, 0, 0, 50, 50), (1, 2, 1, 50, 50), (3, 1, 0, 77, 77)]
    assert [int(image[3, 4]) for image in event.images] == [50, 50, 77]
    again = decode_event(encode_event(event.header.model_dump(exclude={"kind", "protocol_version"}), event.images))
    assert again.header == event.header
    assert all(np.array_equal(x, y) for x, y in zip(again.images, event.images, strict=True))


@pytest.mark.parametrize("parts", [[b"event.", b"{}", b""], [b"x.", b"{}", b""], [b"event.", b"not json", b""]])
def test_malformed_event_messages_are_refused(parts):
    with pytest.raises(InvalidMessage):
        decode_event(parts)


def test_an_event_whose_images_do_not_match_its_members_is_refused():
    builder = assembler(max_latency_ms=1)
    builder.add(AGENTS[0]["name"], ph256_batch(1, [T0]), 0.0)
    builder.add(AGENTS[1]["name"], ph256_batch(3, [T0 + 1]), 0.0)
    [message] = builder.release(10.0)
    with pytest.raises(InvalidMessage, match="expected 1024"):
        decode_event([message[0], message[1], message[2][:-2]])


# --- domes ---------------------------------------------------------------------------------------------------------

def test_module_ids_and_domes_come_from_the_obs_config_ip_addresses(tmp_path):
    assert module_id_of_ip("192.168.0.4") == 1 and module_id_of_ip("192.168.0.12") == 3
    obs = {"domes": [{"name": "astrograph", "modules": [{"ip_addr": "192.168.0.4"}]},
                     {"name": "barnard", "modules": [{"ip_addr": "192.168.0.12"}, {"ip_addr": "192.168.0.16"}]}]}
    (tmp_path / "obs_config.json").write_text(json.dumps(obs))
    assert domes_of_obs_config(tmp_path / "obs_config.json") == {1: "astrograph", 3: "barnard", 4: "barnard"}
