"""The image built and run for real: an agent, a writer and the REST proxy as containers, started with the `docker
run` commands of docker/README.md (host networking, SERVICE_NAME, CONFIG_FILE, volumes) against this machine's Redis
and RabbitMQ. Run by ./tests_in_docker.sh, which builds the image (STD_DAQ_IMAGE) and provides an engine (DOCKER_HOST).

The tests run in order on one node: healthy, a file written, the agent killed and started again, then every service
stopped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import pytest
import requests
from conftest import REPO, cleanup_services, wait_until
from helpers.loopback import config_violations
from helpers.services import free_port
from helpers.streams import subscriber

from std_daq_service.protocol import FrameBatch, decode_stream_message

pytestmark = [pytest.mark.container, pytest.mark.timeout(300)]

IMAGE = os.environ.get("STD_DAQ_IMAGE", "std_daq")
README = REPO / "docker" / "README.md"
KINDS = ("hp_io_agent", "writer", "rest")
SIM = {"movie_rate_hz": 200, "pulse_height_rate_hz": 50}


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"docker {shlex.join(args)} failed ({result.returncode}): {result.stderr}")
    return result.stdout.strip()


def engine_or_skip() -> None:
    problem = None
    try:
        answer = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
        if answer.returncode != 0:
            problem = f"no container engine answers: {answer.stderr.strip()[-300:]}"
    except FileNotFoundError:
        problem = "no docker CLI"
    if problem and os.environ.get("STD_DAQ_REQUIRE_CONTAINERS") == "1":
        pytest.fail(problem)
    if problem:
        pytest.skip(f"{problem} (./tests_in_docker.sh provides one)")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        pytest.fail(f"no image {IMAGE}: build it with ./tests_in_docker.sh")


def readme_run_commands() -> dict[str, list[str]]:
    """The README's `docker run -d` command of each service, as arguments."""
    block = README.read_text().split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.startswith("docker run -d")]
    by_service = {c[-1]: c for c in commands}
    assert set(by_service) == set(KINDS), f"docker/README.md runs {sorted(by_service)}"
    return by_service


@dataclass
class Node:
    """One DAQ node of containers: its service names, container names, host directories and the proxy's URL."""

    names: dict[str, str]
    containers: dict[str, str]
    config_dir: Path
    data_dir: Path
    output_dir: Path
    sim_volume: str
    redis_url: str
    broker_url: str
    agent_port: int
    rest_port: int
    started: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def adapt(self, argument: str) -> str:
        """An argument of the README's commands, for this node: its names, directories, servers and image."""
        replaced = {"/mnt/panoseti": str(self.data_dir), "/mnt/output": str(self.output_dir),
                    "$PWD/docker/config": str(self.config_dir), "std_daq_sim": self.sim_volume}
        for readme, here in replaced.items():
            argument = argument.replace(readme, here)
        for kind in KINDS:
            argument = argument.replace(f"obs.node1.{kind}", self.names[kind])
        if argument.startswith("REDIS_URL="):
            return f"REDIS_URL={self.redis_url}"
        if argument.startswith("BROKER_URL="):
            return f"BROKER_URL={self.broker_url}"
        return IMAGE if argument == "std_daq" else argument

    def run(self, kind: str) -> None:
        command = [self.adapt(a) for a in readme_run_commands()[kind]]
        name_at = command.index("--name") + 1
        command[name_at] = self.containers[kind]
        self.started[kind] = time.monotonic()
        docker(*command[1:])

    def inspect(self, kind: str, template: str) -> str:
        return docker("inspect", "-f", template, self.containers[kind])

    def logs(self, kind: str) -> str:
        result = subprocess.run(["docker", "logs", self.containers[kind]], capture_output=True, text=True, timeout=60)
        return result.stdout + result.stderr


