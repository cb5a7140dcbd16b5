"""Load: 20 concurrent writes and 50 stream clients at mixed rates against one agent, for a bounded time."""

from __future__ import annotations

import multiprocessing
import time

import h5py
import numpy as np
from conftest import service_stack
from helpers.services import start_agent, start_writer

from std_daq_service.broker import RequestCaller
from std_daq_service.protocol import StatusRequest, StreamRequest, WriteRequest

CLIENTS = 50
WRITES = 20


def stream_clients(data: str, preview: str, seconds: float, results) -> None:
    """In a child process: 25 full-rate and 25 preview subscribers; report (frames, seq gaps) of each."""
    import zmq

    from std_daq_service.protocol import FrameBatch, decode_stream_message

    context = zmq.Context()
    sockets = []
    for i in range(CLIENTS):
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(data if i % 2 == 0 else preview)
        sock.setsockopt(zmq.SUBSCRIBE, b"img16." if i % 4 < 2 else b"")
        sockets.append(sock)
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    frames, gaps, next_seq = [0] * CLIENTS, [0] * CLIENTS, [{} for _ in range(CLIENTS)]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sock in dict(poller.poll(100)):
            i = sockets.index(sock)
            message = decode_stream_message(sock.recv_multipart())
            if not isinstance(message, FrameBatch):
                continue
            key, seq = (message.module_id, message.dp), message.header["seq"]
            if i % 2 == 0 and key in next_seq[i]:
                gaps[i] += seq[0] - next_seq[i][key]
            next_seq[i][key] = seq[-1] + 1
            frames[i] += len(message)
    results.put((frames, gaps))
    for sock in sockets:
        sock.close(0)
    context.term()


def test_twenty_writes_and_fifty_clients_at_once(tmp_path, redis_url, broker_url):
    with service_stack(redis_url, broker_url) as stack:
        names = [stack.name(kind) for kind in ("hp_io_agent", "writer")]
        agent, endpoint = start_agent(names[0], redis_url, stack.redis, tmp_path, movie_rate_hz=2000,
                                      pulse_height_rate_hz=500, update_interval_seconds=0.2)
        stack.add(agent)
        stack.add(start_writer(names[1], redis_url, stack.redis, tmp_path, [(names[0], endpoint)],
                               max_concurrent_writes=WRITES))
        with RequestCaller(broker_url, "test-load") as caller:
            endpoints = caller.call(names[0], StreamRequest(), 15).finals[names[0]].result["endpoints"]
            results = multiprocessing.Queue()
            clients = multiprocessing.Process(target=stream_clients,
                                              args=(endpoints["data"], endpoints["preview"], 12, results))
            clients.start()
            ids = [caller.publish(names[1], WriteRequest(output_file=f"load_{i}.h5", n_images=4000,
                                                         timeout_seconds=30)) for i in range(WRITES)]
            finals = {rid: caller.wait(rid, [names[1]], 60).finals.get(names[1]) for rid in ids}
            status = caller.call(names[0], StatusRequest(), 15).finals[names[0]].result
            frames, gaps = results.get(timeout=60)
            clients.join(10)
        succeeded = sum(f is not None and f.action == "request_success" for f in finals.values())
        print(f"load: writes ok {succeeded}/{WRITES}; "
              f"full-rate clients frames min/max {min(frames[0::2])}/{max(frames[0::2])}, gaps {max(gaps[0::2])}; "
              f"preview clients frames min/max {min(frames[1::2])}/{max(frames[1::2])}; agent published "
              f"{status['modules']['1']['img16']['frames_published']} img16 frames of module 1")
        failed = {rid: f and f.message for rid, f in finals.items() if f is None or f.action != "request_success"}
        assert not failed, failed
        for i in range(WRITES):
            with h5py.File(tmp_path / "out" / f"load_{i}.h5") as f:
                assert f.attrs["complete"] and f["module_1/img16/data"].shape[0] == 4000
                seq = f["module_1/img16/seq"][()]
                assert np.array_equal(np.diff(seq), np.ones(3999)), f"load_{i}.h5 has gaps"
        assert min(frames) > 0, f"a client made no progress: {frames}"
        assert max(gaps[0::2]) == 0, f"full-rate clients lost frames: {gaps[0::2]}"
        img16 = status["modules"]["1"]["img16"]
        assert img16["corrupt_bytes_skipped"] == 0 and status["subscribers"] >= CLIENTS // 2 + 1
