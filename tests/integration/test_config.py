"""Config store and liveness beacons against the real Redis."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, wait_until

from std_daq_service.config import (
    ConfigStore,
    HpIoAgentConfig,
    LivenessBeacon,
    live_services,
    validate_config,
)
from std_daq_service.protocol import InvalidRequest, UnknownTarget


def test_config_round_trip(redis_client, service_name):
    store = ConfigStore(redis_client)
    store.save(service_name, {"data_dir": "/data", "data_bind": "tcp://127.0.0.1:6000"})
    config = store.load(service_name)
    assert isinstance(config, HpIoAgentConfig) and config.data_dir == "/data"


@pytest.mark.parametrize(
    "data,expected",
    [
        ({"data_bind": 5}, "data_bind: Input should be a valid string"),
        ({"colour": "red"}, "colour: unknown field"),
        ('{"data_dir": ', "Invalid JSON"),
        ({"max_batch_frames": 0}, "max_batch_frames: Input should be greater than 0"),
    ],
)
def test_invalid_config_is_refused_naming_the_field_and_nothing_is_stored(redis_client, service_name, data, expected):
    with pytest.raises(InvalidRequest, match=expected):
        ConfigStore(redis_client).save(service_name, data)
    assert redis_client.get(f"config.{service_name}") is None


def test_missing_config_says_where_it_was_looked_for(redis_client, service_name):
    with pytest.raises(UnknownTarget, match=f"config.{service_name}"):
        ConfigStore(redis_client).load(service_name)


def test_unknown_service_kind_is_refused():
    with pytest.raises(InvalidRequest, match="unknown service kind 'toaster'"):
        validate_config("lick.daq1.toaster", {})


def test_beacon_publishes_refreshes_and_expires(redis_client, service_name):
    config = HpIoAgentConfig()
    with LivenessBeacon(redis_client, service_name, config, state=lambda: {"state": "idle"}, period_s=0.2):
        services = wait_until(lambda: live_services(redis_client, "hp_io_agent").get(service_name), 5,
                              message="beacon")
        assert services["state"] == "idle" and services["config"]["data_bind"] == config.data_bind
        first = services["heartbeat_timestamp"]
        wait_until(lambda: live_services(redis_client).get(service_name, {}).get("heartbeat_timestamp", first) > first,
                   5, message="refresh")
        assert 0 < redis_client.ttl(f"status.{service_name}") <= 1
    assert redis_client.exists(f"status.{service_name}") == 0


def test_cli_config_load_refuses_a_directory_with_one_bad_file(tmp_path, redis_url, redis_client, service_name):
    (tmp_path / f"{service_name}.json").write_text(json.dumps({"data_dir": "/ok"}))
    (tmp_path / "test.bad.writer.json").write_text(json.dumps({"output_root": "/x"}))
    result = subprocess.run([sys.executable, "-m", "std_daq_service.cli", "--redis-url", redis_url, "config", "load",
                             str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert "agents: Field required" in result.stderr and "Traceback" not in result.stderr
    assert redis_client.get(f"config.{service_name}") is None


def std_daq(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "std_daq_service.cli", "--redis-url", redis_url, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_config_set_if_absent_seeds_once_and_keeps_a_config_stored_since(tmp_path, redis_url, redis_client,
                                                                          service_name):
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"data_dir": "/seeded"}))
    first = std_daq(redis_url, "config", "set", "--if-absent", service_name, str(seed))
    assert first.returncode == 0 and first.stdout.startswith("stored"), first.stderr
    ConfigStore(redis_client).save(service_name, {"data_dir": "/changed/by/put"})
    again = std_daq(redis_url, "config", "set", "--if-absent", service_name, str(seed))
    assert again.returncode == 0 and again.stdout.startswith("kept"), again.stderr
    assert ConfigStore(redis_client).load(service_name).data_dir == "/changed/by/put"
    seed.write_text(json.dumps({"data_dir": 5}))
    invalid = std_daq(redis_url, "config", "set", "--if-absent", service_name, str(seed))
    assert invalid.returncode == 1 and "data_dir" in invalid.stderr and "Traceback" not in invalid.stderr


def test_health_reads_the_beacon_and_sends_no_request(redis_url, redis_client, service_name):
    missing = std_daq(redis_url, "health", service_name)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no live beacon" in missing.stderr
    state = {"broker_connected": True}
    with LivenessBeacon(redis_client, service_name, HpIoAgentConfig(), lambda: state, period_s=0.2):
        live = std_daq(redis_url, "health", service_name)
        assert live.returncode == 0 and f"{service_name} live" in live.stdout, live.stderr
        state["broker_connected"] = False
        wait_until(lambda: redis_client.hget(f"status.{service_name}", "broker_connected") == "false", 5,
                   message="beacon refresh")
        cut_off = std_daq(redis_url, "health", service_name)
        assert cut_off.returncode == 1 and "not connected to the broker" in cut_off.stderr