def node_configs(node: Node) -> dict[str, dict]:
    """docker/config's configs, adapted to host networking as the README says (free loopback ports here)."""
    shipped = {kind: json.loads((REPO / f"docker/config/obs.node1.{kind}.json").read_text()) for kind in KINDS}
    loopback = {"metrics_host": "127.0.0.1"}
    agent = {**shipped["hp_io_agent"], **loopback, "data_bind": f"tcp://127.0.0.1:{node.agent_port}",
             "preview_bind": f"tcp://127.0.0.1:{free_port()}", "advertise_host": "127.0.0.1",
             "metrics_port": free_port(), "run_end_idle_seconds": 5}
    writer = {**shipped["writer"], **loopback, "metrics_port": free_port(), "ring_buffer_seconds": 6,
              "agents": [{"name": node.names["hp_io_agent"], "data": f"tcp://127.0.0.1:{node.agent_port}"}]}
    rest = {**shipped["rest"], **loopback, "metrics_port": free_port(), "host": "127.0.0.1", "port": node.rest_port,
            "writers": [node.names["writer"]], "agents": [node.names["hp_io_agent"]], "sync_timeout_seconds": 60}
    rest.pop("allow_unauthenticated_remote")
    return {"hp_io_agent": agent, "writer": writer, "rest": rest}


@pytest.fixture(scope="module")
def node(tmp_path_factory, redis_url, broker_url):
    engine_or_skip()
    directory = tmp_path_factory.mktemp("node")
    tag = uuid.uuid4().hex[:8]
    node = Node(names={kind: f"test.{tag}.{kind}" for kind in KINDS},
                containers={kind: f"std_daq_test_{tag}_{kind}" for kind in KINDS},
                config_dir=directory / "config", data_dir=directory / "panoseti", output_dir=directory / "output",
                sim_volume=f"std_daq_test_{tag}_sim", redis_url=redis_url, broker_url=broker_url,
                agent_port=free_port(), rest_port=free_port())
    for path in (node.config_dir, node.data_dir, node.output_dir):
        path.mkdir()
    directory.chmod(0o755)
    node.config_dir.chmod(0o755)  # read by the image's user
    uid, gid = (int(n) for n in docker("image", "inspect", "-f", "{{.Config.User}}", IMAGE).split(":"))
    os.chown(node.output_dir, uid, gid)  # as an operator prepares the output disk for the image's user
    for kind, config in node_configs(node).items():
        assert not config_violations(config), config_violations(config)
        (node.config_dir / f"{node.names[kind]}.json").write_text(json.dumps(config))
    try:
        for kind in KINDS:
            node.run(kind)
        yield node
    finally:
        for kind in KINDS:
            docker("rm", "--force", node.containers[kind], check=False)
        docker("volume", "rm", "--force", node.sim_volume, check=False)
        cleanup_services(redis_url, broker_url, list(node.names.values()))


def test_the_services_started_as_the_readme_says_turn_healthy(node, redis_client):
    def healthy(kind: str) -> bool:
        state = node.inspect(kind, "{{.State.Status}} {{.RestartCount}} {{.State.Health.Status}}")
        assert state.startswith("running 0 "), f"{kind} exited or restarted ({state}):\n{node.logs(kind)[-3000:]}"
        return state.endswith(" healthy")

    def beacon(kind: str) -> bool:
        assert node.inspect(kind, "{{.State.Status}}") == "running", f"{kind} exited:\n{node.logs(kind)[-3000:]}"
        return redis_client.hget(f"status.{node.names[kind]}", "broker_connected") == "true"

    ready, times = {}, {}
    for kind in KINDS:
        wait_until(lambda k=kind: beacon(k), 60, 0.1, f"{kind}'s beacon with a broker connection")
        ready[kind] = time.monotonic() - node.started[kind]
    for kind in KINDS:
        wait_until(lambda k=kind: healthy(k), 120, 0.5, f"{kind} healthy")
        times[kind] = time.monotonic() - node.started[kind]
    health = requests.get(f"{node.url}/health", timeout=5).json()
    assert health["status"] == "ok" and health["broker_connected"] and health["redis_connected"], health
    print("\ndocker run to the service's beacon / to healthy (first health check after its 15 s interval): "
          + ", ".join(f"{kind} {ready[kind]:.1f} / {times[kind]:.1f} s" for kind in KINDS))


