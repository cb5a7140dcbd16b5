"""The suite's own guards catch what they are for: leaked threads and child processes, non-loopback addresses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO
from helpers.loopback import config_violations, is_loopback

TESTS = REPO / "tests"

GUARDED = '''
import os
import socket
import subprocess
import threading

import pytest

from helpers.loopback import NonLoopbackAddress

release = threading.Event()


def test_leaks_a_child_process_and_a_thread():
    subprocess.Popen(["sleep", "60"])
    threading.Thread(target=release.wait, args=(30,), name="leaked-thread").start()


def test_connects_to_a_private_address_and_swallows_the_error():
    release.set()
    with socket.socket() as sock:
        sock.settimeout(0.5)
        with pytest.raises(NonLoopbackAddress):
            sock.connect(("10.0.0.1", 9))
        try:
            sock.connect(("10.0.0.1", 9))
        except Exception:
            pass  # code that swallows errors still fails the test


def test_binds_to_every_interface():
    with socket.socket() as sock, pytest.raises(NonLoopbackAddress):
        sock.bind(("0.0.0.0", 0))


def test_connects_to_a_namespace_address_from_outside_that_namespace(loopback_guard):
    with loopback_guard.allow_namespaces({"10.213.0.1"}, lambda: {0}), socket.socket() as sock:
        sock.settimeout(0.5)
        sock.connect(("10.213.0.1", 9))


def test_loopback_and_unix_sockets_are_fine():
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.connect(server.getsockname())
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(f"/tmp/loopback_guard_{os.getpid()}.sock")  # AF_UNIX paths are limited to 107 bytes
    os.unlink(f"/tmp/loopback_guard_{os.getpid()}.sock")


def test_a_child_that_ends_is_fine():
    subprocess.run(["true"], check=True)
'''


def test_leaks_and_non_loopback_addresses_fail_the_test_and_nothing_else(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    for variable in ("REDIS_URL", "BROKER_URL", "RABBITMQ_API_URL"):
        monkeypatch.delenv(variable, raising=False)
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_guarded=GUARDED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rE")
    result.assert_outcomes(passed=5, failed=1, errors=4)
    errors = [line for line in result.outlines if line.startswith("ERROR")]
    assert [line.split("::")[1].split(" ")[0] for line in errors] == [
        "test_leaks_a_child_process_and_a_thread", "test_connects_to_a_private_address_and_swallows_the_error",
        "test_binds_to_every_interface", "test_connects_to_a_namespace_address_from_outside_that_namespace"]
    result.stdout.re_match_lines([
        r".*test left behind threads \['leaked-thread'\] and child processes \{\d+: 'sleep \(.\)'\}",
        r".*refused before connecting.*socket.connect to \('10.0.0.1', 9\).*socket.connect to \('10.0.0.1', 9\)",
        r".*refused before connecting.*socket.bind to \('0.0.0.0', 0\)",
        r".*refused before connecting.*socket.connect to \('10.213.0.1', 9\)",
    ])


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "localhost", "::ffff:127.0.0.1"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "0.0.0.0", "", "192.0.2.1", "::", "::ffff:10.0.0.1"])
def test_other_hosts(host):
    assert not is_loopback(host)


def test_config_endpoints_and_hosts_off_loopback_are_named():
    config = {"data_bind": "tcp://*:5555", "preview_bind": "tcp://127.0.0.1:*", "host": "0.0.0.0",
              "agents": [{"name": "a", "data": "tcp://10.1.2.3:5555"}, {"name": "b", "data": "tcp://localhost:1"}],
              "output_root": "/tmp/x"}
    assert config_violations(config) == ["data_bind = 'tcp://*:5555'", "host = '0.0.0.0'",
                                         "agents[0].data = 'tcp://10.1.2.3:5555'"]


def test_config_addresses_inside_a_tests_namespaces_are_allowed_for_services_there():
    config = {"data_bind": "tcp://*:5555", "advertise_host": "10.213.0.11", "host": "10.213.0.1",
              "agents": [{"name": "a", "data": "tcp://10.213.0.12:5555"}, {"name": "b", "data": "tcp://10.1.2.3:1"}]}
    assert config_violations(config, frozenset({"10.213.0.1", "10.213.0.11", "10.213.0.12"})) == [
        "agents[1].data = 'tcp://10.1.2.3:1'"]
    assert config_violations(config) == ["data_bind = 'tcp://*:5555'", "advertise_host = '10.213.0.11'",
                                         "host = '10.213.0.1'", "agents[0].data = 'tcp://10.213.0.12:5555'",
                                         "agents[1].data = 'tcp://10.1.2.3:1'"]


@pytest.mark.parametrize("path", sorted((TESTS / "redis_configs").glob("*.json")), ids=lambda p: p.name)
def test_example_configs_stay_on_loopback(path: Path):
    assert config_violations(json.loads(path.read_text())) == []
