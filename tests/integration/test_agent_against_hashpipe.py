"""The agent process against a producer that writes and sends as Hashpipe does (real files, sockets, ZMQ, Redis).

Every frame the producer completes reaches the subscriber once, bit-identical and in order, through
stdio-buffered bursts, open-before-close rollovers, archived runs with several seqnos, modules and
runs that appear late, run dirs moved away, agent restarts, a stream that cannot be read, an idle
pulse-height stream, and snapshots on the socket hook.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_IMG16, SAMPLE_PH256_M1, ServiceProcess, wait_until
from helpers.hashpipe import HashpipeFiles, SnapshotSender
from helpers.streams import ask, frames_of, receive, stream_endpoints, subscriber

from std_daq_service.protocol import ControlHeader, FrameBatch, InitHpIoRequest, StatusRequest, decode_stream_message

pytestmark = pytest.mark.parametrize("service_name", ["hp_io_agent"], indirect=True)

T0 = int(datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()) * 10**9
IMG16 = SAMPLE_IMG16.read_bytes()
PH256 = SAMPLE_PH256_M1.read_bytes()
IMAGE = {"img16": (IMG16, 2540, 492), "ph256": (PH256, 636, 124)}


def run_dir(data_dir: Path, module_id: int, start: datetime) -> Path:
    return data_dir / f"module_{module_id}" / f"obs_Lick.start_{start:%Y-%m-%dT%H:%M:%SZ}.runtype_sci-data.pffd"


def write_frames(hashpipe: HashpipeFiles, dp: str, first: int, n: int, rate_hz: float = 1000) -> None:
    """Frames numbered by pkt_num `first`..`first+n-1`, with images taken from the real Lick files in turn."""
    source, size, header = IMAGE[dp]
    for k in range(first, first + n):
        image = source[(k % 1000) * size + header : (k % 1000 + 1) * size]
        hashpipe.write(dp, hashpipe.frame(dp, T0 + int(k * 1e9 / rate_hz), k, image, quabo_num=k % 4))


def pkt_nums(batches: list[FrameBatch]) -> list[int]:
    if not batches:
        return []
    pkt_num = np.concatenate([b.pff_columns["pkt_num"] for b in batches])
    return (pkt_num[:, 0] if pkt_num.ndim == 2 else pkt_num).tolist()


def seqs(batches: list[FrameBatch]) -> list[int]:
    return np.concatenate([b.seq for b in batches]).tolist() if batches else []


def expected_images(dp: str, numbers: list[int]) -> np.ndarray:
    source, size, header = IMAGE[dp]
    raw = b"".join(source[(k % 1000) * size + header : (k % 1000 + 1) * size] for k in numbers)
    dtype = "<u2" if dp == "img16" else "<i2"
    return np.frombuffer(raw, dtype=dtype).reshape(len(numbers), *((32, 32) if dp == "img16" else (16, 16)))


def subscribed(caller, agent, topics=("",)):
    endpoints = stream_endpoints(caller, agent)["endpoints"]
    sock = subscriber(endpoints["data"], list(topics))
    return sock


def wait_subscribed(caller, agent, n=1):
    wait_until(lambda: ask(caller, agent.service_name, StatusRequest()).result["subscribers"] >= n, 10,
               message="agent counts the subscriber")


def has_control(messages, event, run=None):
    return any(isinstance(m, ControlHeader) and m.event == event and (run is None or m.run == run) for m in messages)


def test_rollovers_with_hashpipes_buffers_lose_no_frame_of_the_last_buffer(agent, caller, tmp_path):
    """With 1 MiB stdio buffers and 300 kB files, every file's frames appear only at its close, after seqno+1."""
    data_dir = tmp_path / "daq"
    data_dir.mkdir()
    assert ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(data_dir))).action == "request_success"
    with subscribed(caller, agent) as sock:
        wait_subscribed(caller, agent)
        hashpipe = HashpipeFiles(run_dir(data_dir, 7, datetime.now(timezone.utc)), 7, max_file_bytes=300_000).open()
        stop = threading.Event()

        def produce():
            for chunk in range(12):
                write_frames(hashpipe, "img16", chunk * 250, 250)
                write_frames(hashpipe, "ph256", chunk * 40, 40)
                stop.wait(0.02)
            hashpipe.close()

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            messages = receive(sock, lambda ms: len(pkt_nums(frames_of(ms, 7, "img16"))) >= 3000
                               and len(pkt_nums(frames_of(ms, 7, "ph256"))) >= 480, 30)
        finally:
            stop.set()
            producer.join()
    for dp, n in (("img16", 3000), ("ph256", 480)):
        batches = frames_of(messages, 7, dp)
        assert pkt_nums(batches) == list(range(n)), f"{dp}: frames missing, repeated or out of order"
        assert seqs(batches) == list(range(n)), f"{dp}: seq is not gap-free"
        assert np.array_equal(np.concatenate([b.images for b in batches]), expected_images(dp, list(range(n))))
    assert len({b.seqno for b in frames_of(messages, 7, "img16")}) >= 10, "the files rolled over"
    status = ask(caller, agent.service_name, StatusRequest()).result["modules"]["7"]["img16"]
    assert status["frames_published"] == 3000 and status["frames_lost"] == 0


