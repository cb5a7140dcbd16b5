"""panoseti_grpc's README code examples, run as its users run them, with only the import line changed.

The examples are copied from panoseti_grpc's README (github.com/panoseti/panoseti_grpc, section "Using the
`DaqDataClient` API" and "Using `AioDaqDataClient`"); `from daq_data.client import` became
`from std_daq_service.client import`. What the README leaves to the reader (the config paths, `import json`, the
client import of snippets that have none) is the PREAMBLE. Each example runs in a subprocess in a directory holding
the README's config files (daq_config.json's `daq_nodes` name the test agent's address, a loopback address of its
own so that no other agent on this machine is touched), like a notebook: top-level `await` is allowed, as in the
README's last example. Endless print loops are read until they printed enough, then stopped. The agent simulates
with the project's defaults. The PanoImagePreviewer example needs panoseti's plotting class and is not run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from conftest import REPO, ServiceProcess, service_stack

from std_daq_service.client import AioDaqDataClient, DaqDataClient
from std_daq_service.protocol import InvalidRequest

PREAMBLE = """
import json
from std_daq_service.client import DaqDataClient
daq_config_path = 'path/to/your/daq_config.json'
network_config_path = 'path/to/your/network_config.json'
daq_config, network_config = daq_config_path, network_config_path
"""

RUNNER = """
import ast, asyncio, sys
source = open(sys.argv[1]).read()
result = eval(compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT), {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""

# panoseti_grpc's README, only the import line changed:

CLIENT_INITIALIZATION = r'''
from std_daq_service.client import DaqDataClient

# Instantiate the client using a 'with' statement
with DaqDataClient(daq_config_path, network_config_path) as client:
    # Your code to interact with the client goes here
    valid_hosts = client.get_valid_daq_hosts()
    print(f"Successfully connected to: {valid_hosts}")
'''

CHECKING_SERVER_STATUS = r'''
with DaqDataClient(daq_config_path, network_config_path) as client:
    # Get all responsive hosts
    hosts = client.get_valid_daq_hosts()
    print(f"Valid hosts: {hosts}")

    # Discover the services on the first valid host
    if hosts:
        host = list(hosts)[0]
        service_info = client.reflect_services(host)
        print(service_info)
'''

INIT_HP_IO = r'''
with DaqDataClient(daq_config_path, network_config_path) as client:
    # Load hp_io configuration from a file
    with open('path/to/hp_io_config.json', 'r') as f:
        hp_io_config = json.load(f)
    # Initialize all valid hosts
    success = client.init_hp_io(hosts=None, hp_io_cfg=hp_io_config)
    if success:
        print("Successfully initialized hp_io on all DAQ nodes.")
'''

INIT_SIM = r'''
with DaqDataClient(daq_config_path, network_config_path) as client:
    # Initialize the first valid host in simulation mode
    host = list(client.get_valid_daq_hosts())[0]
    success = client.init_sim(host)
    if success:
        print(f"Successfully initialized simulation on {host}.")
'''

STREAM_IMAGES = r'''
# Assume the server has already been initialized.
with DaqDataClient(daq_config_path, network_config_path) as client:
    # Create a request to stream pulse-height data for all modules
    pano_image_stream = client.stream_images(
        hosts=None,
        stream_movie_data=False,
        stream_pulse_height_data=True,
        update_interval_seconds=0.5,
        module_ids=()
    )

    # Process the first 10 images from the stream
    print("Starting image stream...")
    for pano_image in pano_image_stream:
        print(
            f"Received image from Module {pano_image['module_id']} "
            f"with shape {pano_image['image_array'].shape}"
        )
'''

EXAMPLE_WORKFLOW = r'''
from std_daq_service.client import DaqDataClient

# 0. Specify configuration file paths
daq_config_path = 'daq_data/config/daq_config_grpc_simulate.json'
network_config_path = 'daq_data/config/network_config_grpc_simulate.json'

# 1. Connect to all DAQ nodes
with DaqDataClient(daq_config_path, network_config_path) as client:
    # 2. Get valid hosts
    valid_hosts = client.get_valid_daq_hosts()
    if not valid_hosts:
        raise RuntimeError("No valid DAQ hosts found.")
    print(f"Connected to: {valid_hosts}")

    # 3. Initialize servers in simulation mode
    all_init_success = client.init_sim(valid_hosts)
    if not all_init_success:
        raise RuntimeError("Failed to initialize one or more servers.")
    print("All servers initialized for simulation.")

    # 4. Stream pulse-height and movie data from all modules
    pano_image_stream = client.stream_images(
        hosts=valid_hosts,
        stream_movie_data=True,
        stream_pulse_height_data=True,
        update_interval_seconds=1.0,
        module_ids=()
    )

    # 5. Listen to the stream and process data
    print("Starting data stream. Press Ctrl+C to stop.")
    for pano_image in pano_image_stream:
        # In a real application, you would pass this data to a
        # visualization or analysis function.
        print(
            f"Image: Module {pano_image['module_id']}, "
            f"Type: {pano_image['type']}, "
            f"Timestamp: {pano_image['header']['pandas_unix_timestamp']}"
        )
'''

ASYNC_INTRODUCTORY = r'''
import asyncio
from std_daq_service.client import AioDaqDataClient

async def main():
    # 0. Specify configuration file paths
    daq_config_path = 'daq_data/config/daq_config_grpc_simulate.json'
    network_config_path = 'daq_data/config/network_config_grpc_simulate.json'

    # 1. Connect to all DAQ nodes asynchronously
    async with AioDaqDataClient(daq_config_path, network_config_path) as client:
        # 2. Get valid hosts
        valid_hosts = await client.get_valid_daq_hosts()
        if not valid_hosts:
            raise RuntimeError("No valid DAQ hosts found.")
        print(f"Connected to: {valid_hosts}")

        # 3. Initialize servers in simulation mode
        all_init_success = await client.init_sim(valid_hosts)
        if not all_init_success:
            raise RuntimeError("Failed to initialize one or more servers.")
        print("All servers initialized for simulation.")

        # 4. Asynchronously stream data
        pano_image_stream = client.stream_images(
            hosts=valid_hosts,
            stream_movie_data=True,
            stream_pulse_height_data=True,
            update_interval_seconds=1.0,
        )

        # 5. Process the stream with an async for loop
        print("Starting async data stream. Press Ctrl+C to stop.")
        async for pano_image in pano_image_stream:
            print(
                f"Image: Module {pano_image['module_id']}, "
                f"Type: {pano_image['type']}, "
                f"Timestamp: {pano_image['header']['pandas_unix_timestamp']}"
            )

if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("Stream stopped.")
'''

ASYNC_ROBUST = r'''
import asyncio
import signal
from std_daq_service.client import AioDaqDataClient

async def main():
    # 1. Create a shutdown event
    shutdown_event = asyncio.Event()

    # 2. Define a signal handler to set the event
    def _signal_handler(*_):
        print("\\nShutdown signal received, closing client stream...")
        shutdown_event.set()

    # 3. Attach the handler to the asyncio event loop
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _signal_handler)

    # 4. Pass the event to the client constructor
    async with AioDaqDataClient(
        daq_config,
        network_config,
        stop_event=shutdown_event
    ) as client:
        try:
            # The stream will run until Ctrl+C is pressed
            pano_image_stream = await client.stream_images(
                hosts=[],
                stream_movie_data=True,
                stream_pulse_height_data=True,
                update_interval_seconds=1.0,
            )

            # Iterate over the async generator
            async for pano_image in pano_image_stream:
                print(f"Received image for module {pano_image['module_id']}")

        except asyncio.CancelledError:
            print("Stream cancelled.")

if __name__ == "__main__":
    try:
        loop = asyncio.get_event_loop()
        main_task = loop.create_task(main())
        await main_task
    except KeyboardInterrupt:
        print("Client stopped.")
'''


def panoseti_configs(address: str) -> tuple[dict, dict]:
    """daq_config.json and network_config.json in panoseti's shapes, its DAQ node at `address`."""
    daq_config = {"head_node_data_dir": "", "head_node_ip_addr": "localhost", "daq_nodes": [
        {"ip_addr": "10.0.0.60", "user_name": "", "data_dir": "simulated_data_dir", "module_ids": "0-127"},
        {"ip_addr": address, "user_name": "", "data_dir": "simulated_data_dir", "module_ids": "128-255"}]}
    network_config = {"modules": [{"ip_addr": "192.168.3.248", "port_forwarding": {"status": False}}],
                      "daq_nodes": [{"ip_addr": address, "port_forwarding": {"status": True, "port": 22}}]}
    return daq_config, network_config


@pytest.fixture(scope="module")
def node(tmp_path_factory, redis_url, broker_url):
    """An agent on a loopback address of its own, and a working dir with the README's config files."""
    directory = tmp_path_factory.mktemp("panoseti")
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
    daq_config, network_config = panoseti_configs(address)
    for path in ("path/to/your/daq_config.json", "daq_data/config/daq_config_grpc_simulate.json"):
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_text(json.dumps(daq_config))
    for path in ("path/to/your/network_config.json", "daq_data/config/network_config_grpc_simulate.json"):
        (directory / path).write_text(json.dumps(network_config))
    (directory / "data").mkdir()
    (directory / "path/to/hp_io_config.json").write_text(json.dumps({  # panoseti's hp_io_config_lick.json
        "data_dir": str(directory / "data"), "update_interval_seconds": 0.1, "force": True, "simulate_daq": False,
        "module_ids": [], "comments": "Default Lick observatory config for daq1"}))
    (directory / "runner.py").write_text(RUNNER)
    with service_stack(redis_url, broker_url) as stack:
        name = stack.name("hp_io_agent")
        config = {"data_bind": f"tcp://{address}:*", "preview_bind": f"tcp://{address}:*",
                  "sim_data_dir": str(directory / "sim"), "min_update_interval_seconds": 0.05}
        agent = stack.add(ServiceProcess("hp_io_agent", name, config, redis_url, directory))
        agent.wait_ready(stack.redis)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "REDIS_URL": redis_url,
               "BROKER_URL": broker_url}
        yield {"name": name, "address": address, "dir": directory, "env": env, "daq_config": daq_config}