def test_a_simulation_and_a_write_sync_through_the_proxy_leave_a_complete_file_of_the_image_user(node):
    init = requests.post(f"{node.url}/init_sim", json=SIM, timeout=60)
    assert init.status_code == 200, init.text
    assert init.json()["responses"][node.names["hp_io_agent"]]["status"] == "request_success", init.text
    write = requests.post(f"{node.url}/write_sync", json={"output_file": "container.h5", "n_images": 400}, timeout=90)
    assert write.status_code == 200, write.text
    response = write.json()["response"]
    assert response["status"] == "request_success" and response["output_file"] == "/output/container.h5", response
    path = node.output_dir / "container.h5"
    uid, _ = (int(n) for n in docker("image", "inspect", "-f", "{{.Config.User}}", IMAGE).split(":"))
    assert path.stat().st_uid == uid, f"written by uid {path.stat().st_uid}, not the image's user {uid}"
    streams = {}
    with h5py.File(path, "r") as h5:
        assert h5.attrs["complete"], dict(h5.attrs)

        def visit(name, item):
            if "n_frames" in item.attrs:
                streams[name] = (int(item.attrs["n_frames"]), int(item.attrs["missing_frames"]))

        h5.visititems(visit)
    assert streams and all(n == 400 and missing == 0 for n, missing in streams.values()), streams
    print(f"\nwrite_sync through the proxy container: {len(streams)} streams of 400 frames, none missing, "
          f"file owned by uid {uid}")


def test_an_agent_container_killed_is_started_again_by_its_restart_policy_and_resumes_from_its_checkpoint(node):
    received: list[FrameBatch] = []

    def drain(sock) -> None:
        while sock.poll(0):
            message = decode_stream_message(sock.recv_multipart())
            if isinstance(message, FrameBatch):
                received.append(message)

    def receive(sock, frames: int, timeout: float) -> None:
        target = sum(len(b) for b in received) + frames
        deadline = time.monotonic() + timeout
        while sum(len(b) for b in received) < target:
            assert time.monotonic() < deadline, f"{len(received)} batches by the deadline"
            sock.poll(100)
            drain(sock)

    def restarted(sock) -> bool:
        drain(sock)  # what the killed process sent is read before it is back
        return node.inspect("hp_io_agent", "{{.RestartCount}} {{.State.Status}}") == "1 running"

    with subscriber(f"tcp://127.0.0.1:{node.agent_port}", [""]) as sock:
        receive(sock, 200, 30)
        killed = time.monotonic()
        # a crash: the service process killed from the host (`docker kill` would count as stopped by hand)
        os.kill(int(node.inspect("hp_io_agent", "{{.State.Pid}}")), signal.SIGKILL)
        wait_until(lambda: restarted(sock), 60, 0.2, "the restart policy starting the agent container again")
        back_s = time.monotonic() - killed
        restart_at = len(received)
        receive(sock, 400, 60)
    before, after = received[:restart_at], received[restart_at:]
    assert "restarted; resuming" in node.logs("hp_io_agent"), node.logs("hp_io_agent")[-3000:]
    gaps = 0
    for stream in {(b.module_id, b.dp) for b in received}:
        seq = [n for b in received if (b.module_id, b.dp) == stream for n in b.seq]
        assert len(seq) == len(set(seq)), f"{stream}: a frame was published twice"
        assert seq == sorted(seq), f"{stream}: seq went back after the restart"
        gaps += sum(b - a - 1 for a, b in zip(seq, seq[1:], strict=False))
    assert any((b.module_id, b.dp) in {(a.module_id, a.dp) for a in before} for b in after), "no stream went on"
    print(f"\nagent container's process killed (SIGKILL): running again by its restart policy {back_s:.1f} s later; "
          f"{sum(len(b) for b in before)} frames before, {sum(len(b) for b in after)} after, seq went on from the "
          f"checkpoint with {gaps} frames skipped while it was down (a visible seq gap), none published twice")


def test_docker_stop_ends_each_service_cleanly_within_its_grace_period(node):
    times = {}
    for kind in reversed(KINDS):
        command = readme_run_commands()[kind]
        grace = int(command[command.index("--stop-timeout") + 1])
        assert node.inspect(kind, "{{.Config.StopTimeout}}") == str(grace), "the README's grace period holds"
        started = time.monotonic()
        docker("stop", node.containers[kind], timeout=grace + 60)
        times[kind] = time.monotonic() - started
        state = node.inspect(kind, "{{.State.Status}} {{.State.ExitCode}}")
        logs = node.logs(kind)
        assert state == "exited 0", f"{kind}: {state} (137: killed when its grace period ran out)\n{logs[-3000:]}"
        assert re.search(rf"{re.escape(node.names[kind])} stopping", logs), logs[-3000:]
    print(f"\ndocker stop (grace period {grace} s) to exit code 0: "
          + ", ".join(f"{kind} {seconds:.1f} s" for kind, seconds in times.items()))
