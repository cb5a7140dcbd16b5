"""Every `std_daq` failure an operator meets is one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO
from helpers.services import free_port


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "std_daq_service.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed command (asserts the exit code and that there is no traceback)."""
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("std_daq: error: "), lines[0]
    return lines[0]


@pytest.fixture
def down_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def down_broker_url() -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"


def test_redis_down_names_the_url_and_what_to_run(down_redis_url):
    line = one_error_line(run_cli("--redis-url", down_redis_url, "list-hosts"))
    assert down_redis_url in line and "./setup_dev_env.sh" in line


def test_redis_down_for_config_commands(down_redis_url):
    line = one_error_line(run_cli("--redis-url", down_redis_url, "config", "list"))
    assert down_redis_url in line


def test_broker_down_names_the_url_without_its_password_and_what_to_run(down_broker_url):
    line = one_error_line(run_cli("--broker-url", down_broker_url, "ping", "test.nobody.writer"))
    assert "RabbitMQ" in line and "./setup_dev_env.sh" in line
    assert down_broker_url.replace("guest:guest@", "guest:***@") in line


def test_missing_file_is_named():
    line = one_error_line(run_cli("config", "set", "x.y.writer", "/nonexistent.json"))
    assert "/nonexistent.json" in line and "No such file" in line


def test_bad_log_level_is_a_usage_error():
    result = run_cli("--log-level", "LOUD", "list-hosts")
    assert "--log-level" in one_error_line(result) and result.returncode == 2


def test_usage_errors_of_subcommands_are_one_line():
    result = run_cli("write")
    assert "output_file" in one_error_line(result) and result.returncode == 2


def test_validation_in_the_client_is_one_line(broker_url):
    result = run_cli("--broker-url", broker_url, "write", "f.h5", "--writer", "test.nobody.writer",
                     "--n-images", "3", "--duration", "2")
    assert "give at most one of n_images, duration_seconds, stop_time" in one_error_line(result)
