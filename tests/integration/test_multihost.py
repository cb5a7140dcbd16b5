"""Several hosts on a real network stack: agents, writer and head node in network namespaces joined by a bridge.

Every node is a network namespace with one address in 10.213.0.0/24, which exists only inside the test's
namespaces: three agent nodes (10.213.0.11-13), a writer node (.2), a head node (.1) running its own Redis,
RabbitMQ and the REST proxy, and an operator node (.100) that the test's thread enters to call the proxy, the
broker and Redis. Frames, requests and statuses cross veth pairs and a bridge. Then faults on the links.
Marked `multihost` (run by .ci/run after the default suite); skipped where namespaces are not available.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import pytest
import redis
import requests
from conftest import REPO, wait_until
from helpers.loopback import config_violations
from helpers.network_namespaces import Network, namespaces_unavailable, netem_unavailable

from std_daq_service.broker import RequestCaller
from std_daq_service.protocol import InitSimRequest, StatusRequest, WriteRequest

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(600)]

HEAD, WRITER, OPERATOR = "head", "writer", "operator"
AGENTS = {"agent1": 11, "agent2": 12, "agent3": 13}
MODULES = {"agent1": [1, 3], "agent2": [5, 7], "agent3": [9, 11]}
"""The embedded Lick excerpt relabelled per node: img16 + ph256 of the first module, ph256 of the second."""
RATE_HZ = 200
DATA_PORT, PREVIEW_PORT, REST_PORT = 5555, 5556, 5000


class Cluster:
    """The nodes, their servers and services; the test's thread is inside the operator node meanwhile."""

    def __init__(self, network: Network, directory: Path):
        self.net, self.dir = network, directory
        self.head = network.addresses[HEAD]
        self.redis_url = f"redis://{self.head}:6379/0"
        self.broker_url = f"amqp://guest:guest@{self.head}:5672/%2F"
        self.rest = f"http://{self.head}:{REST_PORT}"
        self.redis = redis.Redis.from_url(self.redis_url, socket_timeout=5, decode_responses=True)
        self.tag = uuid.uuid4().hex[:6]
        self.names = {node: f"test.{self.tag}.{node}.hp_io_agent" for node in AGENTS}
        self.names |= {WRITER: f"test.{self.tag}.writer", "rest": f"test.{self.tag}.rest"}
        self.services: dict[str, subprocess.Popen] = {}

    def start_servers(self) -> None:
        """Redis and RabbitMQ of the head node, on its address, with their own data dirs, nodename and cookie."""
        self._run(HEAD, "redis", ["redis-server", "--bind", self.head, "--port", "6379", "--save", "",
                                  "--appendonly", "no", "--protected-mode", "no", "--dir", str(self.dir)])
        home = self.dir / "rabbitmq"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o600)
        (home / "rabbitmq-env.conf").write_text("")
        (home / "enabled_plugins").write_text("[].\n")
        (home / "rabbitmq.conf").write_text(f"listeners.tcp.default = {self.head}:5672\nloopback_users = none\n")
        env = {**os.environ, "HOME": str(home), "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
               "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
               "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
               "RABBITMQ_NODENAME": f"stddaq{self.tag}@localhost", "RABBITMQ_NODE_IP_ADDRESS": self.head,
               "RABBITMQ_NODE_PORT": "5672", "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
               "RABBITMQ_LOG_BASE": str(home / "log"), "ERL_EPMD_ADDRESS": "127.0.0.1"}
        self._run(HEAD, "rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=env)
        wait_until(self._redis_answers, 30, 0.2, "the head node's Redis")
        wait_until(self._broker_answers, 120, 0.5, "the head node's RabbitMQ")

    def _redis_answers(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.ConnectionError:
            return False

    def _broker_answers(self) -> bool:
        import pika

        try:
            pika.BlockingConnection(pika.URLParameters(self.broker_url)).close()
            return True
        except pika.exceptions.AMQPError:
            return False

    def _run(self, node: str, name: str, argv: list[str], **popen) -> subprocess.Popen:
        """Start `argv` inside `node`, its output appended to `<name>.log`."""
        with open(self.dir / f"{name}.log", "a") as log:
            return self.net.run(node, argv, stdout=log, stderr=subprocess.STDOUT, **popen)

    def start(self, node: str, kind: str, name: str, config: dict) -> subprocess.Popen:
        """Store `config` in the head's Redis and start the service inside `node`."""
        problems = config_violations(config, frozenset(self.net.addresses.values()))
        assert not problems, f"config of {name} leaves the test's network: {problems}"
        self.redis.set(f"config.{name}", json.dumps(config))
        env = {**os.environ, "SERVICE_NAME": name, "REDIS_URL": self.redis_url, "BROKER_URL": self.broker_url}
        self.services[name] = self._run(node, name, [sys.executable, "-m", f"std_daq_service.{kind}"], env=env,
                                        cwd=REPO)
        return self.services[name]

    def start_agent(self, node: str) -> subprocess.Popen:
        return self.start(node, "hp_io_agent", self.names[node], {
            "data_bind": f"tcp://*:{DATA_PORT}", "preview_bind": f"tcp://*:{PREVIEW_PORT}",
            "advertise_host": self.net.addresses[node], "sim_data_dir": str(self.dir / node / "sim"),
            "min_update_interval_seconds": 0.05})

    def wait_ready(self, name: str, timeout: float = 60) -> None:
        def beacon():
            assert self.services[name].poll() is None, f"{name} exited:\n{self.log(name)}"
            return self.redis.hget(f"status.{name}", "broker_connected") == "true"

        wait_until(beacon, timeout, 0.2, f"{name} beacon with a broker connection")

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text()

    def caller(self) -> RequestCaller:
        return RequestCaller(self.broker_url, f"test-multihost-{uuid.uuid4().hex[:4]}")

    def simulate(self, node: str) -> None:
        name = self.names[node]
        with self.caller() as caller:
            final = caller.call(name, InitSimRequest(module_ids=MODULES[node], movie_rate_hz=RATE_HZ,
                                                     pulse_height_rate_hz=RATE_HZ), 60).finals[name]
        assert final.action == "request_success", final.message

    def agent_status(self, node: str) -> dict:
        with self.caller() as caller:
            return caller.call(self.names[node], StatusRequest(), 30).finals[self.names[node]].result

    def write(self, output_file: str, timeout: float = 120, **fields) -> dict:
        answer = requests.post(f"{self.rest}/write_sync", json={"output_file": output_file, **fields},
                               timeout=timeout).json()
        assert answer.get("status") == "ok", answer
        return answer["response"]


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, loopback_guard):
    """Six nodes on one bridge, the head's servers, three simulating agents, a writer and the proxy."""
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"several-hosts tests need network namespaces: {reason}")
    before = _netns_list()
    directory = tmp_path_factory.mktemp("multihost")
    network = Network()
    try:
        for node, host in {HEAD: 1, WRITER: 2, **AGENTS, OPERATOR: 100}.items():
            network.add(node, host)
        addresses = set(network.addresses.values())
        with loopback_guard.allow_namespaces(addresses, network.namespace_inodes), network.inside(OPERATOR):
            cluster = Cluster(network, directory)
            try:
                cluster.start_servers()
                for node in AGENTS:
                    cluster.start_agent(node)
                for node in AGENTS:
                    cluster.wait_ready(cluster.names[node])
                    cluster.simulate(node)
                cluster.start(WRITER, "writer", cluster.names[WRITER], {
                    "agents": [{"name": cluster.names[n], "data": f"tcp://{network.addresses[n]}:{DATA_PORT}"}
                               for n in AGENTS],
                    "output_root": str(directory / "out"), "ring_buffer_seconds": 6})
                cluster.start(HEAD, "rest", cluster.names["rest"], {
                    "host": cluster.head, "port": REST_PORT, "writers": [cluster.names[WRITER]],
                    "agents": [cluster.names[n] for n in AGENTS],
                    "allow_unauthenticated_remote": True})  # reachable only inside the test's own namespaces
                (directory / "out").mkdir()
                cluster.wait_ready(cluster.names[WRITER])
                cluster.wait_ready(cluster.names["rest"])
                yield cluster
            finally:
                cluster.redis.close()
    finally:
        network.close()
        assert _netns_list() == before, "namespaces left behind"


