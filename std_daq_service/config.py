"""Service configuration in Redis (`config.<SERVICE_NAME>`) and liveness beacons (`status.<SERVICE_NAME>`).

Every service's configuration schema lives here, keyed by the service kind (the last part of
SERVICE_NAME, e.g. `lick.daq1.hp_io_agent` is an `hp_io_agent`), so the REST proxy and the CLI
validate a configuration before storing it without importing the service.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError

from std_daq_service import __version__
from std_daq_service.lifecycle import BackgroundThread, Lifecycle
from std_daq_service.protocol import InvalidRequest, UnknownTarget, describe_validation_error

log = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url(explicit: str | None = None) -> str:
    """The Redis URL: the explicit one, else `REDIS_URL`, else the local default."""
    return explicit or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def connect_redis(url: str | None = None) -> redis.Redis:
    """A Redis client for `url` (see `redis_url`); it connects at its first command and reconnects after a failure."""
    return redis.Redis.from_url(redis_url(url), socket_timeout=5, socket_connect_timeout=5, decode_responses=True)


def service_kind(service_name: str) -> str:
    """`lick.daq1.hp_io_agent` -> `hp_io_agent`."""
    return service_name.rsplit(".", 1)[-1]


def advertised_endpoint(bind: str, advertise_host: str | None) -> str:
    """The address a client connects to for a bind address (wildcards become a host name)."""
    parts = urlsplit(bind)
    host = parts.hostname or ""
    if advertise_host:
        host = advertise_host
    elif host in ("*", "0.0.0.0", ""):
        host = socket.gethostname()
    return f"{parts.scheme}://{host}:{parts.port}"


class ServiceConfig(BaseModel):
    """Base of every service's configuration; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port of the Prometheus metrics (http://metrics_host:port/metrics); "
        "0 or null (the default): no metrics server.",
    )
    metrics_host: str = Field("127.0.0.1", description="Bind address of the metrics server ('0.0.0.0': all).")


class HpIoAgentConfig(ServiceConfig):
    """Configuration of a node agent (`<site>.<node>.hp_io_agent`)."""

    data_dir: str | None = Field(None, description="Data dir tracked at start; None waits for init_hp_io.")
    data_bind: str = Field("tcp://127.0.0.1:5555", description="ZMQ PUB address for every frame.")
    preview_bind: str = Field("tcp://127.0.0.1:5556", description="ZMQ PUB address for previews.")
    advertise_host: str | None = Field(
        None, description="Host name clients connect to; default: the bind address's host."
    )
    min_update_interval_seconds: PositiveFloat = Field(0.1, description="Fastest preview period allowed.")
    sim_data_dir: str = Field("/tmp/std_daq_sim", description="Where init_sim writes its live run.")
    sim_source_dir: str | None = Field(None, description="Archived run to replay; None: the embedded excerpt.")
    run_end_idle_seconds: PositiveFloat = Field(
        30.0, description="A run none of whose streams got frames for this long is reported as ended."
    )
    rollover_grace_seconds: PositiveFloat = Field(
        2.0, description="After a newer file of a stream appears, the old one counts as complete once its writer "
        "closed it (inotify) or it has not changed for this long; its last buffer is read first.",
    )
    poll_interval_seconds: PositiveFloat = Field(0.5, description="Polling period where inotify is missing.")
    max_batch_frames: PositiveInt = Field(1000, le=10_000, description="Most frames per ZMQ message.")
    send_hwm: PositiveInt = Field(100_000, description="ZMQ messages queued per subscriber before drops.")
    replay_bind: str = Field(
        "tcp://127.0.0.1:*", description="ZMQ XPUB address of replay requests (past frames from the PFF files); a "
        "`*` port picks a free one, reported as endpoints.replay by stream and status."
    )
    replay_max_frames_per_second: PositiveFloat = Field(
        50_000, description="Most frames per second all replays together publish, so the live stream keeps its "
        "latency."
    )
    replay_max_bytes_per_second: PositiveFloat = Field(
        200e6, description="Most image and header bytes per second all replays together publish."
    )
    socket_hook: bool = Field(False, description="Listen on Hashpipe's low-latency Unix sockets.")
    socket_path_template: str = Field(
        "/tmp/hashpipe_grpc.dp_{dp}.sock", description="Path of the Unix socket per data product."
    )


class AgentStream(BaseModel):
    """One agent whose frames a writer records."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="The agent's SERVICE_NAME.")
    data: str = Field(description="The agent's ZMQ data address, e.g. tcp://127.0.0.1:5555.")


class EventStream(BaseModel):
    """One event builder whose coincidence events a writer records."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="The builder's SERVICE_NAME.")
    events: str = Field(description="The builder's ZMQ events address (its beacon's events_endpoint).")


