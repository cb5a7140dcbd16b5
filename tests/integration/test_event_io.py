"""Coincidence events out of the builder: the client's `stream_events` and the writer's `write` with an event source.

Two real agents tail Hashpipe-written ph256 files with injected coincidences; a real builder matches them; a real
writer records its events; the client streams them. The published events are read by a plain ZMQ subscriber.
"""

from __future__ import annotations

import asyncio
import threading
import time

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter for reading)
import numpy as np
import pytest
from conftest import service_stack, wait_until
from helpers.coincidences import start_builder, start_tracking_agent, write_modules
from helpers.services import start_writer
from helpers.streams import ask, subscriber

from std_daq_service.broker import RequestCaller
from std_daq_service.client import AioDaqDataClient, DaqDataClient
from std_daq_service.protocol import EVENT_TOPIC, StatusRequest, UnknownTarget, WriteRequest, decode_event
from std_daq_service.writer.event_recording import EVENT_FIELDS, MEMBER_FIELDS


def coincidences(t0: int, n: int, seed: int) -> dict[int, list[tuple[int, int, bool]]]:
    """Frames of modules 1 and 3: `n` coincidences 20 ms apart (module 1 on two quabos), and lone hits between."""
    rng = np.random.default_rng(seed)
    times = t0 + 10_000_000 + np.arange(n) * 20_000_000
    module_1 = [(int(t), 0, True) for t in times] + [(int(t) + 12, 2, True) for t in times]
    module_1 += [(int(t) + 7_000_000, int(rng.integers(4)), True) for t in times]
    module_3 = [(int(t) + int(rng.integers(-900, 900)), 1, True) for t in times]
    module_3 += [(int(t) + 13_000_000, int(rng.integers(4)), True) for t in times]
    return {1: module_1, 3: module_3}


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_url, broker_url):
    """Two agents (modules 1 and 3), a builder matching them, a writer recording the agents and the builder."""
    directory = tmp_path_factory.mktemp("event_io")
    with service_stack(redis_url, broker_url) as stack, RequestCaller(broker_url, "test-event-io") as caller:
        agents, directories = [], {}
        for m in (1, 3):
            directories[m] = directory / f"node{m}"
            directories[m].mkdir()
            name = stack.name("hp_io_agent")
            agent, data = start_tracking_agent(name, redis_url, stack.redis, directories[m], caller)
            stack.add(agent)
            agents.append((name, data))
        builder_name = stack.name("event_builder")
        builder, events = start_builder(directory, builder_name, redis_url, stack.redis, agents)
        stack.add(builder)
        writer_name = stack.name("writer")
        stack.add(start_writer(writer_name, redis_url, stack.redis, directory, agents,
                               event_builders=[{"name": builder_name, "events": events}]))
        yield {"caller": caller, "builder": builder_name, "events": events, "writer": writer_name,
               "directories": directories, "output_root": directory / "out", "redis_url": redis_url,
               "broker_url": broker_url}


class Published:
    """Every event the builder publishes, read by a plain subscriber, and the client's `stream_events` beside it."""

    def __init__(self, system: dict):
        self.system = system
        self.events: list = []
        self.streamed: list[dict] = []
        self.awaited: list[dict] = []
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._stream, daemon=True),
                         threading.Thread(target=asyncio.run, args=(self._await(),), daemon=True)]

    def _stream(self) -> None:
        with DaqDataClient(redis_url=self.system["redis_url"], broker_url=self.system["broker_url"]) as client:
            for event in client.stream_events(stop_event=self.stop):
                self.streamed.append(event)

    async def _await(self) -> None:
        async with AioDaqDataClient(redis_url=self.system["redis_url"], broker_url=self.system["broker_url"]) as client:
            async for event in await client.stream_events([self.system["builder"]], stop_event=self.stop):
                self.awaited.append(event)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(10)

    def receive(self, sock) -> None:
        while sock.poll(0):
            self.events.append(decode_event(sock.recv_multipart()))


