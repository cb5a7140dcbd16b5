"""Faults injected for real: killed processes, broker connections closed, Redis connections dropped."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import h5py
import pytest
import requests
import zmq
from conftest import SAMPLE_IMG16, ServiceProcess, close_broker_connections, service_stack, wait_until
from helpers.services import free_port, start_agent, start_rest, start_writer

from std_daq_service.broker import RequestCaller
from std_daq_service.pff import PffReader
from std_daq_service.protocol import FrameBatch, InitHpIoRequest, StatusRequest, WriteRequest, decode_stream_message


@pytest.fixture(scope="module")
def agent(tmp_path_factory, redis_url, broker_url):
    with service_stack(redis_url, broker_url) as stack:
        name = stack.name("hp_io_agent")
        process, endpoint = start_agent(name, redis_url, stack.redis, tmp_path_factory.mktemp("faults"),
                                        movie_rate_hz=500, pulse_height_rate_hz=100)
        stack.add(process, clean_exit=False)  # its exit code was never asserted
        yield name, endpoint


@pytest.fixture
def caller(broker_url):
    with RequestCaller(broker_url, "test-faults") as caller:
        yield caller


def beacon_field(redis_client, name: str, field: str):
    return redis_client.hget(f"status.{name}", field)


def test_writer_killed_mid_write_leaves_a_part_file_that_the_restart_reports(agent, caller, new_service_name,
                                                                               redis_url, redis_client, tmp_path):
    name = new_service_name("writer")
    writer = start_writer(name, redis_url, redis_client, tmp_path, [agent])
    request_id = caller.publish(name, WriteRequest(output_file="crash.h5"))
    wait_until(lambda: any(s.action == "request_progress" and s.result["bytes"] > 0
                           for s in caller.wait(request_id, [name], 0.2).history), 15, message="bytes written")
    writer.process.send_signal(signal.SIGKILL)
    assert writer.stop() == -signal.SIGKILL
    out = tmp_path / "out"
    assert not (out / "crash.h5").exists(), "nothing under the final name"
    [part] = out.glob("crash.h5.*.part")  # recognisable: named for its file, tagged with the writer process
    restarted = start_writer(name, redis_url, redis_client, tmp_path, [agent])
    try:
        status = caller.call(name, StatusRequest(), 15).finals[name].result
        assert status["stale_part_files"] == [str(part)]
        assert "unfinished .part file" in restarted.log()
        again = caller.call(name, WriteRequest(output_file="crash.h5", n_images=10), 30).finals[name]
        assert again.action == "request_success", again.message
        assert h5py.File(out / "crash.h5").attrs["complete"]
    finally:
        assert restarted.stop() == 0, restarted.log()


def test_broker_connections_closed_mid_write_and_idle(agent, caller, new_service_name, redis_url, redis_client,
                                                      tmp_path):
    name = new_service_name("writer")
    writer = start_writer(name, redis_url, redis_client, tmp_path, [agent])
    try:
        request_id = caller.publish(name, WriteRequest(output_file="through.h5", duration_seconds=4))
        caller.wait(request_id, [name], 10, until_action="request_start")
        reconnects = int(beacon_field(redis_client, name, "broker_reconnects"))
        assert close_broker_connections(f"std_daq:{name}") >= 1
        wait_until(lambda: int(beacon_field(redis_client, name, "broker_reconnects")) > reconnects
                   and beacon_field(redis_client, name, "broker_connected") == "true", 5, interval=0.05,
                   message="the writer reconnected within 5 s")
        result = caller.wait(request_id, [name], 30)
        assert result.finals[name].action == "request_success", result.history
        actions = [s.action for s in result.history]
        assert actions.count("request_start") == 1 and actions.count("request_success") == 1, "run once"
        # idle: close again, then a new request is served
        assert close_broker_connections(f"std_daq:{name}") >= 1
        after = caller.call(name, WriteRequest(output_file="after.h5", n_images=5), 30).finals[name]
        assert after.action == "request_success", after.message
    finally:
        assert writer.stop() == 0, writer.log()


def test_rest_proxy_reconnects_to_the_broker(agent, new_service_name, redis_url, redis_client, tmp_path):
    writer_name = new_service_name("writer")
    writer = start_writer(writer_name, redis_url, redis_client, tmp_path, [agent])
    rest, url = start_rest(new_service_name("rest"), redis_url, redis_client, tmp_path, writers=[writer_name])
    try:
        assert close_broker_connections(f"std_daq:{rest.service_name}") >= 2  # its consumer and its caller
        wait_until(lambda: requests.get(f"{url}/health", timeout=5).json()["broker_connected"], 5, interval=0.05,
                   message="REST proxy reconnected")
        answer = requests.post(f"{url}/write_sync", json={"output_file": "rest.h5", "n_images": 5}, timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        for process in (rest, writer):
            assert process.stop() == 0, process.log()


def test_a_caller_whose_broker_connection_was_closed_reconnects_at_its_next_request(agent):
    name = f"test-faults-{time.monotonic_ns()}"
    with RequestCaller(None, name) as caller:
        assert caller.call(agent[0], StatusRequest(), 15).finals[agent[0]].action == "request_success"
        assert close_broker_connections(f"std_daq:{name}") == 1
        assert caller.call(agent[0], StatusRequest(), 15).finals[agent[0]].action == "request_success"


def test_redis_connections_dropped_beacons_come_back(agent, new_service_name, redis_url, redis_client, tmp_path,
                                                     caller):
    name = new_service_name("writer")
    writer = start_writer(name, redis_url, redis_client, tmp_path, [agent])
    try:
        before = beacon_field(redis_client, name, "heartbeat_timestamp")
        subprocess.run(["redis-cli", "-u", redis_url, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
                       check=True, capture_output=True)
        redis_client.delete(f"status.{name}")  # as after a restart without persistence
        wait_until(lambda: beacon_field(redis_client, name, "heartbeat_timestamp") not in (None, before), 10,
                   message="the beacon written again")
        answer = caller.call(name, WriteRequest(output_file="redis.h5", n_images=5), 30).finals[name]
        assert answer.action == "request_success", "the service ran on through it"
    finally:
        assert writer.stop() == 0, writer.log()



def hashpipe_appends(path: Path, frames: bytes, frame_size: int, stop: threading.Event, per_write: int = 20,
                     pause_s: float = 0.01) -> None:
    """Append frames `per_write` at a time every `pause_s` until `stop` or the frames run out."""
    with open(path, "ab", buffering=0) as f:
        for start in range(0, len(frames), per_write * frame_size):
            if stop.is_set():
                return
            f.write(frames[start : start + per_write * frame_size])
            stop.wait(pause_s)


def receive_until(sock: zmq.Socket, received: list, frames: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(m) for m in received) < frames and time.monotonic() < deadline:
        if sock.poll(50):
            message = decode_stream_message(sock.recv_multipart())
            if isinstance(message, FrameBatch):
                received.append(message)


def test_agent_killed_and_restarted_resumes_from_its_checkpoint(new_service_name, redis_url, redis_client, tmp_path):
    name = new_service_name("hp_io_agent")
    port = free_port()
    config = {"data_bind": f"tcp://127.0.0.1:{port}", "preview_bind": "tcp://127.0.0.1:*"}
    run = tmp_path / "daq" / "module_4" / "obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"
    run.mkdir(parents=True)
    path = run / "start_2024-07-25T04:34:46Z.dp_img16.bpp_2.module_4.seqno_0.pff"
    path.touch()
    with PffReader(SAMPLE_IMG16) as reader:
        frames = reader.block().raw.tobytes() * 3  # 3000 frames, appended over ~1.5 s
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.setsockopt(zmq.SUBSCRIBE, b"img16.")
    stop = threading.Event()
    appender = threading.Thread(target=hashpipe_appends, args=(path, frames, 2540, stop))
    received: list[FrameBatch] = []
    agent = ServiceProcess("hp_io_agent", name, config, redis_url, tmp_path)
    restarted = None
    try:
        agent.wait_ready(redis_client)
        with RequestCaller(None, "test-restart") as caller:
            assert caller.call(name, InitHpIoRequest(data_dir=str(tmp_path / "daq")), 15).ok
            wait_until(lambda: caller.call(name, StatusRequest(), 5).finals[name].result["subscribers"], 10,
                       message="the subscriber counted")
        appender.start()
        receive_until(sock, received, 500, 15)
        agent.process.send_signal(signal.SIGKILL)
        assert agent.stop() == -signal.SIGKILL
        (tmp_path / "restart").mkdir()
        restarted = ServiceProcess("hp_io_agent", name, config, redis_url, tmp_path / "restart")
        restarted.wait_ready(redis_client)
        appender.join(30)
        receive_until(sock, received, 3000, 20)
    finally:
        stop.set()
        sock.close()
        if restarted is not None:
            assert restarted.stop() == 0, restarted.log()
    numbers = [n for m in received for n in m.frame_number]
    seq = [n for m in received for n in m.seq]
    assert len(numbers) == len(set(numbers)), "a frame was published twice"
    assert seq == sorted(seq) and len(seq) == len(set(seq)), "seq goes on from the checkpoint"
    assert numbers[-1] == 2999 and seq[-1] - seq[0] == 2999, "every frame up to the end was read"
    gaps = sum(b - a - 1 for a, b in zip(seq, seq[1:], strict=False))
    assert len(numbers) + gaps == 3000, "every frame not received is a visible gap in seq"
    assert "resuming" in restarted.log()


def live_img16_run(tmp_path: Path) -> Path:
    run = tmp_path / "daq" / "module_4" / "obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"
    run.mkdir(parents=True)
    path = run / "start_2024-07-25T04:34:46Z.dp_img16.bpp_2.module_4.seqno_0.pff"
    path.touch()
    return path


def subscribe(port: int) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.setsockopt(zmq.SUBSCRIBE, b"img16.")
    return sock


def agent_with_subscriber(name: str, redis_url: str, redis_client, tmp_path: Path, port: int):
    """An agent tracking tmp_path/daq and a SUB socket on its data port that it has counted."""
    sock = subscribe(port)
    agent = ServiceProcess("hp_io_agent", name, {"data_bind": f"tcp://127.0.0.1:{port}",
                                                 "preview_bind": "tcp://127.0.0.1:*"}, redis_url, tmp_path)
    agent.wait_ready(redis_client)
    with RequestCaller(None, "test-restart") as caller:
        assert caller.call(name, InitHpIoRequest(data_dir=str(tmp_path / "daq")), 15).ok
        wait_until(lambda: caller.call(name, StatusRequest(), 5).finals[name].result["subscribers"], 10,
                   message="the subscriber counted")
    return agent, sock


def test_agent_killed_mid_stream_at_a_high_round_rate_publishes_nothing_twice_and_every_loss_is_a_gap(
        new_service_name, redis_url, redis_client, tmp_path):
    """One frame per write, about a thousand writes a second: the checkpoint is written ahead of many rounds."""
    name = new_service_name("hp_io_agent")
    port = free_port()
    path = live_img16_run(tmp_path)
    with PffReader(SAMPLE_IMG16) as reader:
        frames = reader.block().raw.tobytes() * 4  # 4000 frames
    stop = threading.Event()
    appender = threading.Thread(target=hashpipe_appends, args=(path, frames, 2540, stop, 1, 0.001))
    received: list[FrameBatch] = []
    agent, sock = agent_with_subscriber(name, redis_url, redis_client, tmp_path, port)
    restarted = None
    try:
        appender.start()
        receive_until(sock, received, 1000, 30)
        agent.process.send_signal(signal.SIGKILL)
        assert agent.stop() == -signal.SIGKILL
        sock.close()
        (tmp_path / "restart").mkdir()
        restarted = ServiceProcess("hp_io_agent", name, {"data_bind": f"tcp://127.0.0.1:{port}",
                                                         "preview_bind": "tcp://127.0.0.1:*"},
                                   redis_url, tmp_path / "restart")
        restarted.wait_ready(redis_client)
        sock = subscribe(port)  # a new subscriber, as below
        wait_until(lambda: "publishing again after the restart, to 1 subscriber" in restarted.log(), 15,
                   message="the restarted agent publishes to the new subscriber")
        appender.join(60)
        receive_until(sock, received, 4000, 30)
    finally:
        stop.set()
        sock.close()
        agent.stop()
        if restarted is not None:
            assert restarted.stop() == 0, restarted.log()
    numbers = [n for m in received for n in m.frame_number]
    seq = [n for m in received for n in m.seq]
    assert len(numbers) == len(set(numbers)), "a frame was published twice"
    assert seq == sorted(seq) and len(seq) == len(set(seq)), "seq goes on from the checkpoint"
    assert numbers[-1] == 3999 and seq[-1] - seq[0] == 3999, "every frame up to the end was read"
    gaps = sum(b - a - 1 for a, b in zip(seq, seq[1:], strict=False))
    assert len(numbers) + gaps == 4000, "every frame not received is a visible gap in seq"
    assert "resuming" in restarted.log()


def test_a_quiet_streams_stored_horizon_never_falls_below_one_stored_before(new_service_name, redis_url,
                                                                            redis_client, tmp_path):
    """One module stops while another goes on: every checkpoint stored for the quiet stream keeps
    its horizon (frames below it may be published already), so a kill between two checkpoints repeats nothing."""
    name = new_service_name("hp_io_agent")
    port = free_port()
    fast = live_img16_run(tmp_path)
    quiet_run = tmp_path / "daq" / "module_5" / fast.parent.name
    quiet_run.mkdir(parents=True)
    quiet = quiet_run / fast.name.replace("module_4", "module_5")
    quiet.touch()
    with PffReader(SAMPLE_IMG16) as reader:
        frames = reader.block().raw.tobytes()
    received: list[FrameBatch] = []
    agent, sock = agent_with_subscriber(name, redis_url, redis_client, tmp_path, port)
    horizons: list[int] = []
    try:
        appenders = [threading.Thread(target=hashpipe_appends, args=(path, data, 2540, threading.Event(), 1, 0.002))
                     for path, data in ((quiet, frames[:300 * 2540]), (fast, frames))]
        for appender in appenders:
            appender.start()
        while appenders[1].is_alive():
            stored = json.loads(redis_client.get(f"checkpoint.{name}") or "{}").get("streams", {})
            if "5/img16" in stored and (not horizons or stored["5/img16"]["publish_from_seq"] != horizons[-1]):
                horizons.append(stored["5/img16"]["publish_from_seq"])
            time.sleep(0.002)
        appenders[0].join(10)
        receive_until(sock, received, 1300, 30)
    finally:
        sock.close()
        assert agent.stop() == 0, agent.log()
    assert sum(len(m) for m in received) == 1300, "every frame of both streams was published"
    assert horizons, "the quiet stream was checkpointed"
    assert horizons == sorted(horizons), f"a stored horizon fell below an earlier one: {horizons}"
    assert horizons[-1] >= 300, "the horizon covers every frame of the stream that was published"


def test_agent_stopped_cleanly_and_restarted_skips_nothing_and_repeats_nothing(new_service_name, redis_url,
                                                                                redis_client, tmp_path):
    """A clean stop stores the exact position: the checkpoint's look-ahead costs no frame."""
    name = new_service_name("hp_io_agent")
    port = free_port()
    path = live_img16_run(tmp_path)
    with PffReader(SAMPLE_IMG16) as reader:
        frames = reader.block().raw.tobytes() * 2  # 2000 frames, half before the stop and half after
    half = len(frames) // 2
    before: list[FrameBatch] = []
    after: list[FrameBatch] = []
    agent, sock = agent_with_subscriber(name, redis_url, redis_client, tmp_path, port)
    restarted = None
    try:
        hashpipe_appends(path, frames[:half], 2540, threading.Event(), 1, 0.001)
        receive_until(sock, before, 1000, 30)
        sock.close()
        assert agent.stop() == 0, agent.log()
        (tmp_path / "restart").mkdir()
        restarted = ServiceProcess("hp_io_agent", name, {"data_bind": f"tcp://127.0.0.1:{port}",
                                                         "preview_bind": "tcp://127.0.0.1:*"},
                                   redis_url, tmp_path / "restart")
        restarted.wait_ready(redis_client)
        sock = subscribe(port)  # a new subscriber: one connected through a restart may receive only seconds later
        wait_until(lambda: "publishing again after the restart, to 1 subscriber" in restarted.log(), 15,
                   message="the restarted agent publishes to the new subscriber")
        hashpipe_appends(path, frames[half:], 2540, threading.Event(), 1, 0.001)
        receive_until(sock, after, 1000, 30)
    finally:
        sock.close()
        if restarted is not None:
            assert restarted.stop() == 0, restarted.log()
    received = before + after
    assert [n for m in received for n in m.frame_number] == list(range(2000))
    assert [n for m in received for n in m.seq] == list(range(2000)), "the restart goes on at the exact next frame"


def test_a_stream_missing_after_a_restart_keeps_its_position_through_another_restart(new_service_name, redis_url,
                                                                                     redis_client, tmp_path):
    """A module's run is out of sight when the agent restarts (a disk remounted, a directory moved): every
    checkpoint the agent stores meanwhile keeps that stream's position, so after a second restart, with the run
    back, the stream goes on at its exact next frame."""
    name = new_service_name("hp_io_agent")
    port = free_port()
    path4 = live_img16_run(tmp_path)
    module_5 = tmp_path / "daq" / "module_5"
    (module_5 / path4.parent.name).mkdir(parents=True)
    path5 = module_5 / path4.parent.name / path4.name.replace("module_4", "module_5")
    path5.touch()
    with PffReader(SAMPLE_IMG16) as reader:
        frames = reader.block().raw.tobytes()
    part = 300 * 2540
    received: list[FrameBatch] = []
    agent, sock = agent_with_subscriber(name, redis_url, redis_client, tmp_path, port)
    agents = [agent]

    def restart(where: str) -> None:
        nonlocal sock
        sock.close()
        assert agents[-1].stop() == 0, agents[-1].log()
        (tmp_path / where).mkdir()
        agents.append(ServiceProcess("hp_io_agent", name, {"data_bind": f"tcp://127.0.0.1:{port}",
                                                           "preview_bind": "tcp://127.0.0.1:*"},
                                     redis_url, tmp_path / where))
        agents[-1].wait_ready(redis_client)
        sock = subscribe(port)
        wait_until(lambda: "publishing again after the restart, to 1 subscriber" in agents[-1].log(), 15,
                   message="the restarted agent publishes to the new subscriber")

    try:
        for path in (path4, path5):
            hashpipe_appends(path, frames[:part], 2540, threading.Event(), 1, 0.001)
        receive_until(sock, received, 600, 30)
        module_5.rename(tmp_path / "daq" / "moved_5")
        restart("restart-1")
        hashpipe_appends(path4, frames[part : 2 * part], 2540, threading.Event(), 1, 0.001)
        receive_until(sock, received, 900, 30)
        wait_until(lambda: json.loads(redis_client.get(f"checkpoint.{name}"))["streams"]["4/img16"]["next_seq"] > 300,
                   10, message="the restarted agent checkpointed module 4")
        kept = json.loads(redis_client.get(f"checkpoint.{name}"))["streams"]
        assert kept.get("5/img16", {}).get("next_seq") == 300, f"module 5's position was dropped: {kept}"
        (tmp_path / "daq" / "moved_5").rename(module_5)
        restart("restart-2")
        hashpipe_appends(path5, frames[part : 2 * part], 2540, threading.Event(), 1, 0.001)
        receive_until(sock, received, 1200, 30)
    finally:
        sock.close()
        for each in agents:
            assert each.stop() == 0, each.log()
    of_5 = [m for m in received if m.module_id == 5]
    assert [n for m in of_5 for n in m.frame_number] == list(range(600)), "module 5 went on at its next frame"
    assert [n for m in of_5 for n in m.seq] == list(range(600)), "and its seq with it: nothing skipped or repeated"
    assert sum(len(m) for m in received if m.module_id == 4) == 600


def test_agent_killed_while_simulating_simulates_again_after_the_restart(new_service_name, redis_url, redis_client,
                                                                         tmp_path, caller):
    name = new_service_name("hp_io_agent")
    agent, _ = start_agent(name, redis_url, redis_client, tmp_path, module_ids=[9], movie_rate_hz=500,
                           pulse_height_rate_hz=100)
    agent.process.send_signal(signal.SIGKILL)
    assert agent.stop() == -signal.SIGKILL
    (tmp_path / "restart").mkdir()
    config = {"data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*",
              "sim_data_dir": str(tmp_path / "sim"), "min_update_interval_seconds": 0.05}
    restarted = ServiceProcess("hp_io_agent", name, config, redis_url, tmp_path / "restart")
    try:
        restarted.wait_ready(redis_client)

        def img16_published():
            status = caller.call(name, StatusRequest(), 10).finals[name].result
            return status["simulator"] and status["modules"].get("9", {}).get("img16", {}).get("frames_published")

        wait_until(img16_published, 15, interval=0.2, message="the simulation running again")
        assert "restarted; resuming" in restarted.log()
    finally:
        assert restarted.stop() == 0, restarted.log()