def test_an_archived_run_with_several_seqnos_is_replayed_from_its_first_frame(agent, caller, tmp_path):
    run = run_dir(tmp_path / "daq", 3, datetime(2024, 7, 25, 4, 34, 6))
    hashpipe = HashpipeFiles(run, 3, max_file_bytes=100_000).open()
    write_frames(hashpipe, "img16", 0, 700)
    write_frames(hashpipe, "ph256", 0, 500)
    hashpipe.close()
    (run / "recording_ended").touch()
    assert len(list(run.glob("*dp_img16*"))) >= 15
    with subscribed(caller, agent) as sock:
        wait_subscribed(caller, agent)
        assert ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(run))).action == "request_success"
        messages = receive(sock, lambda ms: len(pkt_nums(frames_of(ms, 3, "img16"))) >= 700
                           and len(pkt_nums(frames_of(ms, 3, "ph256"))) >= 500, 20)
    assert pkt_nums(frames_of(messages, 3, "img16")) == list(range(700))
    assert pkt_nums(frames_of(messages, 3, "ph256")) == list(range(500))


def test_a_module_and_a_run_that_appear_later_are_read_from_their_first_frame(agent, caller, tmp_path):
    data_dir = tmp_path / "daq"
    start = datetime.now(timezone.utc)
    first = HashpipeFiles(run_dir(data_dir, 1, start), 1).open()
    write_frames(first, "img16", 0, 100)
    first.flush("img16")  # the running run at init: followed from its end
    assert ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(data_dir))).action == "request_success"
    with subscribed(caller, agent) as sock:
        wait_subscribed(caller, agent)
        write_frames(first, "img16", 100, 50)
        first.close()
        late_module = HashpipeFiles(run_dir(data_dir, 2, start), 2, max_file_bytes=60_000).open()
        write_frames(late_module, "img16", 0, 200)
        late_module.close()
        later_run = HashpipeFiles(run_dir(data_dir, 1, start + timedelta(minutes=5)), 1, max_file_bytes=60_000)
        later_run.open()
        write_frames(later_run, "img16", 1000, 120)
        later_run.close()
        messages = receive(sock, lambda ms: len(pkt_nums(frames_of(ms, 2, "img16"))) >= 200
                           and len(pkt_nums(frames_of(ms, 1, "img16"))) >= 170, 20)
    assert pkt_nums(frames_of(messages, 2, "img16")) == list(range(200)), "a late module from its first frame"
    module_1 = frames_of(messages, 1, "img16")
    assert pkt_nums(module_1) == list(range(100, 150)) + list(range(1000, 1120)), "a late run from its first frame"
    assert seqs(module_1) == list(range(170))


def test_a_run_dir_moved_away_ends_the_run_and_no_older_run_is_published_again(agent, caller, tmp_path):
    data_dir = tmp_path / "daq"
    now = datetime.now(timezone.utc)
    older = HashpipeFiles(run_dir(data_dir, 4, now - timedelta(hours=1)), 4).open()
    write_frames(older, "ph256", 5000, 30)
    older.close()
    current = HashpipeFiles(run_dir(data_dir, 4, now), 4).open()
    assert ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(data_dir))).action == "request_success"
    with subscribed(caller, agent) as sock:
        wait_subscribed(caller, agent)
        write_frames(current, "ph256", 0, 40)
        current.close()
        receive(sock, lambda ms: len(pkt_nums(frames_of(ms, 4, "ph256"))) >= 40, 10)
        shutil.move(str(current.run_dir), str(tmp_path / "headnode"))  # the control software collects the run
        messages = receive(sock, lambda ms: has_control(ms, "run_end", current.run_dir.name), 10)
        newest = HashpipeFiles(run_dir(data_dir, 4, now + timedelta(hours=1)), 4).open()
        write_frames(newest, "ph256", 9000, 10)
        newest.close()
        messages += receive(sock, lambda ms: len(pkt_nums(frames_of(ms, 4, "ph256"))) >= 10, 10)
    numbers = pkt_nums(frames_of(messages, 4, "ph256"))
    assert numbers == list(range(9000, 9010)), "frames of the older run were published again"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("agent_config", [{"data_bind": f"tcp://127.0.0.1:{free_port()}"}])
def test_after_a_restart_runs_that_started_meanwhile_are_read_from_their_first_frame(agent, caller, tmp_path,
                                                                                    redis_url, redis_client):
    data_dir = tmp_path / "daq"
    now = datetime.now(timezone.utc)
    run1 = HashpipeFiles(run_dir(data_dir, 5, now), 5).open()
    assert ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(data_dir))).action == "request_success"
    config = json.loads(redis_client.get(f"config.{agent.service_name}"))
    with subscribed(caller, agent) as sock:
        wait_subscribed(caller, agent)
        write_frames(run1, "img16", 0, 30)
        run1.close()
        first = receive(sock, lambda ms: len(pkt_nums(frames_of(ms, 5, "img16"))) >= 30, 10)
        assert agent.stop() == 0
        shutil.move(str(run1.run_dir), str(tmp_path / "headnode"))  # moved while the agent was down
        run2 = HashpipeFiles(run_dir(data_dir, 5, now + timedelta(minutes=1)), 5, max_file_bytes=50_000).open()
        write_frames(run2, "img16", 500, 80)
        run2.close()
        (tmp_path / "restart").mkdir()
        restarted = ServiceProcess("hp_io_agent", agent.service_name, config, redis_url, tmp_path / "restart")
        try:
            restarted.wait_ready(redis_client)
            second = receive(sock, lambda ms: len(pkt_nums(frames_of(ms, 5, "img16"))) >= 80, 15)
        finally:
            assert restarted.stop() == 0, restarted.log()
    assert pkt_nums(frames_of(second, 5, "img16")) == list(range(500, 580))
    assert seqs(frames_of(first, 5, "img16")) + seqs(frames_of(second, 5, "img16")) == list(range(110))


def test_a_stream_whose_next_file_cannot_be_opened_stops_alone_and_says_so(agent, caller, tmp_path):
    data_dir = tmp_path / "daq"
    hashpipe = HashpipeFiles(run_dir(data_dir, 6, datetime.now(timezone.utc)), 6).open()
    assert ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(data_dir))).action == "request_success"
    with subscribed(caller, agent) as sock:
        wait_subscribed(caller, agent)
        write_frames(hashpipe, "img16", 0, 20)
        write_frames(hashpipe, "ph256", 0, 30)
        hashpipe.flush("img16")
        hashpipe.flush("ph256")
        img16 = hashpipe.path("img16")
        os.symlink(tmp_path / "gone.pff", img16.with_name(img16.name.replace("seqno_0", "seqno_1")))
        wait_until(lambda: ask(caller, agent.service_name, StatusRequest()).result["modules"]["6"]["img16"]["error"],
                   15, message="the img16 stream's error in status")
        write_frames(hashpipe, "ph256", 30, 30)
        hashpipe.close()
        messages = receive(sock, lambda ms: len(pkt_nums(frames_of(ms, 6, "ph256"))) >= 60
                           and len(pkt_nums(frames_of(ms, 6, "img16"))) >= 20, 10)
    assert pkt_nums(frames_of(messages, 6, "ph256")) == list(range(60)), "the other streams go on"
    assert pkt_nums(frames_of(messages, 6, "img16")) == list(range(20))
    status = ask(caller, agent.service_name, StatusRequest()).result["modules"]["6"]
    assert "seqno_1.pff" in status["img16"]["error"] and status["ph256"]["error"] is None


