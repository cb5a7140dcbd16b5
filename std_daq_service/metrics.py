"""Prometheus metrics of every service: their names, how a service's state becomes metrics, the HTTP server.

`METRICS` is the one list of names (the README's list is checked against it). A service's metrics are read
from the state it keeps anyway (its `status` answer, its beacon state) when Prometheus scrapes, by a
`StateCollector`; only the request durations are observed as they happen, once per request, by the broker's
dispatcher. Nothing is counted on the data path.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from std_daq_service.lifecycle import Lifecycle

STREAM = ("module", "dp", "origin")
REQUEST_OUTCOMES = ("success", "fail", "killed")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200)


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its name (a counter's samples get `_total`), kind, labels and meaning."""

    name: str
    kind: str  # "counter", "gauge", "histogram"
    labels: tuple[str, ...]
    help: str

    def exposed(self) -> set[str]:
        """The sample names Prometheus stores for this family."""
        if self.kind == "counter":
            return {f"{self.name}_total"}
        if self.kind == "histogram":
            return {f"{self.name}_{suffix}" for suffix in ("bucket", "count", "sum", "created")}
        return {self.name}


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    # every service
    MetricSpec("std_daq_service_info", "gauge", ("service", "kind", "version"), "1 per running service."),
    MetricSpec("std_daq_beacon_age_seconds", "gauge", (), "Time since the liveness beacon was last written to Redis."),
    MetricSpec("std_daq_broker_connected", "gauge", (), "1 while the service is connected to RabbitMQ."),
    MetricSpec("std_daq_broker_reconnects", "counter", (), "Lost or refused broker connections."),
    MetricSpec("std_daq_requests_running", "gauge", ("request_type",), "Requests being handled now."),
    MetricSpec("std_daq_request_duration_seconds", "histogram", ("request_type", "outcome"),
               "Time from a request's start to its final status (outcome: success, fail, killed)."),
    # node agent
    MetricSpec("std_daq_agent_tracking", "gauge", (), "1 while the agent tracks a data dir."),
    MetricSpec("std_daq_agent_frames_published", "counter", STREAM, "Frames published per stream."),
    MetricSpec("std_daq_agent_bytes_published", "counter", STREAM, "PFF bytes published per stream."),
    MetricSpec("std_daq_agent_frames_lost", "counter", STREAM,
               "Frames known lost (torn, corrupt, truncated): seq gaps the subscribers see."),
    MetricSpec("std_daq_agent_corrupt_bytes", "counter", STREAM, "Corrupt bytes skipped per stream."),
    MetricSpec("std_daq_agent_lag_bytes", "gauge", STREAM, "Bytes in the current file not read yet."),
    MetricSpec("std_daq_agent_seconds_since_data", "gauge", STREAM, "Time since the stream last had new frames."),
    MetricSpec("std_daq_agent_messages_published", "counter", (), "ZMQ messages sent (data, previews, controls)."),
    MetricSpec("std_daq_agent_subscribers", "gauge", ("socket",), "Connected subscribers per socket (data, preview)."),
    MetricSpec("std_daq_agent_subscribers_by_kind", "gauge", ("kind",),
               "Subscribers by what they declared: users, infrastructure, unknown."),
    MetricSpec("std_daq_agent_socket_hook_connections", "gauge", (), "Open Hashpipe socket-hook connections."),
    MetricSpec("std_daq_agent_socket_hook_frames", "counter", (), "Frames received over the socket hook."),
    MetricSpec("std_daq_agent_socket_hook_torn_records", "counter", (), "Socket-hook records cut short."),
    MetricSpec("std_daq_agent_socket_hook_bad_records", "counter", (), "Socket-hook records that did not parse."),
    MetricSpec("std_daq_agent_socket_hook_bad_bytes", "counter", (), "Socket-hook bytes skipped as bad."),
    MetricSpec("std_daq_agent_socket_hook_resyncs", "counter", (), "Times the socket hook searched for a header."),
    MetricSpec("std_daq_agent_socket_hook_unpublished_frames", "counter", (),
               "Socket-hook frames lost to an error while publishing them."),
    # writer
    MetricSpec("std_daq_writer_frames_received", "counter", ("agent", "module", "dp"), "Frames received per stream."),
    MetricSpec("std_daq_writer_messages_received", "counter", ("agent", "module", "dp"),
               "Frame messages received per stream."),
    MetricSpec("std_daq_writer_bad_messages", "counter", (), "Messages dropped as undecodable or not recorded."),
    MetricSpec("std_daq_writer_ring_buffer_bytes", "gauge", (), "Bytes held in the ring buffer."),
    MetricSpec("std_daq_writer_ring_buffer_max_bytes", "gauge", (), "Memory cap of the ring buffer."),
    MetricSpec("std_daq_writer_ring_buffer_seconds", "gauge", (), "Age of the oldest message in the ring buffer."),
    MetricSpec("std_daq_writer_ring_buffer_max_seconds", "gauge", (), "Past the ring buffer keeps at most."),
    MetricSpec("std_daq_writer_writes_running", "gauge", (), "Writes running now."),
    MetricSpec("std_daq_writer_written_frames", "counter", (), "Frames taken into files (ended and running writes)."),
    MetricSpec("std_daq_writer_written_bytes", "counter", (), "Frame bytes written to files."),
)}
"""Every metric a service exports, by name. Writes succeeded, failed or killed are
`std_daq_request_duration_seconds_count{request_type="write"}` by outcome."""


def exposed_names() -> set[str]:
    """Every sample name the services export (what a dashboard query may name)."""
    return set().union(*(spec.exposed() for spec in METRICS.values()))


