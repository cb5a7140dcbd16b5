"""Keep the test process and the services it starts on loopback addresses.

An audit hook refuses, before any packet leaves, every `connect`, `bind`, `sendto` or `sendmsg` of an
IPv4/IPv6 socket of this process to an address that is not loopback; Unix sockets are not concerned.
Services run as subprocesses, out of the hook's reach: their configs are checked instead.

The servers named by `REDIS_URL`, `BROKER_URL` and `RABBITMQ_API_URL` in the environment are allowed as
well: setting them is the explicit choice of servers elsewhere (tests_in_docker.sh uses the compose hosts).
So are the addresses inside network namespaces a test created (`allow_namespaces`), for a thread inside one of
them: there those addresses cannot lead out of the test's own network.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

SERVER_URL_VARIABLES = ("REDIS_URL", "BROKER_URL", "RABBITMQ_API_URL")
_AUDITED = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"})
_ENDPOINT_SCHEMES = ("tcp", "udp", "http", "https", "redis", "amqp")


class NonLoopbackAddress(Exception):
    """A socket of the test process was about to use an address that is not loopback.

    Not an `OSError`, so code that retries on network errors does not take it for one.
    """


def is_loopback(host: str) -> bool:
    """Is `host` (an address or a name) loopback? A name counts if every address it resolves to does."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror:
            return False
        return bool(infos) and all(is_loopback(info[4][0]) for info in infos)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def environment_servers() -> set[str]:
    """Addresses of the servers that the environment names explicitly (see the module docstring)."""
    addresses = set()
    for variable in SERVER_URL_VARIABLES:
        host = urlsplit(os.environ.get(variable, "")).hostname
        if host:
            addresses.add(host)
            try:
                addresses.update(info[4][0] for info in socket.getaddrinfo(host, None))
            except socket.gaierror:
                pass  # a name that does not resolve is refused by the connect itself
    return addresses


class LoopbackGuard:
    """The audit hook (installed once per process) and the violations it has seen since the last `take()`."""

    def __init__(self) -> None:
        self.allowed: set[str] = set()
        self.violations: list[str] = []
        self._namespaces: list[tuple[set[str], Callable[[], set[int]]]] = []

    def install(self) -> LoopbackGuard:
        self.allowed = environment_servers()
        sys.addaudithook(self._audit)
        return self

    @contextmanager
    def allow_namespaces(self, addresses: set[str], inodes: Callable[[], set[int]]) -> Iterator[None]:
        """Allow `addresses` to a thread whose network namespace is one of `inodes()` (those a test created)."""
        entry = (addresses, inodes)
        self._namespaces.append(entry)
        try:
            yield
        finally:
            self._namespaces.remove(entry)

    def _in_test_namespace(self, host: str) -> bool:
        here = os.stat("/proc/thread-self/ns/net").st_ino
        return any(host in addresses and here in inodes() for addresses, inodes in self._namespaces)

    def take(self) -> list[str]:
        taken, self.violations = self.violations, []
        return taken

    def _audit(self, event: str, args: tuple) -> None:
        if event not in _AUDITED:
            return
        sock, address = args[0], args[-1]
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
            return
        host = str(address[0])
        if host in self.allowed or (host and is_loopback(host)) or self._in_test_namespace(host):
            return
        problem = f"{event} to {address!r}: not a loopback address"
        self.violations.append(problem)
        raise NonLoopbackAddress(problem)


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value


def config_violations(config: dict, namespace_addresses: frozenset[str] = frozenset()) -> list[str]:
    """Endpoints, URLs and `host` values of a service config that are not loopback (`*` is every interface).

    For a service running inside a test's network namespaces, pass their `namespace_addresses`: those are
    allowed, and so is `*` (every interface of such a namespace is the test's).
    """
    problems = []
    for where, value in _strings(config, ""):
        scheme, _, rest = value.partition("://")
        if scheme in _ENDPOINT_SCHEMES and rest:
            host = urlsplit(f"{scheme}://{rest.replace('*', '0')}").hostname or ""
            wildcard = rest.split(":")[0] == "*"
            if not (namespace_addresses and (wildcard or host in namespace_addresses)) and (
                    wildcard or not is_loopback(host)):
                problems.append(f"{where} = {value!r}")
        elif (where.rsplit(".", 1)[-1] in ("host", "metrics_host", "advertise_host") and not is_loopback(value)
              and value not in namespace_addresses):
            problems.append(f"{where} = {value!r}")
    return problems


def url_violation(url: str) -> str | None:
    """Why a server URL is refused, or None: loopback, or a host the environment names explicitly."""
    host = urlsplit(url).hostname or ""
    if is_loopback(host) or host in environment_servers():
        return None
    return f"{url} is not a loopback address (set {'/'.join(SERVER_URL_VARIABLES)} to use servers elsewhere)"