class WriterConfig(ServiceConfig):
    """Configuration of an HDF5 writer (`<site>.<node>.writer`)."""

    agents: list[AgentStream] = Field(min_length=1, description="Agents to subscribe to.")
    output_root: str = Field(description="Every output_file lies below this directory.")
    ring_buffer_seconds: PositiveFloat = Field(10.0, description="Past kept per stream for pre-trigger writes.")
    ring_buffer_bytes: PositiveInt = Field(256 << 20, description="Memory cap of all ring buffers.")
    max_concurrent_writes: PositiveInt = Field(8, description="Writes at once; more are refused.")
    compression: Literal["none", "gzip", "lzf", "bitshuffle_lz4", "blosc_lz4"] = "bitshuffle_lz4"
    event_builders: list[EventStream] = Field(
        default_factory=list, description="Event builders whose coincidence events a write may record.")
    swmr: bool = Field(True, description="Write files in HDF5 SWMR mode, so readers can open them while they grow.")


class RestConfig(ServiceConfig):
    """Configuration of the REST proxy (`<site>.<node>.rest`)."""

    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(5000, ge=1, le=65535)
    writers: list[str] = Field(default_factory=list, description="Writers that write requests go to.")
    agents: list[str] = Field(default_factory=list, description="Agents that init_hp_io, init_sim and stop_hp_io go "
                              "to when a request names none (empty: every live agent this Redis knows).")
    token: str | None = Field(None, description="If set, every POST and PUT (writes, kills, inits, config changes) "
                              "needs 'Authorization: Bearer <token>'.")
    allow_unauthenticated_remote: bool = Field(
        False, description="Bind an address beyond loopback without a token. By default the proxy refuses to: "
        "anyone who reaches the port could write, kill and change configurations.")
    sync_timeout_seconds: PositiveFloat = Field(60.0, description="Longest wait of a *_sync call.")