def _streams(path: Path) -> dict[str, dict]:
    """Per stream of a written file ("1/img16"): its frame count, missing frames and first and last seq."""
    streams = {}
    with h5py.File(path, "r") as h5:
        assert h5.attrs["complete"]

        def visit(name, item):
            if "n_frames" in item.attrs:
                streams[name.removeprefix("module_")] = {
                    "n_frames": int(item.attrs["n_frames"]), "missing_frames": int(item.attrs["missing_frames"]),
                    "seq": (int(item["seq"][0]), int(item["seq"][-1]))}

        h5.visititems(visit)
    return streams


def test_frames_and_requests_cross_the_network_from_three_agent_nodes_to_the_writer_node(cluster):
    result = cluster.write("across.h5", n_images=400)
    assert result["complete"] and result["missing_frames"] == 0, result
    sources = {stream["source"] for stream in result["streams"].values()}
    assert sources == {cluster.names[node] for node in AGENTS}
    streams = _streams(cluster.dir / "out" / "across.h5")
    assert len(streams) == 9, streams
    assert all((s["n_frames"], s["missing_frames"]) == (400, 0) for s in streams.values()), streams
    data = cluster.agent_status("agent2")
    assert data["modules"]["5"]["img16"]["frames_published"] > 0


def test_an_agent_link_down_for_ten_seconds_during_a_write_resumes_and_the_gap_is_recorded(cluster):
    with cluster.caller() as caller:
        request_id = caller.publish(cluster.names[WRITER], WriteRequest(output_file="link_down.h5",
                                                                        duration_seconds=30, timeout_seconds=120))
        started = caller.wait(request_id, [cluster.names[WRITER]], 30, until_action="request_start")
        assert started.history, "the write did not start"
        cluster.net.link("agent1", up=False)
        down_at = time.time_ns()
        time.sleep(10)  # the fault itself lasts 10 s; nothing is awaited here
        cluster.net.link("agent1", up=True)
        up_at = time.time_ns()
        final = caller.wait(request_id, [cluster.names[WRITER]], 120).finals[cluster.names[WRITER]]
    assert final.action == "request_success", final.message
    result = final.result
    agent1 = {k: s for k, s in result["streams"].items() if s["source"] == cluster.names["agent1"]}
    others = {k: s for k, s in result["streams"].items() if s["source"] != cluster.names["agent1"]}
    print(f"\nlink of agent1 down {(up_at - down_at) / 1e9:.1f} s during a 30 s write; agent1 streams: "
          f"{ {k: (s['frames'], s['missing_frames']) for k, s in agent1.items()} }; others: "
          f"{ {k: (s['frames'], s['missing_frames']) for k, s in others.items()} }; warnings {result['warnings']}")
    assert all(s["last_timestamp_ns"] > up_at - 1_000_000_000 for s in agent1.values()), "agent1 did not resume"
    assert all(s["missing_frames"] == 0 for s in others.values())
    streams = _streams(cluster.dir / "out" / "link_down.h5")
    for key, stream in agent1.items():
        assert streams[key]["missing_frames"] == stream["missing_frames"]
        assert streams[key]["seq"][1] - streams[key]["seq"][0] + 1 == stream["frames"] + stream["missing_frames"]



def _round_trips(cluster: Cluster, node: str, n: int = 15) -> list[float]:
    """Seconds from sending a status request to `node`'s agent to its final status, from the operator node."""
    name, seconds = cluster.names[node], []
    with cluster.caller() as caller:
        for _ in range(n):
            t0 = time.monotonic()
            assert caller.call(name, StatusRequest(), 30).ok
            seconds.append(time.monotonic() - t0)
    return seconds


@pytest.fixture
def slow_lossy_links(cluster):
    """50 ms delay and 1 % loss on every node's link: `tc netem` where the kernel has it, else every packet a
    node sends held 50 ms (1 % dropped) by tests/helpers/slow_link.py through iptables' NFQUEUE."""
    net, nodes = cluster.net, [HEAD, WRITER, *AGENTS, OPERATOR]
    netem = netem_unavailable()
    if netem and shutil.which("iptables") is None:
        pytest.skip(f"{netem}, and no iptables to send packets to slow_link.py either (./setup_dev_env.sh installs it)")
    holders = []
    try:
        if netem is None:
            for node in nodes:
                net.exec(node, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "50ms", "loss", "1%")
        else:
            for node in nodes:
                net.exec(node, "iptables", "-A", "OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", "0")
                holder = net.run(node, [sys.executable, str(REPO / "tests/helpers/slow_link.py"), "--delay-ms", "50",
                                        "--loss", "0.01"], stdout=subprocess.PIPE, text=True)
                holders.append(holder)
                assert holder.stdout.readline().startswith("slow link"), f"slow_link did not start in {node}"
        yield "tc netem" if netem is None else f"NFQUEUE (slow_link.py; {netem})"
    finally:
        for node in nodes:
            if netem is None:
                net.exec(node, "tc", "qdisc", "del", "dev", "eth0", "root")
            else:
                subprocess.run(["ip", "netns", "exec", net.namespace(node), "iptables", "-F", "OUTPUT"], check=True)
        for holder in holders:
            holder.terminate()
            print(holder.communicate(timeout=20)[0].strip().splitlines()[-1])


