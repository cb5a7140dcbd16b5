"""Redis and RabbitMQ servers of a test's own: other ports and data dirs, stopped by PID and started again.

They never touch the machine's shared servers (6379, 5672): a test may kill and restart its own at will.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pika
import pika.exceptions
import redis

from helpers.services import free_port
from std_daq_service.broker import connection_parameters

_RABBITMQ_BIN = next((Path(d) for d in ("/usr/lib/rabbitmq/bin", "/usr/sbin")
                      if (Path(d) / "rabbitmq-server").exists()), None)
_START_TIMEOUT_S = 90.0  # RabbitMQ boots in 5-15 s on a loaded 2-core machine
_STOP_TIMEOUT_S = 30.0


def missing_servers() -> str | None:
    """Why own servers cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server not installed"
    if _RABBITMQ_BIN is None:
        return "rabbitmq-server not found under /usr/lib/rabbitmq/bin or /usr/sbin"
    return None


class _ServerProcess:
    """A server process in its own session, so a kill reaches its whole process group."""

    name = "server"

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def _command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def start(self) -> float:
        """Start the server (on the same port and data dir as before); return the seconds until it answered."""
        assert self.process is None or self.process.poll() is not None, f"{self.name} runs already"
        command, env = self._command()
        self.starts += 1
        log = open(self.directory / f"{self.name}.{self.starts}.log", "w")
        started = time.monotonic()
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=self.directory)
        log.close()
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() - started > _START_TIMEOUT_S:
                self.kill()
                raise RuntimeError(f"{self.name} did not answer within {_START_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(0.1)
        return time.monotonic() - started

    def log(self) -> str:
        return (self.directory / f"{self.name}.{self.starts}.log").read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL the server's process group (kill -9: nothing is flushed or closed cleanly)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            self.process.wait(_STOP_TIMEOUT_S)
            try:  # helpers the server started (Erlang's port programs) go with it
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


class RedisServer(_ServerProcess):
    """`redis-server` on a free loopback port; `persistent`: append-only file fsynced at every write."""

    name = "redis"

    def __init__(self, directory: Path, persistent: bool = False):
        super().__init__(directory)
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else \
            ["--appendonly", "no"]
        return (["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                 "--save", "", *persistence, "--daemonize", "no"], dict(os.environ))

    def _answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Stop cleanly (SIGTERM: an append-only file is flushed, nothing else is saved)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        self._reap()


class RabbitServer(_ServerProcess):
    """`rabbitmq-server` with its own node name, ports, Erlang cookie (in its HOME) and data dir; no plugins."""

    name = "rabbitmq"

    def __init__(self, directory: Path):
        super().__init__(directory)
        self.node = f"stdtest{os.getpid()}x{free_port()}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        (directory / "home").mkdir(exist_ok=True)
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")

    def _env(self) -> dict[str, str]:
        d = self.directory
        return {**os.environ, "HOME": str(d / "home"), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port), "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(d / "log"), "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"), "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced"),
                "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"), "RABBITMQ_PID_FILE": str(d / "pid"),
                "ERL_EPMD_ADDRESS": "127.0.0.1", "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}"}

    def _command(self) -> tuple[list[str], dict[str, str]]:
        return [str(_RABBITMQ_BIN / "rabbitmq-server")], self._env()

    def _answers(self) -> bool:
        try:
            pika.BlockingConnection(connection_parameters(self.url, "std_daq:test-server-check")).close()
            return True
        except pika.exceptions.AMQPError:
            return False

    def rabbitmqctl(self, *args: str) -> str:
        return subprocess.run([str(_RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, "-q", *args], env=self._env(),
                              capture_output=True, text=True, check=True, timeout=60).stdout

    def stop(self) -> None:
        """Stop cleanly through `rabbitmqctl stop` (queues and persistent messages are synced first)."""
        if self.process is not None and self.process.poll() is None:
            self.rabbitmqctl("stop")
        self._reap()