def test_an_idle_pulse_height_stream_does_not_end_a_run_whose_images_flow(agent, caller, tmp_path):
    data_dir = tmp_path / "daq"
    hashpipe = HashpipeFiles(run_dir(data_dir, 8, datetime.now(timezone.utc)), 8).open()
    assert ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(data_dir))).action == "request_success"
    stop = threading.Event()

    def produce():
        write_frames(hashpipe, "ph256", 0, 5)
        hashpipe.flush("ph256")  # a few events, then none
        k = 0
        while not stop.is_set():
            write_frames(hashpipe, "img16", k, 20)
            hashpipe.flush("img16")
            k += 20
            stop.wait(0.02)

    idle = 2 * 2  # twice the agent's run_end_idle_seconds
    with subscribed(caller, agent) as sock:
        wait_subscribed(caller, agent)
        producer = threading.Thread(target=produce)
        producer.start()
        try:
            wait_until(lambda: ask(caller, agent.service_name, StatusRequest()).result["modules"].get("8", {})
                       .get("ph256", {}).get("seconds_since_data", 0) > idle, 20, message="ph256 idle for long")
            status = ask(caller, agent.service_name, StatusRequest()).result
        finally:
            stop.set()
            producer.join()
            hashpipe.close()
        messages = []
        while sock.poll(0):
            messages.append(decode_stream_message(sock.recv_multipart()))
    assert len(pkt_nums(frames_of(messages, 8, "ph256"))) == 5
    assert not has_control(messages, "run_end") and status["runs_ended"] == {}
    assert status["modules"]["8"]["img16"]["seconds_since_data"] < idle


HOOK_DIR = f"/tmp/std_daq_test_snap_{os.getpid()}"


@pytest.mark.parametrize("agent_config", [{"socket_hook": True, "socket_path_template": HOOK_DIR + "/hp.dp_{dp}.sock"}])
def test_snapshots_as_hashpipe_sends_them_arrive_on_their_own_topics_torn_ones_as_gaps(agent, caller, request,
                                                                                      tmp_path):
    request.addfinalizer(lambda: shutil.rmtree(HOOK_DIR, ignore_errors=True))
    hashpipe = HashpipeFiles(tmp_path / "unused", 9)
    frames = [hashpipe.frame("img16", T0 + k * 10**8, k, IMG16[k * 2540 + 492 : (k + 1) * 2540], style="snapshot")
              for k in range(40)]
    endpoints = stream_endpoints(caller, agent)["endpoints"]
    with subscriber(endpoints["data"], ["socket.img16."]) as sock, \
            subscriber(endpoints["data"], ["img16.", "control."]) as files:
        wait_subscribed(caller, agent, 2)
        sender = SnapshotSender(f"{HOOK_DIR}/hp.dp_img16.sock", "img16")
        for k, frame in enumerate(frames):
            sender.send(9, frame, cut=1000 if k in (7, 8, 20) else None)
        sender.close()
        expected, seq, next_seq = [], [], 0
        for k, outcome in enumerate(sender.outcomes):
            if outcome == "whole":
                expected.append(k)
                seq.append(next_seq)
            next_seq += outcome != "dropped"
        messages = receive(sock, lambda ms: len(pkt_nums(frames_of(ms, 9, "img16"))) >= len(expected), 10)
        (tmp_path / "empty").mkdir()
        ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(tmp_path / "empty"), force=True))
        on_files = receive(files, lambda ms: has_control(ms, "reinit"), 10)
    assert not [m for m in on_files if isinstance(m, FrameBatch)], "socket frames must not reach the file topics"
    batches = frames_of(messages, 9, "img16")
    assert {b.origin for b in batches} == {"socket"}
    assert pkt_nums(batches) == expected and len(expected) >= 30
    assert seqs(batches) == seq, "each torn record is a gap in seq"
    hook = ask(caller, agent.service_name, StatusRequest()).result["socket_hook"]
    assert hook["torn_records"] == sender.outcomes.count("torn") == 3
    assert hook["frames_received"] == len(expected)