@contextmanager
def example(node, source: str):
    """Run an example (after the PREAMBLE) in a subprocess; yield it; kill it if it still runs at the end."""
    path = node["dir"] / "example.py"
    path.write_text(PREAMBLE + source)
    process = subprocess.Popen([sys.executable, "runner.py", str(path)], cwd=node["dir"], env=node["env"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


def read_lines(process: subprocess.Popen, enough, timeout: float) -> list[str]:
    """The lines the example printed, once `enough(lines)` holds or it ended; fail after `timeout` seconds."""
    lines, pending = [], b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not enough(lines):
            remaining = deadline - time.monotonic()
            assert remaining > 0, "example printed too little in time:\n" + "".join(lines)
            if not selector.select(remaining):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            lines += [line.decode() + "\n" for line in complete]
    return lines


def run_to_end(node, source: str) -> str:
    with example(node, source) as process:
        output = "".join(read_lines(process, lambda lines: False, 60))
        assert process.wait(10) == 0, output
    assert "Traceback" not in output, output
    return output


def count(text: str):
    return lambda lines: sum(text in line for line in lines) >= 6


def test_client_initialization_and_server_status(node):
    assert f"Successfully connected to: {{'{node['name']}'}}" in run_to_end(node, CLIENT_INITIALIZATION)
    output = run_to_end(node, CHECKING_SERVER_STATUS)
    assert f"Valid hosts: {{'{node['name']}'}}" in output and "init_hp_io" in output


def test_init_hp_io_with_panoseti_config_file_and_its_comments(node):
    assert "Successfully initialized hp_io on all DAQ nodes." in run_to_end(node, INIT_HP_IO)


def test_init_sim_of_the_first_valid_host(node):
    assert f"Successfully initialized simulation on {node['name']}." in run_to_end(node, INIT_SIM)


def test_stream_images_print_loop(node):
    with example(node, STREAM_IMAGES) as process:
        lines = read_lines(process, count("Received image from Module"), 60)
    assert "Starting image stream..." in lines[0]
    assert "Received image from Module 3 with shape (16, 16)" in "".join(lines), "pulse-height images only"


@pytest.mark.parametrize("source", ["EXAMPLE_WORKFLOW", "ASYNC_INTRODUCTORY"])
def test_workflows_print_the_pandas_unix_timestamp(node, source):
    with example(node, globals()[source]) as process:
        lines = read_lines(process, count("Timestamp: 20"), 60)
    output = "".join(lines)
    assert "All servers initialized for simulation." in output and "KeyError" not in output, output
    assert "Type: MOVIE" in output or "Type: PULSE_HEIGHT" in output


def test_async_workflow_stops_on_sigint_through_stop_event(node):
    with example(node, ASYNC_ROBUST) as process:
        read_lines(process, count("Received image for module"), 60)
        process.send_signal(signal.SIGINT)
        output = "".join(read_lines(process, lambda lines: False, 30))
        assert process.wait(10) == 0, output
    assert "Shutdown signal received, closing client stream..." in output and "Traceback" not in output, output


def test_ping_by_address_and_by_name(node):
    with DaqDataClient(node["daq_config"]) as client:
        assert client.ping(node["address"]) and client.ping(node["name"])
        assert not client.ping("192.0.2.1") and not client.ping("nobody.nowhere.hp_io_agent", 1)


def test_init_calls_return_a_bool_and_log_each_failure(node, caplog):
    simulate = {"data_dir": "simulated_data_dir", "update_interval_seconds": 0.001, "force": True,
                "simulate_daq": True, "module_ids": [], "comments": "panoseti's test interval"}
    with DaqDataClient(node["daq_config"]) as client:
        assert client.init_sim([node["address"]], simulate, timeout=15) is True
        status = client.status(node["name"])[node["name"]]
        assert status["update_interval_seconds"] == 0.05, "0.001 s raised to the agent's minimum"
        with caplog.at_level(logging.ERROR):
            assert client.init_hp_io(node["address"], {**simulate, "simulate_daq": False, "data_dir": "/no/dir"},
                                     15) is False
        assert "init_hp_io failed on" in caplog.text and "'/no/dir' does not exist" in caplog.text
        with pytest.raises(InvalidRequest, match="comment: unknown field"):
            client.init_hp_io(node["address"], {**simulate, "comment": "a typo"})
        with pytest.raises(InvalidRequest, match="simulate_daq: true"):
            client.init_sim(node["address"], {**simulate, "simulate_daq": False})


def test_async_init_sim_with_the_config_as_second_argument(node):
    async def main():
        async with AioDaqDataClient(node["daq_config"]) as client:
            return await client.init_sim(node["address"], {"simulate_daq": True, "force": True}, timeout=15)

    assert asyncio.run(asyncio.wait_for(main(), 60)) is True