class Families:
    """Metric families being filled for one scrape: `add(name, value, **labels)` creates each family once."""

    def __init__(self) -> None:
        self._families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

    def add(self, name: str, value: float | None, **labels: object) -> None:
        """Add a sample; a None value (unknown) is left out."""
        spec = METRICS[name]
        family = self._families.get(name)
        if family is None:
            family_type = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            family = self._families[name] = family_type(name, spec.help, labels=list(spec.labels))
        if value is not None:
            family.add_metric([str(labels[label]) for label in spec.labels], float(value))

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class StateCollector(Collector):
    """Read a service's state at each scrape: `fill(families)` adds the samples."""

    def __init__(self, fill: Callable[[Families], None]):
        self.fill = fill

    def collect(self) -> Iterable[Metric]:
        families = Families()
        self.fill(families)
        return families


def request_duration_histogram(request_types: Iterable[str]) -> Histogram:
    """The dispatcher's histogram of request durations, not registered anywhere yet; zero for each known type."""
    spec = METRICS["std_daq_request_duration_seconds"]
    histogram = Histogram(spec.name, spec.help, spec.labels, buckets=DURATION_BUCKETS, registry=None)
    for request_type in request_types:
        for outcome in REQUEST_OUTCOMES:
            histogram.labels(request_type, outcome)
    return histogram


@dataclass
class RuntimeState:
    """What every service reports about itself, read at each scrape."""

    service_name: str
    kind: str
    version: str
    broker_connected: Callable[[], bool]
    broker_reconnects: Callable[[], int]
    beacon_age_s: Callable[[], float | None]
    running_requests: Callable[[], list[dict[str, Any]]]

    def fill(self, families: Families) -> None:
        families.add("std_daq_service_info", 1, service=self.service_name, kind=self.kind, version=self.version)
        age = self.beacon_age_s()
        families.add("std_daq_beacon_age_seconds", math.inf if age is None else age)
        families.add("std_daq_broker_connected", int(self.broker_connected()))
        families.add("std_daq_broker_reconnects", self.broker_reconnects())
        running: dict[str, int] = {}
        for request in self.running_requests():
            running[request["request_type"]] = running.get(request["request_type"], 0) + 1
        families.add("std_daq_requests_running", None)
        for request_type, count in sorted(running.items()):
            families.add("std_daq_requests_running", count, request_type=request_type)


def fill_agent(families: Families, status: dict[str, Any], origin: str) -> None:
    """The agent's metrics from its `status` answer; `origin` is where its tracked frames come from."""
    families.add("std_daq_agent_tracking", int(status["data_dir"] is not None))
    for module_id, products in status["modules"].items():
        for dp, stream in products.items():
            labels = {"module": module_id, "dp": dp, "origin": origin}
            families.add("std_daq_agent_frames_published", stream["frames_published"], **labels)
            families.add("std_daq_agent_bytes_published", stream["bytes_published"], **labels)
            families.add("std_daq_agent_frames_lost", stream["frames_lost"], **labels)
            families.add("std_daq_agent_corrupt_bytes", stream["corrupt_bytes_skipped"], **labels)
            families.add("std_daq_agent_lag_bytes", stream["lag_bytes"], **labels)
            families.add("std_daq_agent_seconds_since_data", stream["seconds_since_data"], **labels)
    families.add("std_daq_agent_messages_published", status["messages_published"])
    families.add("std_daq_agent_subscribers", status["subscribers"], socket="data")
    families.add("std_daq_agent_subscribers", status["preview_subscribers"], socket="preview")
    for kind in ("users", "infrastructure", "unknown"):
        families.add("std_daq_agent_subscribers_by_kind", status["subscribed"][kind], kind=kind)
    hook = status["socket_hook"]
    if hook is not None:
        families.add("std_daq_agent_socket_hook_connections", hook["connections"])
        families.add("std_daq_agent_socket_hook_frames", hook["frames_received"])
        for name in ("torn_records", "bad_records", "bad_bytes", "resyncs", "unpublished_frames"):
            families.add(f"std_daq_agent_socket_hook_{name}", hook[name])


def fill_writer(families: Families, status: dict[str, Any], writes_running: int, written_frames: int,
                written_bytes: int) -> None:
    """The writer's metrics from its receiver's `status` and its writes."""
    families.add("std_daq_writer_frames_received", None)
    families.add("std_daq_writer_messages_received", None)
    for key, stream in status["streams"].items():
        agent, module_id, dp = key.rsplit("/", 2)
        families.add("std_daq_writer_frames_received", stream["frames"], agent=agent, module=module_id, dp=dp)
        families.add("std_daq_writer_messages_received", stream["messages"], agent=agent, module=module_id, dp=dp)
    families.add("std_daq_writer_bad_messages", status["bad_messages"])
    ring = status["ring_buffer"]
    families.add("std_daq_writer_ring_buffer_bytes", ring["bytes"])
    families.add("std_daq_writer_ring_buffer_max_bytes", ring["max_bytes"])
    families.add("std_daq_writer_ring_buffer_seconds", ring["seconds"])
    families.add("std_daq_writer_ring_buffer_max_seconds", ring["max_seconds"])
    families.add("std_daq_writer_writes_running", writes_running)
    families.add("std_daq_writer_written_frames", written_frames)
    families.add("std_daq_writer_written_bytes", written_bytes)


class MetricsServer(Lifecycle):
    """Serve `registry` at `http://host:port/metrics` from a thread of this process; `start()` listens.

    Raises (at `start()`):
        OSError: the port is taken or the address is not this host's.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        self.registry = registry
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _open(self) -> None:
        self._server, self._thread = start_http_server(self.port, self.host, self.registry)

    def _release(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"
