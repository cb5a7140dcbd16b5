"""`std_daq` agent commands through subprocess: clear one-line errors, no tracebacks."""

import subprocess
import sys

from conftest import REPO


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "std_daq_service.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_request_to_an_unknown_agent_is_one_clear_line_and_exit_1(broker_url):
    result = run_cli("--broker-url", broker_url, "status", "test.nobody.hp_io_agent")
    assert result.returncode == 1
    assert result.stderr.strip() == ("std_daq: error: no service named 'test.nobody.hp_io_agent' consumes requests "
                                     "on this broker; check the name with 'std_daq list-hosts'")


def test_init_with_a_bad_config_file_names_the_field(tmp_path, broker_url):
    config = tmp_path / "hp_io_config.json"
    config.write_text('{"data_dir": "/data", "update_interval_seconds": "often"}')
    result = run_cli("--broker-url", broker_url, "init", "test.nobody.hp_io_agent", str(config))
    assert result.returncode == 1
    assert "update_interval_seconds" in result.stderr and "Traceback" not in result.stderr
