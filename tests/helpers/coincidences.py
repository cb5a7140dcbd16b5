"""Coincidences for tests: agents tailing Hashpipe-written ph256 files at the pace of WR time, and a builder."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from conftest import SAMPLE_PH256_M1, ServiceProcess

from helpers.hashpipe import HashpipeFiles, header_text, quabo_fields
from helpers.streams import ask
from std_daq_service.protocol import InitHpIoRequest, StreamRequest

PH256 = SAMPLE_PH256_M1.read_bytes()
WINDOW_NS = 1000


def start_builder(stack_dir: Path, name: str, redis_url: str, redis_client, agents: list[tuple[str, str]],
                  **config) -> tuple[ServiceProcess, str]:
    config = {"agents": [{"name": n, "data": e} for n, e in agents], "events_bind": "tcp://127.0.0.1:*",
              "coincidence_window_ns": WINDOW_NS, **config}
    builder = ServiceProcess("event_builder", name, config, redis_url, stack_dir)
    builder.wait_ready(redis_client)
    return builder, redis_client.hget(f"status.{name}", "events_endpoint")


def start_tracking_agent(name: str, redis_url: str, redis_client, directory: Path,
                         caller) -> tuple[ServiceProcess, str]:
    config = {"data_bind": "tcp://127.0.0.1:*", "preview_bind": "tcp://127.0.0.1:*",
              "sim_data_dir": str(directory / "sim"), "run_end_idle_seconds": 30}
    agent = ServiceProcess("hp_io_agent", name, config, redis_url, directory)
    agent.wait_ready(redis_client)
    (directory / "daq").mkdir()
    assert ask(caller, name, InitHpIoRequest(data_dir=str(directory / "daq"))).action == "request_success"
    return agent, ask(caller, name, StreamRequest()).result["endpoints"]["data"]


def ph256_frame(unix_ns: int, k: int, quabo: int, wr_valid: bool = True) -> bytes:
    fields = quabo_fields(unix_ns, k)
    if not wr_valid:
        fields["pkt_tai"] = (fields["pkt_tai"] + 512) % 1024  # WR and host clocks 512 s apart
    image = PH256[(k % 1000) * 636 + 124 : (k % 1000 + 1) * 636]
    return header_text("ph256", fields, quabo_num=quabo) + image


def write_modules(directories: dict[int, Path], frames: dict[int, list[tuple[int, int, bool]]], t0: int,
                  chunk_ns: int = 50_000_000) -> None:
    """Write each module's (time, quabo, WR valid) frames as Hashpipe does, all modules at the pace of WR time."""
    start = datetime.now(timezone.utc)
    files = {m: HashpipeFiles(directories[m] / "daq" / f"module_{m}" /
                              f"obs_Lick.start_{start:%Y-%m-%dT%H:%M:%SZ}.runtype_sci-data.pffd", m, start=start).open()
             for m in frames}
    ordered = {m: sorted(module_frames) for m, module_frames in frames.items()}
    written = dict.fromkeys(frames, 0)
    began = time.monotonic()
    pace = threading.Event()
    for chunk in range(1, 1 + (max(t for fs in ordered.values() for t, _, _ in fs) - t0) // chunk_ns + 1):
        for m, module_frames in ordered.items():
            while written[m] < len(module_frames) and module_frames[written[m]][0] < t0 + chunk * chunk_ns:
                t, quabo, valid = module_frames[written[m]]
                files[m].write("ph256", ph256_frame(t, written[m], quabo, valid))
                written[m] += 1
        pace.wait(max(0.0, began + chunk * chunk_ns / 1e9 - time.monotonic()))
    for hashpipe in files.values():
        hashpipe.close()
