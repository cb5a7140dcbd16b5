"""The agent's answers to init_hp_io, init_sim, stop_hp_io, status and stream requests."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from std_daq_service.broker import Handler, RequestContext
from std_daq_service.config import HpIoAgentConfig, advertised_endpoint
from std_daq_service.hp_io_agent.frame_publisher import USER
from std_daq_service.hp_io_agent.replay import Replay
from std_daq_service.hp_io_agent.replay_publisher import ReplayPublisher
from std_daq_service.hp_io_agent.simulator import DEFAULT_SOURCE, Simulator
from std_daq_service.hp_io_agent.tracker import Tracker, Tracking
from std_daq_service.lifecycle import Lifecycle
from std_daq_service.metrics import Families, fill_agent
from std_daq_service.pff import DATA_PRODUCTS
from std_daq_service.protocol import (
    SOCKET_TOPIC_PREFIX,
    Busy,
    InitHpIoRequest,
    InitSimRequest,
    InvalidRequest,
    ReplayRequest,
    StatusRequest,
    StopHpIoRequest,
    StreamRequest,
    UnknownTarget,
    frame_topic,
    subscriber_topic,
)

log = logging.getLogger(__name__)

_BEACON_STREAM_FIELDS = ("frames_published", "frames_per_second", "frames_lost", "corrupt_bytes_skipped", "lag_bytes",
                         "seconds_since_data", "next_seq")
"""What the beacon tells of each stream (`<module>/<dp>`), for the REST proxy's live page."""


