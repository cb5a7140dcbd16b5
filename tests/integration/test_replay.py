"""Writes that reach back past the ring buffer: the past is replayed from the agent's PFF files and joined to the
live frames (real RabbitMQ, Redis, ZMQ, HDF5; a run written the way Hashpipe writes, with real Lick frames)."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter for reading)
import numpy as np
import orjson
import pytest
import zmq
from conftest import SAMPLE_IMG16, SAMPLE_PH256_M1, SAMPLE_RUN, SHARED_DATA, ServiceProcess, service_stack, wait_until
from helpers.hashpipe import HashpipeFiles
from helpers.services import start_writer

from std_daq_service.broker import RequestCaller
from std_daq_service.pff import PffReader, format_run_dir_name
from std_daq_service.protocol import (
    FrameBatch,
    InitHpIoRequest,
    ReplayRequest,
    StreamRequest,
    WriteRequest,
    decode_stream_message,
    frame_time_ns,
    subscriber_topic,
)

SECOND = 1_000_000_000
PAST_S = 300  # the run began 5 minutes before the test
PAST_HZ = {"img16": 40, "ph256": 10}
LIVE_HZ = {"img16": 200, "ph256": 50}
REPLAY_FPS = 10_000


def lick_frames(path: Path, n: int = 200) -> list[bytes]:
    with PffReader(path) as reader:
        block = reader.block(0, n)
        return [bytes(row[block.header_size :]) for row in block.raw]


class Producer:
    """Module 1 of a Hashpipe run: a past written at once (times from 5 minutes ago), then live frames."""

    def __init__(self, data_dir: Path):
        start = datetime.now(timezone.utc) - timedelta(seconds=PAST_S)
        self.start_ns = int(start.timestamp()) * SECOND
        run_dir = data_dir / "module_1" / format_run_dir_name("Lick", start, "sci-data")
        self.files = HashpipeFiles(run_dir, 1, max_file_bytes=4 << 20, start=start).open()
        self.images = {"img16": lick_frames(SAMPLE_IMG16), "ph256": lick_frames(SAMPLE_PH256_M1)}
        self.count = dict.fromkeys(LIVE_HZ, 0)
        self.next_ns = dict.fromkeys(LIVE_HZ, self.start_ns)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._live, name="producer")

    def _write(self, dp: str, unix_ns: int) -> None:
        n = self.count[dp]
        self.files.write(dp, self.files.frame(dp, unix_ns, n, self.images[dp][n % len(self.images[dp])]))
        self.count[dp] += 1

    def write_past(self, until_ns: int) -> None:
        for dp, hz in PAST_HZ.items():
            while self.next_ns[dp] < until_ns:
                self._write(dp, self.next_ns[dp])
                self.next_ns[dp] += SECOND // hz
            self.files.flush(dp)

    def _live(self) -> None:
        while not self.stop.wait(0.005):
            now = time.time_ns()
            for dp, hz in LIVE_HZ.items():
                while self.next_ns[dp] <= now:
                    self._write(dp, self.next_ns[dp])
                    self.next_ns[dp] += SECOND // hz
                self.files.flush(dp)

    def close(self) -> None:
        if self.stop.is_set():
            return
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        self.files.close()


@dataclass
class System:
    agent: ServiceProcess
    writer: ServiceProcess
    producer: Producer
    output_root: Path
    directory: Path


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_url, broker_url):
    directory = tmp_path_factory.mktemp("replay")
    producer = Producer(directory / "data")
    producer.write_past(time.time_ns() - 20 * SECOND)
    try:
        with service_stack(redis_url, broker_url) as stack:
            name = stack.name("hp_io_agent")
            config = {"data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*",
                      "replay_bind": "tcp://127.0.0.1:*", "replay_max_frames_per_second": REPLAY_FPS,
                      "sim_data_dir": str(directory / "sim")}
            agent = stack.add(ServiceProcess("hp_io_agent", name, config, redis_url, directory))
            agent.wait_ready(stack.redis)
            with RequestCaller(broker_url, "test-replay-setup") as caller:
                endpoint = caller.call(name, StreamRequest(), 15).results()[name]["endpoints"]["data"]
                writer = stack.add(start_writer(stack.name("writer"), redis_url, stack.redis, directory,
                                                [(name, endpoint)]))
                caller.call(name, InitHpIoRequest(data_dir=str(directory / "data")), 15).results()
            producer.write_past(time.time_ns())  # the seconds since, at once; from now on frames come live
            producer.thread.start()
            yield System(agent, writer, producer, directory / "out", directory)
    finally:
        producer.close()


@pytest.fixture
def caller(broker_url):
    with RequestCaller(broker_url, "test-replay-caller") as caller:
        yield caller


def write(caller, system, timeout=120, **fields):
    name = system.writer.service_name
    result = caller.call(name, WriteRequest(**fields), timeout)
    assert result.complete, f"no final status: {result.history}"
    return result.finals[name]


def pff_frames(paths: list[Path], start_ns: int, stop_ns: int) -> dict:
    """The frames of a stream's files (in order) whose time lies in [start_ns, stop_ns)."""
    parts = {"images": [], "frame_number": [], "wr": [], "host": [], "file": []}
    for path in paths:
        with PffReader(path) as reader:
            for block in reader.iter_blocks():
                times = frame_time_ns(block.wr_timestamp_ns, block.host_timestamp_ns)
                inside = (times >= start_ns) & (times < stop_ns)
                parts["images"].append(block.images()[inside])
                parts["frame_number"].append(block.frame_numbers[inside])
                parts["wr"].append(block.wr_timestamp_ns[inside])
                parts["host"].append(block.host_timestamp_ns[inside])
                parts["file"].extend([path.name] * int(inside.sum()))
    out = {key: np.concatenate(values) for key, values in parts.items() if key != "file"}
    out["file"] = parts["file"]
    return out


