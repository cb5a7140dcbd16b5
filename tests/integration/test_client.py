"""The Python client (sync and asyncio) against simulated runs on real agents and a writer."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from decimal import Decimal

import numpy as np
import pytest
from conftest import service_stack
from helpers.services import start_agent, start_writer

from std_daq_service.client import AioDaqDataClient, DaqDataClient
from std_daq_service.protocol import Busy, NoServiceAnswered, UnknownTarget


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, redis_url, broker_url):
    """Two agents (modules 1+3 and 5) and a writer recording both."""
    directory = tmp_path_factory.mktemp("client")
    with service_stack(redis_url, broker_url) as stack:
        names = [stack.name(kind) for kind in ("hp_io_agent", "hp_io_agent", "writer")]
        processes, endpoints = [], []
        for name, modules, sub in ((names[0], [1, 3], "a"), (names[1], [5], "b")):
            (directory / sub).mkdir()
            agent, endpoint = start_agent(name, redis_url, stack.redis, directory / sub, module_ids=modules,
                                          movie_rate_hz=200, pulse_height_rate_hz=50, update_interval_seconds=0.1)
            processes.append(stack.add(agent, clean_exit=False))  # a test kills node b
            endpoints.append((name, endpoint))
        processes.append(stack.add(start_writer(names[2], redis_url, stack.redis, directory, endpoints),
                                   clean_exit=False))
        yield names, processes


def test_discovery_ping_and_reflection(nodes):
    (a, b, writer), _ = nodes
    with DaqDataClient({"agents": [a, b]}) as client:
        assert client.get_valid_daq_hosts() == {a, b}
        assert client.ping(a) and not client.ping("nobody.nowhere.hp_io_agent", timeout=1)
        reflected = client.reflect_services([a, writer])
        assert set(reflected["services"]) == {a, writer}
        assert "n_images" in reflected["request_types"]["write"]["properties"]
        assert set(client.status(a)[a]["modules"]) == {"1", "3"}
    panoseti_config = {"daq_nodes": [{"ip_addr": "127.0.0.1", "data_dir": "/data", "module_ids": "0-255"}]}
    with DaqDataClient(panoseti_config) as client:
        assert {a, b} <= client.get_valid_daq_hosts(), "nodes of panoseti's daq_config.json, by address"
        assert {a, b} <= set(client.status("127.0.0.1")), "a host address stands for the agents on it"
        with pytest.raises(UnknownTarget):
            client.status("192.0.2.1")


def test_stream_images_yields_pano_images_of_every_module_at_the_client_rate(nodes):
    (a, b, _), _ = nodes
    seen: dict[tuple[str, int, str], int] = {}
    with DaqDataClient() as client:
        start = time.monotonic()
        for image in client.stream_images([a, b], update_interval_seconds=0.5):
            seen[(image["host"], image["module_id"], image["dp"])] = seen.get(
                (image["host"], image["module_id"], image["dp"]), 0) + 1
            if len(seen) == 5 and min(seen.values()) >= 3:
                break
            assert time.monotonic() - start < 20, f"streams missing: {seen}"
        elapsed = time.monotonic() - start
    # module 5 replays source module 1 (img16 and ph256), module 3 source module 3 (ph256 only)
    assert set(seen) == {(a, 1, "img16"), (a, 1, "ph256"), (a, 3, "ph256"), (b, 5, "img16"), (b, 5, "ph256")}
    assert max(seen.values()) <= elapsed / 0.5 + 2, "each stream comes at most once per interval"
    assert image["type"] in ("MOVIE", "PULSE_HEIGHT") and isinstance(image["header"]["wr_unix_timestamp"], Decimal)
    assert image["image_array"].shape == tuple(image["shape"]) and image["file"].endswith(".pff")


def test_full_rate_stream_has_gap_free_seq(nodes):
    (a, _, _), _ = nodes
    with DaqDataClient() as client:
        seqs = []
        for image in client.stream_images(a, stream_pulse_height_data=False, update_interval_seconds=0,
                                          module_ids=[1]):
            seqs.append(image["seq"])
            assert image["image_array"].dtype == np.uint16
            if len(seqs) == 300:
                break
    assert seqs == list(range(seqs[0], seqs[0] + 300))


def test_write_through_the_client(nodes):
    (_, _, writer), _ = nodes
    with DaqDataClient() as client:
        result = client.write(writer, output_file="client.h5", n_images=50, data_products=["img16"])
    assert result["complete"] and set(result["streams"]) == {"1/img16", "5/img16"}


def test_a_client_caller_can_except_busy(nodes):
    (_, _, writer), _ = nodes
    with DaqDataClient() as client:
        client.write(writer, output_file="busy.h5", n_images=5, data_products=["img16"])
        with pytest.raises(Busy, match="busy.h5 exists; set overwrite=true"):
            client.write(writer, output_file="busy.h5", n_images=5, data_products=["img16"])


def test_async_client(nodes):
    (a, b, writer), _ = nodes

    async def main():
        async with AioDaqDataClient() as client:
            hosts = await client.get_valid_daq_hosts()
            images = []
            async for image in client.stream_images([a, b], update_interval_seconds=0.2):
                images.append(image)
                if {i["module_id"] for i in images} >= {1, 3, 5}:
                    break
            request_id = await client.write_async(writer, output_file="async_client.h5", n_images=20)
            result = await client.wait(request_id, writer, 30)
            return hosts, images, result

    hosts, images, result = asyncio.run(asyncio.wait_for(main(), 60))
    assert {a, b} <= hosts and result["frames"] > 0


def test_a_node_killed_mid_stream_is_reported_and_the_other_goes_on(nodes):
    (a, b, _), processes = nodes
    with DaqDataClient() as client:
        after_kill: set[int] = set()
        killed_at = None
        for image in client.stream_images([a, b], update_interval_seconds=0.2):
            if killed_at is None:
                processes[1].process.send_signal(signal.SIGKILL)  # node b dies without a word
                killed_at = time.monotonic()
                continue
            if time.monotonic() - killed_at > 0.5:
                after_kill.add(image["module_id"])
            if b in client.failed_hosts and {1, 3} <= after_kill:
                break
            assert time.monotonic() - killed_at < 30, f"failed hosts {client.failed_hosts}, modules {after_kill}"
    assert client.failed_hosts[b] == "liveness beacon expired"
    with DaqDataClient() as client, pytest.raises(NoServiceAnswered):
        client.status(b, timeout=2)


def test_a_silent_stream_keeps_the_broker_connection_alive(nodes, broker_url):
    (a, _, _), _ = nodes
    stop = threading.Event()
    with DaqDataClient(broker_url=f"{broker_url}?heartbeat=1") as client:  # the broker gives up after ~2 s
        connection = client.caller.connection
        timer = threading.Timer(5, stop.set)  # the stream's own length: module 3 has pulse-height data only
        timer.start()
        try:
            assert list(client.stream_images([a], stream_pulse_height_data=False, module_ids=[3],
                                             stop_event=stop)) == []
        finally:
            timer.cancel()
        assert client.status([a])[a], "a request after the stream"
        assert client.caller.connection is connection, "the connection was lost and reopened"
