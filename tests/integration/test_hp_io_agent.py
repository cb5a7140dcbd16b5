"""The node agent as a process: simulated runs, streaming, requests, run tracking (real RabbitMQ, Redis, ZMQ)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from contextlib import closing

import numpy as np
import pytest
import zmq
from conftest import SAMPLE_IMG16, SAMPLE_PH256_M1, SAMPLE_RUN, wait_until
from helpers.streams import ask, count, frames_of, receive, stream_endpoints, subscriber

from std_daq_service.pff import PffReader
from std_daq_service.protocol import (
    ControlHeader,
    FrameBatch,
    InitHpIoRequest,
    InitSimRequest,
    StatusRequest,
    StopHpIoRequest,
    StreamRequest,
)

pytestmark = pytest.mark.parametrize("service_name", ["hp_io_agent"], indirect=True)


def test_simulated_run_delivers_every_frame_in_order_with_source_pixels(agent, caller):
    endpoints = stream_endpoints(caller, agent)["endpoints"]
    with subscriber(endpoints["data"], [""]) as sock:
        wait_until(lambda: ask(caller, agent.service_name, StatusRequest()).result["subscribers"] == 1, 10,
                   message="agent counts the subscriber")
        final = ask(caller, agent.service_name, InitSimRequest(movie_rate_hz=2000, pulse_height_rate_hz=500,
                                                               update_interval_seconds=0.2))
        assert final.action == "request_success", final.message
        messages = receive(sock, lambda ms: count(ms, 1, "img16") >= 2500 and count(ms, 3, "ph256") >= 600, 30)
    with PffReader(SAMPLE_IMG16) as reader:
        source_images = reader.block().images()
        source_pkt = reader.block().fields["pkt_num"]
    img = frames_of(messages, 1, "img16")
    seq = np.concatenate([m.seq for m in img])
    assert seq.tolist() == list(range(len(seq))), "seq has gaps or duplicates"
    images = np.concatenate([m.images for m in img])
    expected = source_images[np.arange(len(images)) % len(source_images)]
    assert np.array_equal(images, expected), "pixels differ from the source file"
    pkt = np.concatenate([m.pff_columns["pkt_num"][:, 0] for m in img])
    assert np.array_equal(pkt, source_pkt[np.arange(len(pkt)) % len(source_pkt), 0])
    wr = np.concatenate([m.wr_timestamp_ns for m in img])
    assert (np.diff(wr) == 500_000).all(), "WR time is not the simulated 2 kHz clock"
    assert abs(wr[0] / 1e9 - time.time()) < 60
    controls = [m for m in messages if isinstance(m, ControlHeader)]
    assert {c.event for c in controls} >= {"run_start"}


def test_module_whitelist_and_movie_flag_select_topics(agent, caller):
    assert ask(caller, agent.service_name, InitSimRequest(module_ids=[7, 8], movie_rate_hz=500,
                                                          pulse_height_rate_hz=200)).action == "request_success"
    wait_until(lambda: "8" in ask(caller, agent.service_name, StatusRequest()).result["modules"], 10,
               message="module 8 tracked")
    # module 7 replays source module 1 (img16 + ph256), module 8 source module 3 (ph256 only)
    answer = stream_endpoints(caller, agent, stream_pulse_height_data=False, module_ids=[7])
    assert answer["topics"][:3] == ["img16.007.", "img8.007.", "control."]
    assert answer["topics"][3].startswith("subscriber.user."), "the stream is named by its subscription"
    with subscriber(answer["endpoints"]["data"], answer["topics"]) as sock:
        messages = receive(sock, lambda ms: count(ms, 7, "img16") >= 300, 20)
    assert {(m.module_id, m.dp) for m in messages if isinstance(m, FrameBatch)} == {(7, "img16")}
    unknown = ask(caller, agent.service_name, StreamRequest(module_ids=[9]))
    assert unknown.action == "request_fail" and "modules [9] are not tracked" in unknown.message


def test_two_preview_subscribers_both_progress(agent, caller):
    assert ask(caller, agent.service_name, InitSimRequest(update_interval_seconds=0.1)).action == "request_success"
    preview = stream_endpoints(caller, agent)["endpoints"]["preview"]
    with subscriber(preview, ["img16."]) as fast, subscriber(preview, ["ph256.003."]) as slow:
        a = receive(fast, lambda ms: len(ms) >= 5, 15)
        b = receive(slow, lambda ms: len(ms) >= 3, 15)
    assert all(len(m) == 1 for m in a + b)
    assert {m.origin for m in a + b} == {"simulator"}, "previews keep the origin of their frames"
    frame_numbers = [m.frame_number[0] for m in a]
    assert frame_numbers == sorted(frame_numbers) and frame_numbers[-1] > frame_numbers[0]


@pytest.mark.parametrize("agent_config", [{"send_hwm": 100}])
def test_a_stuck_subscriber_neither_slows_nor_starves_another(agent, caller):
    endpoint = stream_endpoints(caller, agent)["endpoints"]["data"]
    stuck = zmq.Context.instance().socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.connect(endpoint)
    stuck.setsockopt(zmq.SUBSCRIBE, b"")  # connected, subscribed, never reads
    with closing(stuck), subscriber(endpoint, ["img16."]) as sock:
        wait_until(lambda: ask(caller, agent.service_name, StatusRequest()).result["subscribers"] == 2, 10,
                   message="both subscribers counted")
        assert ask(caller, agent.service_name, InitSimRequest(movie_rate_hz=5000)).action == "request_success"
        messages = receive(sock, lambda ms: count(ms, 1, "img16") >= 15000, 30)
    seq = np.concatenate([m.seq for m in frames_of(messages, 1, "img16")])
    assert seq.tolist() == list(range(len(seq))), "the reading subscriber lost frames"


def test_init_with_missing_dir_fails_with_the_reason(agent, caller):
    final = ask(caller, agent.service_name, InitHpIoRequest(data_dir="/no/such/dir"))
    assert final.action == "request_fail" and "data_dir '/no/such/dir' does not exist" in final.message


def test_a_too_short_interval_is_raised_to_the_minimum_and_a_stream_may_ask_for_every_frame(agent, caller):
    final = ask(caller, agent.service_name, InitHpIoRequest(data_dir="/tmp", update_interval_seconds=0.001))
    assert final.action == "request_success" and final.result["update_interval_seconds"] == 0.05
    assert final.result["note"] == "update_interval_seconds 0.001 is below this agent's minimum; using 0.05 s"
    assert ask(caller, agent.service_name, StreamRequest(update_interval_seconds=0)).action == "request_success"


def test_force_is_needed_while_consumers_are_subscribed_and_they_are_told(agent, caller, tmp_path):
    assert ask(caller, agent.service_name, InitSimRequest()).action == "request_success"
    endpoints = stream_endpoints(caller, agent)["endpoints"]
    with subscriber(endpoints["data"], ["control."]) as sock:
        wait_until(lambda: ask(caller, agent.service_name, StatusRequest()).result["subscribers"] >= 1, 10,
                   message="subscriber counted")
        refused = ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(tmp_path)))
        assert refused.action == "request_fail"
        assert "1 unidentified subscriber(s) are subscribed" in refused.message and "force=true" in refused.message
        forced = ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(tmp_path), force=True))
        assert forced.action == "request_success"
        messages = receive(sock, lambda ms: any(m.event == "reinit" for m in ms), 10)
    assert any(str(tmp_path) in m.message for m in messages if m.event == "reinit")


def test_rollover_and_a_new_run_are_followed_and_run_end_reported(agent, caller, tmp_path):
    data_dir = tmp_path / "daq"
    run1 = data_dir / "module_1" / "obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"
    run1.mkdir(parents=True)
    source = SAMPLE_PH256_M1.read_bytes()
    frame = 636
    name = "start_2024-07-25T04:34:46Z.dp_ph256.bpp_2.module_1.seqno_{}.pff"
    assert ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(data_dir))).action == "request_success"
    endpoints = stream_endpoints(caller, agent)["endpoints"]
    with subscriber(endpoints["data"], [""]) as sock:
        wait_until(lambda: ask(caller, agent.service_name, StatusRequest()).result["subscribers"] >= 1, 10,
                   message="subscriber counted")
        (run1 / name.format(0)).write_bytes(source[: 10 * frame + 100])
        receive(sock, lambda ms: count(ms, 1, "ph256") >= 10, 10)
        with open(run1 / name.format(0), "ab") as f:
            f.write(source[10 * frame + 100 : 20 * frame])
        (run1 / name.format(1)).write_bytes(source[20 * frame : 30 * frame])
        run2 = data_dir / "module_1" / "obs_Lick.start_2024-07-26T04:00:00Z.runtype_sci-data.pffd"
        run2.mkdir()
        (run2 / name.format(0)).write_bytes(source[30 * frame : 35 * frame])
        (run2 / "recording_ended").touch()
        messages = receive(sock, lambda ms: any(isinstance(m, ControlHeader) and m.event == "run_end"
                                                and m.run == run2.name for m in ms), 15)
    frames = frames_of(messages, 1, "ph256")
    raw = b"".join(m.images.tobytes() for m in frames)
    expected = b"".join(source[i * frame + 124 : (i + 1) * frame] for i in range(10, 35))
    assert raw == expected
    seqnos = [(m.run, m.seqno) for m in frames]
    assert seqnos[0] == (run1.name, 0) and seqnos[-1] == (run2.name, 0) and (run1.name, 1) in seqnos
    starts = [m.run for m in messages if isinstance(m, ControlHeader) and m.event == "run_start"]
    assert run2.name in starts


def test_status_counts_match_what_was_published_and_stop_ends_the_stream(agent, caller, tmp_path):
    run = tmp_path / "archived" / SAMPLE_RUN.name
    shutil.copytree(SAMPLE_RUN, run)
    endpoints = stream_endpoints(caller, agent)["endpoints"]
    with subscriber(endpoints["data"], [""]) as sock:
        wait_until(lambda: ask(caller, agent.service_name, StatusRequest()).result["subscribers"] >= 1, 10,
                   message="subscriber counted")
        assert ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(run))).action == "request_success"
        messages = receive(sock, lambda ms: count(ms, 1, "img16") >= 1000 and count(ms, 3, "ph256") >= 1000
                           and count(ms, 1, "ph256") >= 1000, 20)
        status = ask(caller, agent.service_name, StatusRequest()).result
        assert status["modules"]["1"]["img16"]["frames_published"] == count(messages, 1, "img16") == 1000
        assert status["modules"]["3"]["ph256"]["frames_published"] == 1000
        img16 = status["modules"]["1"]["img16"]  # the file ends in a torn frame of 640 bytes: still unread while
        # the run is live, counted lost once the run has been idle for run_end_idle_seconds (a race under load)
        assert img16["lag_bytes"] + img16["corrupt_bytes_skipped"] == 640
        assert img16["frames_lost"] == (0 if img16["lag_bytes"] == 640 else 1)
        assert ask(caller, agent.service_name, StopHpIoRequest()).action == "request_success"
        stop = receive(sock, lambda ms: any(isinstance(m, ControlHeader) and m.event == "stop" for m in ms), 10)
    assert stop
    assert ask(caller, agent.service_name, StatusRequest()).result["data_dir"] is None


def test_previews_are_encoded_only_while_subscribed_and_a_late_subscriber_gets_the_latest(agent, caller, tmp_path):
    run = tmp_path / "daq" / "module_1" / "obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"
    run.mkdir(parents=True)
    frame = 636
    name = agent.service_name
    init = InitHpIoRequest(data_dir=str(tmp_path / "daq"), update_interval_seconds=0.1)
    assert ask(caller, name, init).action == "request_success"
    endpoints = stream_endpoints(caller, agent)["endpoints"]
    wait_until(lambda: ask(caller, name, StatusRequest()).result["preview_subscribers"] == 0, 10,
               message="no preview subscriber left from other tests")
    before = ask(caller, name, StatusRequest()).result["work"]["previews_encoded"]
    with subscriber(endpoints["data"], ["ph256."]) as sock:
        wait_until(lambda: ask(caller, name, StatusRequest()).result["subscribers"] >= 1, 10,
                   message="subscriber counted")
        (run / "start_2024-07-25T04:34:46Z.dp_ph256.bpp_2.module_1.seqno_0.pff").write_bytes(
            SAMPLE_PH256_M1.read_bytes()[: 20 * frame])
        receive(sock, lambda ms: count(ms, 1, "ph256") >= 20, 10)
    status = ask(caller, name, StatusRequest()).result
    assert status["modules"]["1"]["ph256"]["frames_published"] == 20
    assert status["work"]["previews_encoded"] == before, "a preview was encoded while nobody subscribed to previews"
    with subscriber(endpoints["preview"], ["ph256."]) as preview:  # after the last frame: it gets the latest at once
        messages = receive(preview, lambda ms: any(isinstance(m, FrameBatch) for m in ms), 10)
    [latest] = [m for m in messages if isinstance(m, FrameBatch)]
    assert latest.seq.tolist() == [19] and latest.frame_number.tolist() == [19], "the latest frame of the stream"
    assert ask(caller, name, StatusRequest()).result["work"]["previews_encoded"] > before


def test_corrupt_region_in_a_live_file_is_survived(agent, caller, tmp_path):
    data_dir = tmp_path / "daq"
    run = data_dir / "module_2" / "obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"
    run.mkdir(parents=True)
    path = run / "start_2024-07-25T04:34:46Z.dp_ph256.bpp_2.module_2.seqno_0.pff"
    path.touch()
    source = SAMPLE_PH256_M1.read_bytes()
    assert ask(caller, agent.service_name, InitHpIoRequest(data_dir=str(data_dir))).action == "request_success"
    endpoints = stream_endpoints(caller, agent)["endpoints"]
    with subscriber(endpoints["data"], ["ph256."]) as sock:
        wait_until(lambda: ask(caller, agent.service_name, StatusRequest()).result["subscribers"] >= 1, 10,
                   message="subscriber counted")
        with open(path, "ab") as f:
            f.write(source[: 5 * 636] + b"\x00garbage" * 100 + source[5 * 636 : 10 * 636])
        messages = receive(sock, lambda ms: count(ms, 2, "ph256") >= 10, 10)
    status = ask(caller, agent.service_name, StatusRequest()).result["modules"]["2"]["ph256"]
    assert status["corrupt_bytes_skipped"] == 800
    seq = np.concatenate([m.seq for m in frames_of(messages, 2, "ph256")])
    assert seq.tolist() == list(range(5)) + list(range(6, 11)), "the lost frame is visible as a gap in seq"


HOOK_DIR = f"/tmp/std_daq_test_hook_{os.getpid()}"  # AF_UNIX paths are limited to 107 bytes


@pytest.mark.parametrize("agent_config", [{"socket_hook": True,
                                           "socket_path_template": HOOK_DIR + "/hp.dp_{dp}.sock"}])
def test_socket_hook_frames_are_published_and_garbage_is_survived(agent, caller, request):
    request.addfinalizer(lambda: shutil.rmtree(HOOK_DIR, ignore_errors=True))
    with PffReader(SAMPLE_IMG16) as reader:
        rows = [row.tobytes() for row in reader.block(0, 200).raw]
    endpoints = stream_endpoints(caller, agent)["endpoints"]
    with subscriber(endpoints["data"], ["socket.img16.005."]) as sock:
        wait_until(lambda: ask(caller, agent.service_name, StatusRequest()).result["subscribers"] >= 1, 10,
                   message="subscriber counted")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hashpipe:
            hashpipe.connect(f"{HOOK_DIR}/hp.dp_img16.sock")
            records = [(5).to_bytes(2, "big") + row for row in rows]
            hashpipe.sendall(b"".join(records[:100]) + b"\xff" * 5000 + b"".join(records[100:]))
            messages = receive(sock, lambda ms: count(ms, 5, "img16") >= 200, 15)
    batches = frames_of(messages, 5, "img16")
    assert {m.origin for m in batches} == {"socket"}
    assert np.concatenate([m.seq for m in batches]).tolist() == list(range(200))
    received = np.concatenate([m.images for m in batches])
    with PffReader(SAMPLE_IMG16) as reader:
        assert np.array_equal(received, reader.block(0, 200).images()), "pixels differ from the frames sent"
    hook = ask(caller, agent.service_name, StatusRequest()).result["socket_hook"]
    assert hook["frames_received"] == 200 and hook["bad_bytes"] == 5000 and hook["resyncs"] == 1
