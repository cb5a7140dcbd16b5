"""The REST proxy's live page in headless Chromium: load time, browser and proxy CPU while it updates.

Usage: .venv/bin/python benchmarks/bench_webview.py [--seconds 30] [--modules 1,3] [--preview-interval 0.2]
                                                   [--viewers 1] [--screenshot docs/live_page.png]

An agent simulates the Lick excerpt (movie 1000 frames/s, pulse height 100 frames/s per module), a REST proxy
serves /ui; Chromium (Debian's, through chromedriver) opens the page --viewers times. Page load: the navigation
timing of the first page (request to DOMContentLoaded and to load) and the time until every stream's image is drawn.
Then for --seconds: CPU of the whole browser process tree and of the proxy (from /proc), images fetched per
second (the page reloads a PNG only when its stream has a new frame) and bytes per PNG. Needs Redis and RabbitMQ.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
import uuid

import requests
from bench_common import cpu_seconds, headless_chromium, process_tree, start_service

from std_daq_service.broker import RequestCaller
from std_daq_service.config import connect_redis
from std_daq_service.protocol import InitSimRequest

DRAWN = ("return [...document.querySelectorAll('.module img')].filter(i => i.complete && i.naturalWidth > 0)"
         ".length")
NAVIGATION = ("const n = performance.getEntriesByType('navigation')[0];"
              "return [n.responseEnd - n.requestStart, n.domContentLoadedEventEnd, n.loadEventEnd, n.transferSize];")
PNG_FETCHES = ("return performance.getEntriesByType('resource').filter(e => e.name.includes('/ui/image/'))"
               ".map(e => e.encodedBodySize || e.transferSize)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_cpu(pid: int) -> float:
    total = 0.0
    for member in process_tree(pid):
        try:
            total += cpu_seconds(member)
        except OSError:
            pass  # ended meanwhile
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--modules", default="1,3")
    parser.add_argument("--preview-interval", type=float, default=0.2, help="the agent's preview period")
    parser.add_argument("--viewers", type=int, default=1, help="browser tabs showing the page")
    parser.add_argument("--screenshot", help="save the first tab's screenshot here")
    args = parser.parse_args()
    redis = connect_redis()
    tag = uuid.uuid4().hex[:6]
    agent_name, rest_name = f"bench.{tag}.hp_io_agent", f"bench.{tag}.rest"
    port = free_port()
    processes = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            processes.append(start_service("hp_io_agent", agent_name, {
                "data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*", "sim_data_dir": f"{tmp}/sim",
                "min_update_interval_seconds": 0.05}, redis))
            with RequestCaller(None, "bench-webview") as caller:
                modules = [int(m) for m in args.modules.split(",")]
                result = caller.call(agent_name, InitSimRequest(module_ids=modules, movie_rate_hz=1000,
                                                                pulse_height_rate_hz=100,
                                                                update_interval_seconds=args.preview_interval), 20)
                assert result.ok, result.error()
            rest = start_service("rest", rest_name, {"host": "127.0.0.1", "port": port, "agents": [agent_name]}, redis)
            processes.append(rest)
            url = f"http://127.0.0.1:{port}"
            streams = 0
            while streams < 3:  # the proxy's own subscription has frames of every stream
                time.sleep(0.2)
                streams = len(requests.get(f"{url}/ui/state.json", timeout=5).json()["streams"])
            measure(args, url, streams, rest.pid)
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(20)
            for name in (agent_name, rest_name):
                redis.delete(f"config.{name}", f"status.{name}", f"checkpoint.{name}")


def measure(args, url: str, streams: int, rest_pid: int) -> None:
    with headless_chromium() as driver:
        started = time.monotonic()
        driver.get(f"{url}/ui")
        while driver.execute_script(DRAWN) < streams:
            time.sleep(0.02)
        all_drawn = time.monotonic() - started
        timing = driver.execute_script(NAVIGATION)
        driver.refresh()
        while driver.execute_script(DRAWN) < streams:
            time.sleep(0.02)
        reload = driver.execute_script(NAVIGATION)
        for _ in range(args.viewers - 1):
            driver.switch_to.new_window("tab")
            driver.get(f"{url}/ui")
        driver.switch_to.window(driver.window_handles[0])
        if args.screenshot:
            driver.save_screenshot(args.screenshot)
        browser = driver.service.process.pid
        fetched_before = len(driver.execute_script(PNG_FETCHES))
        cpu0, rest0, t0 = tree_cpu(browser), cpu_seconds(rest_pid), time.monotonic()
        time.sleep(args.seconds)
        cpu1, rest1, t1 = tree_cpu(browser), cpu_seconds(rest_pid), time.monotonic()
        sizes = driver.execute_script(PNG_FETCHES)
    elapsed = t1 - t0
    print(f"streams {streams}, preview interval {args.preview_interval} s, viewers {args.viewers}")
    for name, (served, ready, loaded, size) in (("first load", timing), ("reload", reload)):
        print(f"{name}: page served in {served:.0f} ms, DOMContentLoaded {ready:.0f} ms, load {loaded:.0f} ms, "
              f"{size} bytes")
    print(f"every image drawn {all_drawn * 1000:.0f} ms after the first navigation began")
    print(f"browser CPU while updating: {100 * (cpu1 - cpu0) / elapsed:.1f} % of one core "
          "(chromedriver, browser, renderer, GPU and utility processes)")
    print(f"proxy CPU while serving: {100 * (rest1 - rest0) / elapsed:.1f} % of one core")
    print(f"images fetched by the first tab: {(len(sizes) - fetched_before) / elapsed:.1f}/s, "
          f"{sum(sizes) / max(len(sizes), 1):.0f} bytes each")


if __name__ == "__main__":
    main()