def h5_stream(path: Path, module_id: int, dp: str) -> dict:
    with h5py.File(path, "r") as f:
        group = f[f"module_{module_id}/{dp}"]
        files = [name.decode() if isinstance(name, bytes) else name for name in group.attrs["files"]]
        return {"images": group["data"][()], "frame_number": group["frame_number"][()],
                "wr": group["wr_timestamp_ns"][()], "host": group["host_timestamp_ns"][()], "seq": group["seq"][()],
                "file": [files[i] for i in group["file_index"][()]], "attrs": dict(group.attrs),
                "root": dict(f.attrs)}


def assert_same_frames(recorded: dict, expected: dict, what: str) -> None:
    assert len(recorded["frame_number"]) == len(expected["frame_number"]) > 0, what
    assert recorded["file"] == expected["file"], f"{what}: frames from other files"
    for key in ("frame_number", "wr", "host", "images"):
        assert np.array_equal(recorded[key], expected[key]), f"{what}: {key} differs"


def test_a_write_reaching_minutes_back_equals_the_pff_frames_of_its_window(system, caller):
    wait_until(lambda: len(system.producer.files.written["img16"]) > PAST_S * PAST_HZ["img16"] + 1000, 30,
               message="live frames")
    start_ns = system.producer.start_ns + 60 * SECOND  # four minutes back, long before the 6 s ring buffer
    stop_ns = time.time_ns() + 2 * SECOND
    final = write(caller, system, output_file="minutes_back.h5", start_time=start_ns, stop_time=stop_ns,
                  module_ids=[1], data_products=["img16", "ph256"])
    assert final.action == "request_success", final.message
    result = final.result
    assert result["complete"] and result["missing_frames"] == 0, result
    replay = result["replay"]["agents"][system.agent.service_name]
    assert replay["complete"] and replay["frames"] > 0 and not replay["no_data"]
    assert result["replay"]["start_time_ns"] == start_ns and result["replay"]["stop_time_ns"] < stop_ns
    system.producer.close()
    path = system.output_root / "minutes_back.h5"
    for dp in ("img16", "ph256"):
        paths = sorted(system.producer.files.run_dir.glob(f"*.dp_{dp}.*"),
                       key=lambda p: int(p.name.split("seqno_")[1].split(".")[0]))
        recorded, expected = h5_stream(path, 1, dp), pff_frames(paths, start_ns, stop_ns)
        assert_same_frames(recorded, expected, dp)
        assert dp != "img16" or len(set(recorded["file"])) > 1, "the window spans several seqnos"
        assert (np.diff(recorded["seq"]) == 1).all(), f"{dp}: seq continuous across the seam"
        assert recorded["attrs"]["missing_frames"] == 0
    assert orjson.loads(recorded["root"]["replay"])["agents"][system.agent.service_name]["complete"]


def archives() -> list[Path]:
    full = SHARED_DATA / "lick_2024-07-25" / SAMPLE_RUN.name
    return [SAMPLE_RUN, *([full] if full.is_dir() else [])]


@pytest.mark.parametrize("archive", archives(), ids=lambda p: "full" if "shared" in str(p) else "sample")
def test_converting_an_archived_run_gives_every_frame_of_it(system, caller, archive):
    streams = {}
    for path in sorted(archive.glob("start_*.pff")):
        with PffReader(path) as reader:
            streams[(reader.name.module_id, reader.dp.name)] = path
    times = [frame_time_ns(b.wr_timestamp_ns, b.host_timestamp_ns) for p in streams.values()
             for b in PffReader(p).open().iter_blocks()]
    start_ns, stop_ns = min(int(t.min()) for t in times), max(int(t.max()) for t in times) + 1
    name = f"archive_{archive.parent.parent.name}.h5"
    final = write(caller, system, output_file=name, data_dir=str(archive), start_time=start_ns, stop_time=stop_ns)
    assert final.action == "request_success", final.message
    assert final.result["complete"] and final.result["end_reason"] == "the window was replayed from the agents' " \
                                                                      "PFF files"
    assert set(final.result["streams"]) == {f"{m}/{dp}" for m, dp in streams}
    for (module_id, dp), path in streams.items():
        recorded = h5_stream(system.output_root / name, module_id, dp)
        with PffReader(path) as reader:
            assert len(recorded["frame_number"]) == reader.n_frames, f"{module_id}/{dp}: every frame"
        assert_same_frames(recorded, pff_frames([path], start_ns, stop_ns), f"{module_id}/{dp}")
        assert np.array_equal(recorded["seq"], recorded["frame_number"]), "an untracked run: seq from 0"


