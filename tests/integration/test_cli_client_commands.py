"""`std_daq` client commands and plots through subprocess, against a real agent and writer."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, service_stack, wait_until
from helpers.services import start_agent, start_writer


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "std_daq_service.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_url, broker_url):
    directory = tmp_path_factory.mktemp("cli")
    with service_stack(redis_url, broker_url) as stack:
        agent_name, writer_name = stack.name("hp_io_agent"), stack.name("writer")
        agent, endpoint = start_agent(agent_name, redis_url, stack.redis, directory, movie_rate_hz=300,
                                      pulse_height_rate_hz=200, update_interval_seconds=0.1)
        stack.add(agent)
        stack.add(start_writer(writer_name, redis_url, stack.redis, directory, [(agent_name, endpoint)]))
        yield agent_name, writer_name, directory


def test_ping_and_reflect_services(system):
    agent, writer, _ = system
    assert cli("ping", agent).stdout.strip() == f"{agent}: answers"
    missing = cli("ping", "nobody.nowhere.writer", "--timeout", "1")
    assert missing.returncode == 1 and "no answer" in missing.stdout
    reflected = json.loads(cli("reflect-services", agent, writer).stdout)
    assert set(reflected["services"]) == {agent, writer} and "write" in reflected["request_types"]


def test_write_shows_progress_and_a_summary(system):
    _, writer, directory = system
    result = cli("write", "cli.h5", "--writer", writer, "--n-images", "600", "--data-products", "img16")
    assert result.returncode == 0, result.stderr
    assert f"{directory / 'out' / 'cli.h5'}: 600 frames" in result.stdout
    assert "module/dp 1/img16: 600 frames" in result.stdout
    assert "100%" in result.stderr and "600 frames" in result.stderr and "frames/s" in result.stderr, result.stderr
    timed = cli("write", "timed.h5", "--writer", writer, "--duration", "1", "--data-products", "img16")
    assert timed.returncode == 0 and "100%" in timed.stderr and "frames/s" in timed.stderr, timed.stderr
    refused = cli("write", "../x.h5", "--writer", writer, "--n-images", "1")
    assert refused.returncode == 1 and refused.stderr.splitlines()[-1].startswith("std_daq: error:")
    assert "'..' is not allowed" in refused.stderr and "Traceback" not in refused.stderr


def test_kill_and_monitor(system):
    _, writer, directory = system
    monitor = subprocess.Popen([sys.executable, "-m", "std_daq_service.cli", "monitor", "--seconds", "8"],
                               stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        first = monitor.stdout.readline()  # printed once its status queue is bound
        write = subprocess.Popen([sys.executable, "-m", "std_daq_service.cli", "write", "killed.h5", "--writer",
                                  writer], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = write.stderr.readline()
        request_id = line.split()[1]
        killed = cli("kill", request_id, "--service", writer)
        assert killed.returncode == 0 and request_id in killed.stdout
        out, err = write.communicate(timeout=30)
        assert write.returncode == 1 and "request_killed" in err
        lines = [first, *monitor.communicate(timeout=30)[0].splitlines()]
    finally:
        monitor.kill()
    assert lines[0].startswith("-- ") and "live" in lines[0]
    mine = [line for line in lines if request_id[:8] in line]
    assert any("request_start" in line for line in mine) and any("request_killed" in line for line in mine)
    assert (directory / "out" / "killed.h5").exists()


@pytest.mark.parametrize("command", ["plot-view", "plot-phdist"])
def test_plots_draw_pngs_that_are_not_blank(system, tmp_path, command):
    from matplotlib import image

    agent, _, _ = system
    png = tmp_path / f"{command}.png"
    result = cli(command, agent, "--save", str(png), "--seconds", "4", "--refresh-period", "1")
    assert result.returncode == 0, result.stderr
    pixels = image.imread(png)
    assert pixels.shape[0] > 100 and np.std(pixels[..., :3]) > 0.05, "the figure holds more than a blank page"


@pytest.mark.parametrize("command", ["plot-view", "plot-phdist"])
def test_plots_save_the_first_complete_view_and_exit(system, tmp_path, command):
    from matplotlib import image

    agent, _, _ = system
    png = tmp_path / f"{command}.png"
    result = cli(command, agent, "--save", str(png))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"saved {png}"
    assert np.std(image.imread(png)[..., :3]) > 0.05


def test_ctrl_c_during_a_saving_plot_is_quiet(system, tmp_path):
    agent, _, _ = system
    png = tmp_path / "view.png"
    plot = subprocess.Popen([sys.executable, "-m", "std_daq_service.cli", "plot-view", agent, "--save", str(png),
                             "--seconds", "600", "--refresh-period", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_until(png.exists, 60, message="the first saved view")
        plot.send_signal(signal.SIGINT)
        _, err = plot.communicate(timeout=30)
    finally:
        if plot.poll() is None:
            plot.kill()
            plot.communicate()
    assert plot.returncode == 130 and "Traceback" not in err and len(err.splitlines()) <= 1, err


def test_status_is_json_into_a_pipe_and_a_table_on_a_terminal(system):
    agent, _, _ = system
    assert "update_interval_seconds" in json.loads(cli("status", agent).stdout)
    controller, terminal = pty.openpty()
    status = subprocess.Popen([sys.executable, "-m", "std_daq_service.cli", "status", agent], stdout=terminal,
                              stderr=subprocess.PIPE, cwd=REPO)
    os.close(terminal)
    shown = b""
    try:
        while chunk := _read(controller):
            shown += chunk
    finally:
        os.close(controller)
        assert status.wait(timeout=30) == 0, status.stderr.read()
        status.stderr.close()
    assert agent in shown.decode() and "update_interval_seconds" in shown.decode() and b"{" not in shown


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal closed: the command ended
        return b""