class AgentHandlers(Lifecycle):
    """Request handlers of one agent; inits and stops are serialised, the others (replays too) run at any time.

    Closing stops the simulator, if one runs.
    """

    def __init__(self, service_name: str, config: HpIoAgentConfig, tracker: Tracker, replays: ReplayPublisher):
        self.service_name = service_name
        self.config = config
        self.tracker = tracker
        self.replays = replays
        self.simulator: Simulator | None = None
        self._init_lock = threading.Lock()

    def handlers(self) -> dict[str, Handler]:
        return {
            "init_hp_io": self.init_hp_io,
            "init_sim": self.init_sim,
            "stop_hp_io": self.stop_hp_io,
            "status": self.status,
            "stream": self.stream,
            "replay": self.replay,
        }

    def _preview_interval(self, seconds: float) -> tuple[float, dict[str, str]]:
        """The preview period to use, raised to the configured minimum, and a note for the result if it was."""
        minimum = self.config.min_update_interval_seconds
        if seconds >= minimum:
            return seconds, {}
        note = f"update_interval_seconds {seconds:g} is below this agent's minimum; using {minimum:g} s"
        log.warning("%s: %s", self.service_name, note)
        return minimum, {"note": note}

    def _check_force(self, force: bool) -> None:
        """Refuse while users stream (writers and other infrastructure do not count: they get `reinit`)."""
        protected = self.tracker.publisher.subscribers.protected()
        if self.tracker.tracking is not None and protected and not force:
            raise Busy(
                f"{protected} are subscribed to the running stream of {self.tracker.tracking.data_dir}; "
                "send force=true to re-initialise anyway"
            )

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        if not self._init_lock.acquire(timeout=10):
            raise Busy("another init or stop of this agent is still running; retry when it has finished")
        try:
            yield
        finally:
            self._init_lock.release()

    def _stop_simulator(self) -> None:
        if self.simulator is not None:
            self.simulator.close()
            self.simulator = None

    def init_hp_io(self, request: InitHpIoRequest, ctx: RequestContext) -> dict:
        if request.simulate_daq:
            return self.init_sim(InitSimRequest(module_ids=request.module_ids, force=request.force,
                                                update_interval_seconds=request.update_interval_seconds), ctx)
        interval, note = self._preview_interval(request.update_interval_seconds)
        data_dir = Path(request.data_dir)
        if not data_dir.is_dir():
            raise UnknownTarget(f"data_dir '{data_dir}' does not exist on {self.service_name}")
        with self._exclusive():
            self._check_force(request.force)
            self._stop_simulator()
            tracking = Tracking(data_dir, set(request.module_ids), interval)
            self.tracker.track(tracking, "reinit", f"now tracking {data_dir}")
        return {"data_dir": str(data_dir), "module_ids": request.module_ids, "update_interval_seconds": interval,
                **note}

    def _sim_source(self, request: InitSimRequest) -> Path:
        """The archived run to replay: the request's, else the config's, else the embedded excerpt."""
        return Path(request.source_dir or self.config.sim_source_dir or DEFAULT_SOURCE)

    def init_sim(self, request: InitSimRequest, ctx: RequestContext) -> dict:
        interval, note = self._preview_interval(request.update_interval_seconds)
        source = self._sim_source(request)
        if not source.is_dir():
            raise UnknownTarget(f"simulation source_dir '{source}' does not exist on {self.service_name}")
        with self._exclusive():
            self._check_force(request.force)
            self._stop_simulator()
            data_dir = Path(self.config.sim_data_dir)
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InvalidRequest(f"cannot create sim_data_dir '{data_dir}': {exc.strerror}") from exc
            tracking = Tracking(data_dir, set(request.module_ids), interval, "simulator")
            simulator = self._simulate(request, source, tracking, f"now tracking a simulated run in {data_dir}")
        return {"data_dir": str(data_dir), "source_dir": str(source), "run_dirs": [str(d) for d in simulator.run_dirs],
                "update_interval_seconds": interval, **note}

    def _simulate(self, request: InitSimRequest, source: Path, tracking: Tracking, message: str,
                  resume: dict | None = None) -> Simulator:
        self.tracker.track(tracking, "reinit", message, simulation=request.model_dump(mode="json"), resume=resume)
        simulator = Simulator(source, tracking.data_dir, request.module_ids, request.movie_rate_hz,
                              request.pulse_height_rate_hz, request.max_file_size_mb)
        try:
            simulator.start()
        except (OSError, ValueError) as exc:
            self.tracker.track(None, "stop", "simulation could not start")
            raise InvalidRequest(f"simulation could not start: {exc}") from exc
        self.simulator = simulator
        return simulator

    def resume(self, checkpoint: dict, positions: dict) -> None:
        """After a restart: track what the checkpoint says, from its stream positions (and simulate again)."""
        tracking = Tracking.from_dict(checkpoint["tracking"])
        message = f"{self.service_name} restarted; resuming {tracking.data_dir} where it stopped"
        log.warning(message)
        if checkpoint.get("simulation"):
            request = InitSimRequest.model_validate(checkpoint["simulation"])
            self._simulate(request, self._sim_source(request), tracking, message, positions)
        else:
            self.tracker.track(tracking, "reinit", message, resume=positions)

    def stop_hp_io(self, request: StopHpIoRequest, ctx: RequestContext) -> dict:
        with self._exclusive():
            was = self.tracker.tracking
            self.tracker.track(None, "stop", f"{self.service_name} stopped tracking")
            self._stop_simulator()
        return {"stopped": str(was.data_dir) if was else None}

    def status(self, request: StatusRequest, ctx: RequestContext) -> dict:
        status = self.tracker.status()
        status["simulator"] = self.simulator.status() if self.simulator else None
        status["endpoints"] = self.endpoints()
        return status

    def endpoints(self) -> dict[str, str]:
        publisher = self.tracker.publisher
        return {
            "data": advertised_endpoint(publisher.data_endpoint, self.config.advertise_host),
            "preview": advertised_endpoint(publisher.preview_endpoint, self.config.advertise_host),
            "replay": advertised_endpoint(self.replays.endpoint, self.config.advertise_host),
        }

    def replay(self, request: ReplayRequest, ctx: RequestContext) -> dict:
        """Publish a past window from the PFF files on the replay socket (`Replay`)."""
        tracking = self.tracker.tracking
        if request.data_dir is None and tracking is None:
            raise InvalidRequest(f"{self.service_name} tracks no data dir: give data_dir (a data dir or an archived "
                                 "run dir) to replay from")
        data_dir = Path(request.data_dir) if request.data_dir else tracking.data_dir
        return Replay(self.service_name, request, ctx, data_dir, self.replays, self.tracker.seq_index,
                      self.config.max_batch_frames).run()

    def stream(self, request: StreamRequest, ctx: RequestContext) -> dict:
        """Where to subscribe; any `update_interval_seconds` is fine, as clients throttle their own copy."""
        tracked = self.tracker.module_ids()
        unknown = sorted(set(request.module_ids) - tracked)
        if unknown and self.tracker.tracking is not None:
            raise UnknownTarget(f"modules {unknown} are not tracked by {self.service_name}; tracked: {sorted(tracked)}")
        products = [dp for dp, product in DATA_PRODUCTS.items()
                    if (product.is_movie and request.stream_movie_data)
                    or (not product.is_movie and request.stream_pulse_height_data)]
        if request.module_ids:
            topics = [frame_topic(dp, m).decode() for dp in products for m in sorted(request.module_ids)]
        else:
            topics = [f"{dp}." for dp in products]
        socket_topics = [(SOCKET_TOPIC_PREFIX.decode() + t) for t in topics] if self.config.socket_hook else []
        interval = self.tracker.tracking.update_interval_s if self.tracker.tracking else None
        declaration = subscriber_topic(USER, ctx.request_id).decode()  # names this stream in `status` and inits
        return {"endpoints": self.endpoints(), "topics": topics + ["control.", declaration],
                "socket_topics": socket_topics,
                "tracking": self.tracker.tracking is not None, "preview_interval_seconds": interval}

    def beacon_state(self) -> dict:
        tracking = self.tracker.tracking
        modules = self.tracker.status()["modules"]
        return {
            "state": "tracking" if tracking else "idle",
            "data_dir": str(tracking.data_dir) if tracking else None,
            "endpoints": self.endpoints(),
            "streams": {f"{module_id}/{dp}": {key: stream[key] for key in _BEACON_STREAM_FIELDS}
                        for module_id, products in modules.items() for dp, stream in products.items()},
        }

    def metrics(self, families: Families) -> None:
        """The agent's Prometheus metrics, read from its status at a scrape."""
        tracking = self.tracker.tracking
        fill_agent(families, self.tracker.status(), tracking.origin if tracking else "file")

    def _release(self) -> None:
        self._stop_simulator()