def test_a_window_without_data_on_the_node_is_answered_as_such(system, caller):
    final = write(caller, system, output_file="nothing.h5", data_dir=str(SAMPLE_RUN),
                  start_time="2020-01-01T00:00Z", stop_time="2020-01-02T00:00Z")
    assert final.action == "request_success", final.message
    agent = system.agent.service_name
    replay = final.result["replay"]["agents"][agent]
    assert replay["no_data"] and replay["frames"] == 0 and replay["complete"]
    assert final.result["frames"] == 0
    assert any(agent in w and "no frames" in w for w in final.result["warnings"])


def replay_socket(caller, agent: str, replay_id: str) -> zmq.Socket:
    endpoint = caller.call(agent, StreamRequest(), 15).results()[agent]["endpoints"]["replay"]
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    for topic in (b"img16.", b"control.", subscriber_topic("replay", replay_id)):
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    return sock


def test_a_replay_request_for_the_future_or_an_empty_window_fails_with_the_reason(system, caller):
    agent = system.agent.service_name
    future = time.time_ns() + 3600 * SECOND
    result = caller.call(agent, ReplayRequest(start_time=future, stop_time=future + SECOND), 15)
    final = result.finals[agent]
    assert final.action == "request_fail" and final.result["http_status"] == 400 and "future" in final.message
    empty = orjson.dumps({"request_type": "replay", "start_time": future, "stop_time": future})
    request_id = caller.publish(agent, empty)
    final = caller.wait(request_id, [agent], 15).finals[agent]
    assert final.action == "request_fail" and "window is empty" in final.message


def test_a_replay_publishes_on_its_own_socket_marked_and_ends_with_replay_end(system, caller):
    agent = system.agent.service_name
    request_id = "replay-test-1"
    sock = replay_socket(caller, agent, request_id)
    try:
        start = system.producer.start_ns + 10 * SECOND
        caller.publish(agent, ReplayRequest(start_time=start, stop_time=start + 5 * SECOND, module_ids=[1],
                                            data_products=["img16"]), request_id)
        frames, end = 0, None
        while end is None:
            assert sock.poll(15_000), "the replay goes on"
            message = decode_stream_message(sock.recv_multipart())
            if getattr(message, "event", None) == "replay_end":
                end = message
            elif isinstance(message, FrameBatch):
                assert (message.origin, message.replay_id, message.dp) == ("replay", request_id, "img16")
                frames += len(message)
        assert end.replay_id == request_id and end.result["frames"] == frames == 5 * PAST_HZ["img16"]
        final = caller.wait(request_id, [agent], 15).finals[agent]
        assert final.action == "request_success" and final.result["frames"] == frames
    finally:
        sock.close(linger=0)


def test_a_run_dir_vanishing_while_replayed_leaves_a_partial_result_marked(system, caller, tmp_path):
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    archive = HashpipeFiles(tmp_path / format_run_dir_name("Lick", start, "sci-data"), 1, start=start).open()
    images = lick_frames(SAMPLE_IMG16)
    first_ns = int(start.timestamp()) * SECOND
    n = 4 * REPLAY_FPS  # about four seconds of replay
    for i in range(n):
        archive.write("img16", archive.frame("img16", first_ns + i * SECOND // 1000, i, images[i % len(images)]))
    archive.close()
    name = system.writer.service_name
    request = WriteRequest(output_file="vanished.h5", data_dir=str(archive.run_dir), start_time=first_ns,
                           stop_time=first_ns + n * SECOND // 1000, data_products=["img16"])
    request_id = caller.publish(name, request)
    caller.wait(request_id, [name], 30, until_action="request_progress")
    shutil.rmtree(archive.run_dir)
    final = caller.wait(request_id, [name], 60).finals[name]
    assert final.action == "request_success", final.message
    result = final.result
    replay = result["replay"]["agents"][system.agent.service_name]
    assert not result["complete"] and "replayed part is incomplete" in result["end_reason"]
    assert not replay["complete"] and "vanished" in next(iter(replay["partial"].values()))
    assert 0 < result["frames"] < n
    with h5py.File(system.output_root / "vanished.h5") as f:
        assert not f.attrs["complete"] and f["module_1/img16/data"].shape[0] == result["frames"]
    wait_until(lambda: system.writer.process.poll() is None, 1)