def test_the_client_streams_and_the_writer_records_the_published_events(system):
    caller = system["caller"]
    published = Published(system)
    with subscriber(system["events"], [EVENT_TOPIC.decode()]) as sock:
        published.start()
        try:
            # First run: until the subscriber, the client and the writer have each seen an event, all are connected.
            t0 = time.time_ns()
            write_modules(system["directories"], coincidences(t0, 20, seed=1), t0)
            received = lambda: ask(caller, system["writer"], StatusRequest()).result[  # noqa: E731
                "events_received"][system["builder"]]

            def everyone_saw_one():
                published.receive(sock)
                return published.events and published.streamed and published.awaited and received() > 0

            wait_until(everyone_saw_one, 30, interval=0.2, message="an event at the subscriber, client and writer")

            # Second run: a write of its first 12 events, asked before them and started in the past (ring buffer).
            t1 = time.time_ns()
            request_id = caller.publish(system["writer"], WriteRequest(
                output_file="events/run2.h5", sources=[system["builder"]], n_images=12, start_time=t1,
                timeout_seconds=30))
            write_modules(system["directories"], coincidences(t1, 15, seed=2), t1)
            final = caller.wait(request_id, [system["writer"]], 60).finals[system["writer"]]

            def second_run_everywhere():
                published.receive(sock)
                ids = {e.header.event_id for e in published.events if e.header.time_ns >= t1}
                return (len(ids) == 15 and ids <= {e["event_id"] for e in published.streamed}
                        and ids <= {e["event_id"] for e in published.awaited})

            wait_until(second_run_everywhere, 30, interval=0.2,
                       message="every event of the second run at the subscriber and the client")
        finally:
            published.close()

    second = [e for e in published.events if e.header.time_ns >= t1]
    assert [e.header.multiplicity for e in second] == [2] * 15
    assert all({m.module_id for m in e.header.members} == {1, 3} and len(e.header.members) == 3 for e in second)

    by_id = {e["event_id"]: e for e in published.streamed}
    awaited = {e["event_id"]: e for e in published.awaited}
    for event in second:
        streamed = by_id[event.header.event_id]
        assert awaited[event.header.event_id]["time_ns"] == streamed["time_ns"]
        assert {k: v for k, v in streamed.items() if k != "members"} == event.header.model_dump(exclude={"members"})
        for member, image, got in zip(event.header.members, event.images, streamed["members"], strict=True):
            assert {k: v for k, v in got.items() if k != "image_array"} == member.model_dump()
            assert np.array_equal(got["image_array"], image)

    assert final.action == "request_success", final.message
    result = final.result
    path = system["output_root"] / "events" / "run2.h5"
    assert result["output_file"] == str(path) and result["complete"] and result["events"] == 12
    assert result["source"] == system["builder"] and result["missing_events"] == 0
    recorded = second[:12]
    assert result["first_timestamp_ns"] == recorded[0].header.time_ns
    assert result["last_timestamp_ns"] == recorded[-1].header.time_ns
    assert not path.with_name("run2.h5.part").exists()
    with h5py.File(path, "r") as f:
        group = f["events"]
        for name in EVENT_FIELDS:
            assert group[name][()].tolist() == [getattr(e.header, name) for e in recorded]
        assert [d.decode() for d in group["domes"][()]] == ["" for _ in recorded]
        members = group["members"]
        flat = [(row, m, image) for row, e in enumerate(recorded) for m, image in zip(e.header.members, e.images,
                                                                                       strict=True)]
        assert members["event_index"][()].tolist() == [row for row, _, _ in flat]
        for name in MEMBER_FIELDS:
            assert members[name][()].tolist() == [getattr(m, name) for _, m, _ in flat]
        assert [s.decode() for s in members["source"][()]] == [m.source for _, m, _ in flat]
        assert [s.decode() for s in members["dp"][()]] == ["ph256"] * len(flat)
        images = group["images/ph256"][()]
        assert np.array_equal(images[members["image_index"][()]], np.stack([image for _, _, image in flat]))
        assert group.attrs["source"] == system["builder"] and group.attrs["n_events"] == 12
        assert group.attrs["n_members"] == len(flat) and group.attrs["missing_events"] == 0
        assert f.attrs["complete"] and f.attrs["first_timestamp_ns"] == recorded[0].header.time_ns
        assert not any(name.startswith("module_") for name in f)


def test_unknown_builders_and_mixed_sources_are_refused(system):
    with DaqDataClient(redis_url=system["redis_url"], broker_url=system["broker_url"]) as client:
        with pytest.raises(UnknownTarget):
            next(client.stream_events("nobody.nowhere.event_builder"))
    caller = system["caller"]
    agent = next(iter(ask(caller, system["writer"], StatusRequest()).result["agents"]))
    mixed = ask(caller, system["writer"], WriteRequest(output_file="mixed.h5", sources=[agent, system["builder"]]))
    assert mixed.action == "request_fail" and "not both" in mixed.message
