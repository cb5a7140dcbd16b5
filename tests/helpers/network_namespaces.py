"""Hosts for a test: Linux network namespaces joined by veth pairs to a bridge in a namespace of their own.

Every address lives inside the namespaces the test creates (10.213.0.0/24 by default); the machine's own
interfaces are never touched: the veth pairs and the bridge are created inside the namespaces. Processes run in
a node with `ip netns exec`; the calling thread enters one with `Network.inside(node)` (setns, per thread, so
the sockets it creates belong to that node). `close()` stops every process by PID (also those a server spawned
there, found with `ip netns pids`) and deletes the namespaces, and with them the veth pairs and the bridge.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run namespace tests, or None (needs root, `ip`, veth and bridge)."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    probe = f"std-daq-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"`ip netns add` does not work here: {getattr(exc, 'stderr', '') or exc}"
    try:
        _ip("-n", probe, "link", "add", "br0", "type", "bridge")
        _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    except subprocess.CalledProcessError as exc:
        return f"the kernel lacks bridges or veth pairs: {exc.stderr.strip()}"
    finally:
        _ip("netns", "del", probe)
    return None


def netem_unavailable() -> str | None:
    """Why `tc qdisc ... netem` cannot be used here, or None."""
    probe = f"std-daq-probe-{uuid.uuid4().hex[:6]}"
    _ip("netns", "add", probe)
    try:
        subprocess.run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                        "delay", "1ms"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"tc netem is not available: {getattr(exc, 'stderr', '') or exc}".strip()
    finally:
        _ip("netns", "del", probe)
    return None


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


class Network:
    """Nodes (network namespaces) on one bridge; `add(node, address)`, `run(node, argv)`, `close()`."""

    def __init__(self, subnet: str = "10.213.0", prefix: int = 24):
        self.subnet, self.prefix = subnet, prefix
        self.tag = uuid.uuid4().hex[:6]
        self.addresses: dict[str, str] = {}
        self._processes: list[subprocess.Popen] = []
        self._bridge = f"sd{self.tag}-bridge"
        _ip("netns", "add", self._bridge)
        self._created = [self._bridge]
        _ip("-n", self._bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self._bridge, "link", "set", "br0", "up")

    def namespace(self, node: str) -> str:
        return f"sd{self.tag}-{node}"

    def add(self, node: str, host: int) -> str:
        """Create node `node` with address `<subnet>.<host>` on its `eth0`, linked to the bridge; its address."""
        namespace, address = self.namespace(node), f"{self.subnet}.{host}"
        _ip("netns", "add", namespace)
        self._created.append(namespace)
        peer = f"v{host}"
        _ip("-n", self._bridge, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("-n", self._bridge, "link", "set", peer, "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/{self.prefix}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        self.addresses[node] = address
        return address

    def remove(self, node: str) -> None:
        """Tear node `node` down: stop its processes, delete its namespace (and so its veth pair)."""
        namespace = self.namespace(node)
        self._stop(namespace)
        _ip("netns", "del", namespace)
        self._created.remove(namespace)

    def run(self, node: str, argv: list[str], **popen) -> subprocess.Popen:
        """Start `argv` inside `node` (`ip netns exec` becomes the program: its PID is the program's)."""
        process = subprocess.Popen(["ip", "netns", "exec", self.namespace(node), *argv], **popen)
        self._processes.append(process)
        return process

    def exec(self, node: str, *argv: str) -> str:
        """Run a short command inside `node`; its output."""
        return subprocess.run(["ip", "netns", "exec", self.namespace(node), *argv], capture_output=True,
                              text=True, check=True).stdout

    def link(self, node: str, up: bool) -> None:
        """Set `node`'s link to the bridge up or down (from inside the node)."""
        _ip("-n", self.namespace(node), "link", "set", "eth0", "up" if up else "down")

    def namespace_inodes(self) -> set[int]:
        """The inode numbers of the nodes' namespaces (what a thread's /proc/thread-self/ns/net points at)."""
        return {os.stat(f"/run/netns/{n}").st_ino for n in self._created}

    @contextmanager
    def inside(self, node: str) -> Iterator[None]:
        """Move the calling thread into `node` (threads it starts meanwhile are there too); back on leaving."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.namespace(node)}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)

    def pids(self, namespace: str) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", namespace).split()]

    def _stop(self, namespace: str) -> None:
        """SIGTERM the processes started in `namespace`, then SIGKILL whatever still runs there, by PID."""
        ours = [p for p in self._processes if p.pid in self.pids(namespace)]
        for process in ours:
            process.terminate()
        for process in ours:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in self.pids(namespace):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._processes = [p for p in self._processes if p not in ours]

    def close(self) -> None:
        """Stop every process in every node and delete every namespace this network created."""
        for namespace in reversed(self._created):
            self._stop(namespace)
        for namespace in reversed(self._created):
            _ip("netns", "del", namespace)
        self._created.clear()
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def thread_namespace_inode() -> int:
    """The inode of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino

