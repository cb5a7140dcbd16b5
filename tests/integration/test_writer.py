"""The HDF5 writer as a process: simulated run -> agent -> ZMQ -> writer -> HDF5 (real RabbitMQ, Redis, ZMQ)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle/blosc filters for reading)
import numpy as np
import pytest
from conftest import SAMPLE_IMG16, ServiceProcess, service_stack, wait_until
from helpers.services import start_agent, start_writer

from std_daq_service.broker import RequestCaller
from std_daq_service.pff import PffReader, wr_unix_ns
from std_daq_service.protocol import StatusRequest, WriteRequest


@dataclass
class System:
    agent: ServiceProcess
    writer: ServiceProcess
    output_root: Path
    endpoint: str


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_url, broker_url):
    directory = tmp_path_factory.mktemp("writer")
    with service_stack(redis_url, broker_url) as stack:
        agent_name = stack.name("hp_io_agent")
        agent, endpoint = start_agent(agent_name, redis_url, stack.redis, directory, movie_rate_hz=1000,
                                      pulse_height_rate_hz=400)
        stack.add(agent)
        writer = stack.add(start_writer(stack.name("writer"), redis_url, stack.redis, directory,
                                        [(agent_name, endpoint)]))
        yield System(agent, writer, directory / "out", endpoint)


@pytest.fixture
def caller(broker_url):
    with RequestCaller(broker_url, "test-writer-caller") as caller:
        yield caller


def write(caller, system, timeout=30, **fields):
    name = system.writer.service_name
    result = caller.call(name, WriteRequest(**fields), timeout)
    assert result.complete, f"no final status: {result.history}"
    return result.finals[name]


def read_stream(path: Path, module_id: int, dp: str) -> dict:
    with h5py.File(path, "r") as f:
        group = f[f"module_{module_id}/{dp}"]
        out = {name: group[name][()] for name in group if name != "pff_header"}
        out["pff_header"] = {name: group["pff_header"][name][()] for name in group["pff_header"]}
        out["attrs"] = dict(group.attrs)
        out["root"] = dict(f.attrs)
    return out


def test_every_recorded_frame_is_its_source_pff_frame(system, caller):
    final = write(caller, system, output_file="exact.h5", n_images=1500)
    assert final.action == "request_success", final.message
    result = final.result
    path = system.output_root / "exact.h5"
    assert result["output_file"] == str(path) and result["complete"] and result["missing_frames"] == 0
    assert set(result["streams"]) == {"1/img16", "1/ph256", "3/ph256"}
    assert all(s["frames"] == 1500 for s in result["streams"].values())
    sim_dir = system.agent.log_path.parent / "sim"
    for module_id, dp in ((1, "img16"), (3, "ph256")):
        stream = read_stream(path, module_id, dp)
        seq = stream["seq"]
        assert np.array_equal(seq, np.arange(seq[0], seq[0] + 1500)), "duplicates or gaps"
        files = [f.decode() if isinstance(f, bytes) else f for f in stream["attrs"]["files"]]
        for index, file in enumerate(files):
            rows = np.flatnonzero(stream["file_index"] == index)
            source = next(sim_dir.glob(f"module_{module_id}/obs_*/{file}"))
            with PffReader(source) as reader:
                first = int(stream["frame_number"][rows[0]])
                block = reader.block(first, first + len(rows))
            assert np.array_equal(stream["frame_number"][rows], block.frame_numbers)
            assert np.array_equal(stream["data"][rows], block.images()), "pixels differ from the PFF file"
            for name, values in block.fields.items():
                assert np.array_equal(stream["pff_header"][name][rows], values), f"header field {name} differs"
            assert np.array_equal(stream["wr_timestamp_ns"][rows], block.wr_timestamp_ns)
            assert np.array_equal(stream["host_timestamp_ns"][rows], block.host_timestamp_ns)
    root = stream["root"]
    assert root["complete"] and root["request_id"] == final.request_id and root["format"] == "panoseti-std-daq-h5"
    assert not list(system.output_root.glob("*.part"))


def test_selection_by_module_and_data_product(system, caller):
    final = write(caller, system, output_file="m3.h5", module_ids=[3], n_images=100)
    assert final.action == "request_success", final.message
    assert set(final.result["streams"]) == {"3/ph256"}
    final = write(caller, system, output_file="img.h5", data_products=["img16"], n_images=100,
                  compression="gzip")
    assert set(final.result["streams"]) == {"1/img16"}
    with h5py.File(system.output_root / "img.h5") as f:
        assert list(f) == ["module_1"] and f["module_1/img16/data"].compression == "gzip"
        assert f["module_1/img16/data"].shape == (100, 32, 32)


def test_duration_and_stop_time_windows(system, caller):
    final = write(caller, system, output_file="dur.h5", data_products=["img16"], duration_seconds=1.0)
    assert final.action == "request_success", final.message
    assert final.result["end_reason"] == "recorded 1 s" and final.result["streams"]["1/img16"]["frames"] > 0
    start = time.time_ns() + 200_000_000
    stop = start + 500_000_000
    iso = datetime.fromtimestamp(stop / 1e9, timezone.utc).isoformat()
    final = write(caller, system, output_file="window.h5", data_products=["img16"], start_time=start, stop_time=iso)
    assert final.action == "request_success", final.message
    stop_ns = WriteRequest(output_file="x", stop_time=iso).stop_time
    stream = read_stream(system.output_root / "window.h5", 1, "img16")
    times = stream["wr_timestamp_ns"]
    assert times[0] >= start and times[-1] < stop_ns and times[0] - start < 3_000_000
    assert stop_ns - times[-1] < 3_000_000
    assert (np.diff(stream["seq"]) == 1).all(), "every frame between the window's edges is in the file"


def test_a_write_starting_in_the_past_gets_the_ring_buffer_frames(system, caller):
    name = system.writer.service_name
    wait_until(lambda: caller.call(name, StatusRequest(), 10).finals[name].result["ring_buffer"]["seconds"] >= 3,
               15, interval=0.2, message="3 s of frames in the ring buffer")
    start = time.time_ns() - 2_000_000_000
    final = write(caller, system, output_file="pretrigger.h5", module_ids=[1], data_products=["img16"],
                  start_time=start, duration_seconds=2.5)
    assert final.action == "request_success", final.message
    stream = read_stream(system.output_root / "pretrigger.h5", 1, "img16")
    times = stream["wr_timestamp_ns"]
    assert start <= times[0] < start + 3_000_000, "the file starts at start_time, 2 s before the request"
    assert start + 2_497_000_000 <= times[-1] < start + 2_500_000_000, "the file ends at the window's end"
    assert np.array_equal(np.diff(stream["seq"]), np.ones(len(times) - 1)), "no gap between past and live frames"


def test_kill_closes_the_file_marked_incomplete_and_open_ended_writes_end_complete(system, caller):
    name = system.writer.service_name
    for output_file, fields, complete in (("killed.h5", {"n_images": 10**8}, False), ("open.h5", {}, True)):
        request_id = caller.publish(name, WriteRequest(output_file=output_file, **fields))
        wait_until(lambda rid=request_id: any(s.action == "request_progress"
                                              and s.result["streams"].get("1/img16", {}).get("frames")
                                              for s in caller.wait(rid, [name], 0.2).history), 15,
                   message="progress with recorded img16 frames")
        caller.kill(name, request_id)
        final = caller.wait(request_id, [name], 15).finals[name]
        assert final.action == "request_killed", final.message
        assert final.result["complete"] is complete and final.result["frames"] > 0
        with h5py.File(system.output_root / output_file) as f:
            assert bool(f.attrs["complete"]) is complete
            assert f["module_1/img16/data"].shape[0] == f["module_1/img16"].attrs["n_frames"] > 0


def test_concurrent_writes_and_a_second_write_to_the_same_file(system, caller):
    name = system.writer.service_name
    ids = [caller.publish(name, WriteRequest(output_file=f"c{i}.h5", n_images=2000)) for i in range(3)]
    caller.wait(ids[0], [name], 15, until_action="request_start")
    clash = write(caller, system, output_file="c0.h5", n_images=10)
    assert clash.action == "request_fail" and "is being written" in clash.message
    for request_id in ids:
        final = caller.wait(request_id, [name], 30).finals[name]
        assert final.action == "request_success", final.message
        assert final.result["frames"] == 3 * 2000


@pytest.mark.parametrize("output_file, reason", [
    ("../escape.h5", "'..' is not allowed"),
    ("/etc/escape.h5", "outside the output root"),
    ("link/escape.h5", "outside the output root"),
    ("link/new/escape.h5", "outside the output root"),
    ("exists.h5/x.h5", "is not a folder"),
    ("x" * 300 + ".h5", "longer than 241"),
    ("x" * 239 + ".h5", "the file name is 242 bytes, longer than 241"),
    ("exists.h5", "exists; set overwrite=true"),
])
def test_output_paths_outside_the_root_or_clashing_are_refused(system, caller, tmp_path, output_file, reason):
    (system.output_root / "exists.h5").write_bytes(b"keep")
    link = system.output_root / "link"
    if not link.is_symlink():
        link.symlink_to(tmp_path)
    final = write(caller, system, output_file=output_file, n_images=5)
    assert final.action == "request_fail" and reason in final.message
    assert not list(tmp_path.iterdir()) and (system.output_root / "exists.h5").read_bytes() == b"keep"
    assert not list(system.output_root.glob("*.part"))


def test_missing_folders_under_the_root_are_created(system, caller):
    final = write(caller, system, output_file="night1/run1/first.h5", n_images=5)
    assert final.action == "request_success", final.message
    assert final.result["output_file"] == str(system.output_root / "night1" / "run1" / "first.h5")
    assert h5py.is_hdf5(system.output_root / "night1" / "run1" / "first.h5")


def test_overwrite_replaces_an_existing_file(system, caller):
    (system.output_root / "again.h5").write_bytes(b"old")
    final = write(caller, system, output_file="again.h5", n_images=5, overwrite=True)
    assert final.action == "request_success", final.message
    assert h5py.is_hdf5(system.output_root / "again.h5")


def test_silent_selection_fails_with_the_stream_named(system, caller):
    final = write(caller, system, output_file="silent.h5", module_ids=[3], data_products=["img16"],
                  timeout_seconds=1)
    assert final.action == "request_fail"
    assert final.message == "no frames from module 3 img16 in 1 s"
    assert not (system.output_root / "silent.h5").exists()


def _file_size_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))  # like a full disk at 8 MB per file


def test_an_io_error_fails_the_write_and_the_writer_keeps_serving(system, caller, new_service_name, redis_url,
                                                                   redis_client, tmp_path):
    name = new_service_name("writer")
    writer = start_writer(name, redis_url, redis_client, tmp_path, [(system.agent.service_name, system.endpoint)],
                          preexec_fn=_file_size_limit, compression="none")
    try:
        big = caller.call(name, WriteRequest(output_file="big.h5", n_images=5000, data_products=["img16"]), 30)
        final = big.finals[name]
        assert final.action == "request_fail" and "file too large" in final.message.lower(), final.message
        assert final.result["http_status"] == 507
        assert not list((tmp_path / "out").iterdir()), "a failed write leaves nothing"
        small = caller.call(name, WriteRequest(output_file="small.h5", n_images=50), 30).finals[name]
        assert small.action == "request_success", small.message
    finally:
        assert writer.stop() == 0, writer.log()


def test_a_writer_stopped_with_sigterm_kills_its_running_write_reports_it_and_keeps_the_file(
        system, caller, new_service_name, redis_url, redis_client, tmp_path):
    name = new_service_name("writer")
    writer = start_writer(name, redis_url, redis_client, tmp_path, [(system.agent.service_name, system.endpoint)])
    try:
        request_id = caller.publish(name, WriteRequest(output_file="until_stopped.h5"))
        wait_until(lambda: any(s.action == "request_progress" and s.result["streams"]
                               for s in caller.wait(request_id, [name], 0.2).history), 15,
                   message="progress with recorded frames")
        writer.process.terminate()
        final = caller.wait(request_id, [name], 15).finals.get(name)
        assert final is not None, f"no final status after SIGTERM:\n{writer.log()}"
        assert final.action == "request_killed", final.message
        assert writer.process.wait(15) == 0, writer.log()  # a second SIGTERM now would hit Python's own exit
        with h5py.File(tmp_path / "out" / "until_stopped.h5") as f:
            assert bool(f.attrs["complete"]) is final.result["complete"] is True
            assert sum(f[f"{m}/{dp}"].attrs["n_frames"] for m in f for dp in f[m]) == final.result["frames"]
    finally:
        assert writer.stop() == 0, writer.log()


def test_one_write_records_frames_from_three_agents(redis_url, broker_url, tmp_path, caller):
    with service_stack(redis_url, broker_url) as stack:
        agents = []
        for module_id in (11, 12, 13):
            directory = tmp_path / str(module_id)
            directory.mkdir()
            name = stack.name("hp_io_agent")
            process, endpoint = start_agent(name, redis_url, stack.redis, directory, module_ids=[module_id],
                                            movie_rate_hz=500, pulse_height_rate_hz=100)
            stack.add(process)
            agents.append((name, endpoint))
        writer_name = stack.name("writer")
        stack.add(start_writer(writer_name, redis_url, stack.redis, tmp_path, agents))

        def img16_streams() -> int:  # a write of n_images takes the streams the writer has seen recently
            status = caller.call(writer_name, StatusRequest(), 10).finals[writer_name].result
            return sum(key.endswith("/img16") for key in status["streams"])

        wait_until(lambda: img16_streams() == 3, 30, message="img16 from all three agents at the writer")
        final = caller.call(writer_name, WriteRequest(output_file="three.h5", data_products=["img16"],
                                                      n_images=300), 30).finals[writer_name]
        assert final.action == "request_success", final.message
        with h5py.File(tmp_path / "out" / "three.h5") as f:
            sources = {m: f[f"module_{m}/img16"].attrs["source"] for m in (11, 12, 13)}
            assert sources == dict(zip((11, 12, 13), [name for name, _ in agents], strict=True))
            assert all(f[f"module_{m}/img16/data"].shape[0] == 300 for m in (11, 12, 13))


def test_source_excerpt_is_what_the_simulator_replays():
    """Guard for the tests above: the img16 excerpt has the frames the simulator loops over."""
    with PffReader(SAMPLE_IMG16) as reader:
        block = reader.block()
    assert len(block) == 1000 and os.path.getsize(SAMPLE_IMG16) % block.frame_size == 640
    t = block.timing_fields
    assert np.array_equal(wr_unix_ns(t["tv_sec"], t["pkt_tai"], t["pkt_nsec"]), block.wr_timestamp_ns)
