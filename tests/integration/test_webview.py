"""The REST proxy's live page in headless Chromium: live images of two modules, an agent shown down when it dies,
and the audit trail still answering after the proxy restarts."""

from __future__ import annotations

import os
import signal

import numpy as np
import requests
from bench_common import headless_chromium
from conftest import service_stack, wait_until
from helpers.services import start_agent, start_rest, start_writer
from PIL import Image


def live_images(driver) -> set[str]:
    """Alt texts of the frame images the browser has drawn."""
    return set(driver.execute_script(
        "return [...document.querySelectorAll('.module img')].filter(i => i.complete && i.naturalWidth > 0)"
        ".map(i => i.alt)"))


def service_state(driver, name: str) -> str:
    """The state the page's services table shows for `name` (read in one script: the table is redrawn)."""
    return driver.execute_script(
        "const row = [...document.querySelectorAll('#services tr')]"
        ".find(r => r.querySelector(`span[title='${arguments[0]}']`));"
        "return row ? row.querySelector('.pill').textContent : '';", name)


def text_of(driver, selector: str) -> str:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent).join(' ')", selector)


def test_live_page_shows_two_modules_an_agent_going_down_and_the_history_after_a_proxy_restart(
        tmp_path, redis_url, broker_url):
    with service_stack(redis_url, broker_url) as stack:
        agent_name, writer_name, rest_name = stack.name("hp_io_agent"), stack.name("writer"), stack.name("rest")
        agent, endpoint = start_agent(agent_name, redis_url, stack.redis, tmp_path, module_ids=[1, 3],
                                      movie_rate_hz=200, pulse_height_rate_hz=100, update_interval_seconds=0.2)
        stack.add(agent, clean_exit=False)
        stack.add(start_writer(writer_name, redis_url, stack.redis, tmp_path, [(agent_name, endpoint)]))
        rest, url = start_rest(rest_name, redis_url, stack.redis, tmp_path, agents=[agent_name],
                               writers=[writer_name])
        stack.add(rest)
        write = requests.post(f"{url}/write_sync", json={"n_images": 20, "output_file": "live.h5"},
                              headers={"X-Caller-User": "astronomer"}, timeout=30)
        assert write.status_code == 200, write.text
        request_id = write.json()["request_id"]

        with headless_chromium() as driver:
            driver.get(f"{url}/ui")
            wanted = {"ph256 of module 1", "img16 of module 1", "ph256 of module 3"}
            wait_until(lambda: wanted <= live_images(driver), 30, interval=0.2, message=f"live images {wanted}")
            wait_until(lambda: request_id[:8] in text_of(driver, "#history"), 10, interval=0.2,
                       message="the write in the page's request history")
            assert service_state(driver, agent_name) == "live"
            screenshot = tmp_path / "live_page.png"
            driver.save_screenshot(str(screenshot))
            pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=float)
            assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, "blank screenshot"

            os.kill(agent.process.pid, signal.SIGKILL)  # a crash: its beacon goes stale, then expires
            wait_until(lambda: service_state(driver, agent_name) == "down", 20, interval=0.2,
                       message="the killed agent shown down")
            wait_until(lambda: "agent down" in text_of(driver, ".module"), 10,
                       interval=0.2, message="its modules marked down")
            driver.save_screenshot(str(tmp_path / "live_page_agent_down.png"))

        assert rest.stop() == 0, rest.log()
        rest, url = start_rest(rest_name, redis_url, stack.redis, tmp_path, agents=[agent_name],
                               writers=[writer_name])
        stack.add(rest)
        records = requests.get(f"{url}/requests", params={"service": writer_name, "type": "write"}, timeout=5)
        record = next(r for r in records.json()["requests"] if r["request_id"] == request_id)
        assert record["caller"] == {"host": "127.0.0.1", "user": "astronomer"}
        assert record["outcome"] == "request_success" and record["request"]["output_file"] == "live.h5"
        statuses = requests.get(f"{url}/requests/{request_id}", timeout=5).json()["statuses"]
        assert [s["action"] for s in statuses][0] == "request_received"
        assert statuses[-1]["action"] == "request_success"
