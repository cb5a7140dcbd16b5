"""What the benchmarks share: services started as subprocesses, and their CPU time from /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


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
