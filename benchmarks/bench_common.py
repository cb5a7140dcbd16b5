"""What the benchmarks share: services started as subprocesses, their CPU time from /proc, the stream clients of
the load run (tests/integration/test_load.py uses them too) and headless Chromium (test_webview.py too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import zmq

from std_daq_service.protocol import FrameBatch, decode_stream_message


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_service(kind: str, name: str, config: dict, redis) -> subprocess.Popen:
    """Store the config, start the service, wait for its liveness beacon (stopping it if that never comes)."""
    redis.set(f"config.{name}", json.dumps(config))
    process = subprocess.Popen([sys.executable, "-m", f"std_daq_service.{kind}", "--log-level", "WARNING"],
                               env={**os.environ, "SERVICE_NAME": name})
    deadline = time.monotonic() + 20
    while not redis.exists(f"status.{name}"):
        if time.monotonic() > deadline or process.poll() is not None:
            process.terminate()
            process.wait(20)
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.1)
    return process


def mixed_subscribers(data: str, preview: str, n: int, seconds: float,
                      on_batch: Callable[[int, FrameBatch], None]) -> None:
    """Run `n` subscribers for `seconds` and call `on_batch(i, batch)` for every frame message subscriber i gets.

    Even ones subscribe to `data`, odd ones to `preview`; the first two of every four take img16 only.
    """
    context = zmq.Context()
    sockets = []
    for i in range(n):
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(data if i % 2 == 0 else preview)
        sock.setsockopt(zmq.SUBSCRIBE, b"img16." if i % 4 < 2 else b"")
        sockets.append(sock)
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sock in dict(poller.poll(100)):
            message = decode_stream_message(sock.recv_multipart())
            if isinstance(message, FrameBatch):
                on_batch(sockets.index(sock), message)
    for sock in sockets:
        sock.close(0)
    context.term()


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextmanager
def headless_chromium(width: int = 1600, height: int = 1000) -> Iterator:
    """Debian's Chromium driven by Selenium through Debian's chromedriver (no browser download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--hide-scrollbars", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, queue = [], [pid]
    while queue:
        tree.append(queue.pop())
        queue += children.get(tree[-1], [])
    return tree
