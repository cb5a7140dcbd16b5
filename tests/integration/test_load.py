"""Load: 20 concurrent writes and 50 stream clients at mixed rates against one agent, for a bounded time.

What is asserted is behaviour under load: every write succeeds with its frames in order and every missing frame
shown (its seq gaps are the missing_frames it reports), every client progresses and sees each stream's frames in
order, so a frame lost to a slow client is a visible seq gap. How many frames arrive is a speed: the numbers are
printed by benchmarks/bench_load.py.
"""

from __future__ import annotations

import multiprocessing

import h5py
import numpy as np
from bench_common import mixed_subscribers
from conftest import service_stack, wait_until
from helpers.services import start_agent, start_writer

from std_daq_service.broker import RequestCaller
from std_daq_service.protocol import FrameBatch, StatusRequest, StreamRequest, WriteRequest

CLIENTS = 50
WRITES = 20


def stream_clients(data: str, preview: str, seconds: float, results) -> None:
    """In a child process: 25 full-rate and 25 preview subscribers; report (frames, steps back in seq) of each."""
    frames, disorder, last_seq = [0] * CLIENTS, [0] * CLIENTS, [{} for _ in range(CLIENTS)]

    def count(i: int, batch: FrameBatch) -> None:
        key, seq = (batch.module_id, batch.dp), batch.seq
        previous = last_seq[i].get(key)
        steps = np.diff(seq if previous is None else np.concatenate(([previous], seq)))
        disorder[i] += int((steps < 1).sum())
        last_seq[i][key] = int(seq[-1])
        frames[i] += len(batch)

    mixed_subscribers(data, preview, CLIENTS, seconds, count)
    results.put((frames, disorder))


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

            def data_subscribers() -> int:
                return caller.call(names[0], StatusRequest(), 15).finals[names[0]].result["subscribers"]

            # while the clients hold their sockets (12 s): the writes below may outlast them on a loaded machine
            wait_until(lambda: data_subscribers() >= CLIENTS // 2 + 1, 12, message="the full-rate clients connected")
            ids = [caller.publish(names[1], WriteRequest(output_file=f"load_{i}.h5", n_images=4000,
                                                         timeout_seconds=30)) for i in range(WRITES)]
            finals = {rid: caller.wait(rid, [names[1]], 60).finals.get(names[1]) for rid in ids}
            status = caller.call(names[0], StatusRequest(), 15).finals[names[0]].result
            frames, disorder = results.get(timeout=60)
            clients.join(10)
        failed = {rid: f and f.message for rid, f in finals.items() if f is None or f.action != "request_success"}
        assert not failed, failed
        for i, final in enumerate(finals.values()):
            with h5py.File(final.result["output_file"]) as f:
                assert f.attrs["complete"] and f["module_1/img16/data"].shape[0] == 4000
                seq = f["module_1/img16/seq"][()]
            steps = np.diff(seq)
            assert (steps >= 1).all(), f"write {i}: seq out of order or repeated"
            assert int((steps - 1).sum()) == final.result["streams"]["1/img16"]["missing_frames"], \
                f"write {i}: a frame missing from the file is not reported"
        assert min(frames) > 0, f"a client made no progress: {frames}"
        assert not any(disorder), f"clients saw frames out of order or twice: {disorder}"
        img16 = status["modules"]["1"]["img16"]
        assert img16["corrupt_bytes_skipped"] == 0