def test_fifty_ms_delay_and_one_percent_loss_on_every_link_slow_everything_down_and_everything_completes(
        cluster, request):
    before = _round_trips(cluster, "agent2")
    how = request.getfixturevalue("slow_lossy_links")
    during = _round_trips(cluster, "agent2")
    t0 = time.monotonic()
    result = cluster.write("slow_links.h5", n_images=600, timeout=300)
    write_s = time.monotonic() - t0
    print(f"\n50 ms delay + 1 % loss on every link ({how}): status request round trip from the operator node "
          f"median {statistics.median(before) * 1e3:.1f} ms before, {statistics.median(during) * 1e3:.1f} ms with "
          f"(max {max(during) * 1e3:.0f} ms); write_sync of 600 frames per stream (3 s at {RATE_HZ} Hz) through "
          f"the proxy took {write_s:.1f} s; missing frames {result['missing_frames']}")
    assert result["complete"] and result["missing_frames"] == 0, result
    streams = _streams(cluster.dir / "out" / "slow_links.h5")
    assert len(streams) == 9 and all(s["n_frames"] == 600 for s in streams.values()), streams
    assert statistics.median(during) > statistics.median(before)


def test_an_agent_node_torn_down_and_rebuilt_resumes_from_its_checkpoint(cluster):
    """Last in the module: the rebuilt node's agent is this test's (stopped at its end), not the cluster's."""
    name = cluster.names["agent3"]
    before = cluster.agent_status("agent3")["modules"]["9"]["img16"]["next_seq"]
    cluster.services[name].send_signal(signal.SIGKILL)  # the node dies with its agent
    assert cluster.services[name].wait(20) == -signal.SIGKILL
    cluster.net.remove("agent3")
    cluster.net.add("agent3", AGENTS["agent3"])
    restarted = cluster.start_agent("agent3")
    try:
        cluster.wait_ready(name)

        def simulating():
            status = cluster.agent_status("agent3")
            return status["simulator"] and status["modules"].get("9", {}).get("img16", {}).get("next_seq", 0) > before

        wait_until(simulating, 60, 0.5, "agent3 simulating again, its seq beyond the one before the teardown")
        assert "restarted; resuming" in cluster.log(name)
        result = cluster.write("rebuilt.h5", n_images=400)
        assert result["complete"] and result["missing_frames"] == 0, result
        streams = _streams(cluster.dir / "out" / "rebuilt.h5")
        assert len(streams) == 9, streams
        assert streams["9/img16"]["seq"][0] >= before, "seq started over after the rebuild"
        print(f"\nagent3 torn down at img16 seq {before}; rebuilt, resumed; the next write recorded seq "
              f"{streams['9/img16']['seq'][0]}-{streams['9/img16']['seq'][1]} of module 9 img16, gap-free")
    finally:
        restarted.terminate()
        assert restarted.wait(30) == 0, cluster.log(name)