def exposed_without_token(config: RestConfig) -> bool:
    """Whether a REST config binds beyond loopback with no token and without `allow_unauthenticated_remote`."""
    if config.token or config.allow_unauthenticated_remote or config.host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(config.host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return True


class EventBuilderConfig(ServiceConfig):
    """Configuration of a coincidence event builder (`<site>.<node>.event_builder`)."""

    agents: list[AgentStream] = Field(min_length=1, description="Agents whose ph256/ph1024 streams are matched.")
    events_bind: str = Field("tcp://127.0.0.1:5560", description="ZMQ PUB address of the coincidence events.")
    advertise_host: str | None = Field(
        None, description="Host name clients and writers connect to for the events; default: the bind address's host."
    )
    hit_window_ns: NonNegativeInt = Field(
        100, description="One module's frames this close in time (consecutively) are one hit (its quabos).")
    coincidence_window_ns: PositiveInt = Field(
        1000, description="Hits within this many ns of an event's earliest hit are its members (inclusive).")
    time_offsets_ns: dict[int, int] = Field(
        default_factory=dict, description="Per module id, its delay in ns: subtracted from its WR times.")
    min_modules: PositiveInt = Field(2, description="Distinct modules an event needs.")
    min_domes: PositiveInt = Field(
        2, description="Distinct domes an event needs when the dome of every member module is known.")
    domes: dict[int, str] = Field(default_factory=dict, description="Module id -> dome; overrides obs_config.")
    obs_config: str | None = Field(
        None, description="A run's obs_config.json: module id (last octet of ip_addr >> 2) -> dome name.")
    max_latency_ms: PositiveFloat = Field(
        1000.0, description="Reorder budget: frames wait until every live stream is this far (in WR time) past "
        "them; a stream silent this long (wall time) holds no one. Frames behind it arrive late: counted, dropped.")
    accidental_shifts: PositiveInt = Field(10, le=1000, description="Shifted copies for the accidental estimate.")
    accidental_shift_ns: PositiveInt = Field(
        20_000, description="Step of the shifts; module rank j moves by j * k * step, k = 1..accidental_shifts.")
    archive_root: str = Field("/", description="find_coincidences reads run directories below this only.")


CONFIG_MODELS: dict[str, type[ServiceConfig]] = {
    "hp_io_agent": HpIoAgentConfig,
    "writer": WriterConfig,
    "rest": RestConfig,
    "event_builder": EventBuilderConfig,
}


def validate_config(service_name: str, data: dict[str, Any] | str | bytes) -> ServiceConfig:
    """Validate a configuration for `service_name`.

    Raises:
        InvalidRequest: not JSON, or a field is wrong (named); or the service kind is unknown.
    """
    kind = service_kind(service_name)
    model = CONFIG_MODELS.get(kind)
    if model is None:
        raise InvalidRequest(
            f"{service_name!r}: unknown service kind {kind!r}; SERVICE_NAME ends in one of {', '.join(CONFIG_MODELS)}"
        )
    try:
        if isinstance(data, (str, bytes)):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(f"config.{service_name}: {describe_validation_error(exc)}") from exc


class ConfigStore:
    """Load and save validated service configurations in Redis."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def load(self, service_name: str) -> ServiceConfig:
        """Return the validated configuration of `service_name`.

        Raises:
            UnknownTarget: no `config.<service_name>` key.
            InvalidRequest: the stored configuration does not validate.
        """
        raw = self.redis.get(f"config.{service_name}")
        if raw is None:
            raise UnknownTarget(
                f"no configuration at Redis key config.{service_name}; store one with "
                f"'std_daq config set {service_name} FILE.json' or ./setup_dev_env.sh"
            )
        return validate_config(service_name, raw)

    def save(self, service_name: str, data: dict[str, Any] | str | bytes) -> ServiceConfig:
        """Validate and store; nothing is stored if invalid.

        Raises:
            InvalidRequest: the configuration does not validate.
        """
        config = validate_config(service_name, data)
        self.redis.set(f"config.{service_name}", config.model_dump_json(exclude_unset=True))
        return config

    def seed(self, service_name: str, data: dict[str, Any] | str | bytes) -> bool:
        """Validate, and store only if no configuration is stored yet; returns whether it was stored.

        Raises:
            InvalidRequest: the configuration does not validate (also when one is stored already).
        """
        config = validate_config(service_name, data)
        return bool(self.redis.set(f"config.{service_name}", config.model_dump_json(exclude_unset=True), nx=True))

    def service_names(self) -> list[str]:
        return sorted(key.removeprefix("config.") for key in self.redis.scan_iter("config.*"))


class LivenessBeacon(Lifecycle):
    """Keep `status.<SERVICE_NAME>` alive in Redis: a hash refreshed every `period_s` with a TTL.

    `start()` begins the refreshes; `close()` stops them and deletes the hash. The Redis client stays its
    owner's. Each refresh also stores the config the service runs with as `config.<SERVICE_NAME>` if that key is
    missing (a Redis restarted without persistence lost it), so the service starts again after a restart of its
    own; a stored config is never replaced.

    Args:
        state: called at each refresh; its dict (JSON-encoded values) is merged into the hash.
    """

    def __init__(
        self,
        client: redis.Redis,
        service_name: str,
        config: ServiceConfig,
        state: Callable[[], dict[str, Any]] = dict,
        period_s: float = 2.0,
    ):
        self.redis = client
        self.service_name = service_name
        self.key = f"status.{service_name}"
        self.config = config
        self.state = state
        self.period_s = period_s
        self.ttl_s = max(1, round(3 * period_s))
        self.start_timestamp = time.time()
        self._loop = BackgroundThread(f"beacon-{service_name}", self._run)
        self._healthy = True
        self._last_beat: float | None = None

    def age(self) -> float | None:
        """Seconds since the hash was last written (None: not yet)."""
        return None if self._last_beat is None else time.monotonic() - self._last_beat

    def _open(self) -> None:
        self._loop.start()

    def _release(self) -> None:
        self._loop.close()
        try:
            self.redis.delete(self.key)
        except redis.RedisError:
            pass  # Redis away at shutdown: the key expires by its TTL

    def fields(self) -> dict[str, str]:
        """The hash as it is written now."""
        fields = {
            "service_name": self.service_name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start_timestamp": self.start_timestamp,
            "heartbeat_timestamp": time.time(),
            "version": __version__,
            "config": self.config.model_dump(mode="json"),
        }
        fields.update(self.state())
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}

    def beat(self) -> None:
        pipe = self.redis.pipeline()
        pipe.set(f"config.{self.service_name}", self.config.model_dump_json(exclude_unset=True), nx=True)
        pipe.delete(self.key)
        pipe.hset(self.key, mapping=self.fields())  # type: ignore[arg-type]  # redis types keys as any encodable
        pipe.expire(self.key, self.ttl_s)
        pipe.execute()
        self._last_beat = time.monotonic()

    def _run(self, stop: threading.Event) -> None:
        while True:
            try:
                self.beat()
                if not self._healthy:
                    log.info("Redis is back; liveness beacon %s restored", self.key)
                self._healthy = True
            except redis.RedisError as exc:
                if self._healthy:
                    log.warning("cannot refresh liveness beacon %s: %s; retrying", self.key, exc)
                self._healthy = False
            if stop.wait(self.period_s):
                return


def service_beacon(client: redis.Redis, service_name: str) -> dict[str, Any] | None:
    """The liveness hash of a service whose beacon is alive, else None."""
    raw = client.hgetall(f"status.{service_name}")
    return {str(k): _json_or_text(v) for k, v in raw.items()} if raw else None


def live_services(client: redis.Redis, kind: str | None = None) -> dict[str, dict[str, Any]]:
    """Liveness hashes of the services whose beacon is alive, by SERVICE_NAME (optionally of one kind)."""
    services = {}
    for key in client.scan_iter("status.*"):
        name = key.removeprefix("status.")
        if kind is not None and service_kind(name) != kind:
            continue
        found = service_beacon(client, name)
        if found:
            services[name] = found
    return dict(sorted(services.items()))


def _json_or_text(value: str | bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
