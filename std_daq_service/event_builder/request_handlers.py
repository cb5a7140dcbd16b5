"""The event builder's answers to status and find_coincidences requests."""

from __future__ import annotations

from pathlib import Path

from std_daq_service.broker import Handler, RequestContext
from std_daq_service.config import EventBuilderConfig
from std_daq_service.event_builder.archive import ArchiveSearch, find_coincidences
from std_daq_service.event_builder.coincidence import MatchRules
from std_daq_service.event_builder.domes import domes_of_obs_config
from std_daq_service.event_builder.stream_receiver import StreamReceiver
from std_daq_service.protocol import FindCoincidencesRequest, InvalidRequest, StatusRequest, UnknownTarget


class EventBuilderHandlers:
    """Request handlers of one event builder."""

    def __init__(self, config: EventBuilderConfig, rules: MatchRules, receiver: StreamReceiver):
        self.config = config
        self.rules = rules
        self.receiver = receiver
        self.archive_root = Path(config.archive_root).resolve()

    def handlers(self) -> dict[str, Handler]:
        return {"status": self.status, "find_coincidences": self.find_coincidences}

    def status(self, request: StatusRequest, ctx: RequestContext) -> dict:
        return {**self.receiver.status(), "rules": {
            "coincidence_window_ns": self.rules.window_ns, "hit_window_ns": self.config.hit_window_ns,
            "min_modules": self.rules.min_modules, "min_domes": self.rules.min_domes,
            "domes": {str(m): d for m, d in sorted(self.rules.domes.items())},
            "time_offsets_ns": {str(m): o for m, o in sorted(self.config.time_offsets_ns.items())},
            "max_latency_ms": self.config.max_latency_ms}}

    def _run_dir(self, path: str) -> Path:
        run_dir = (self.archive_root / path).resolve()
        if not run_dir.is_relative_to(self.archive_root):
            raise InvalidRequest(f"path {path!r} lies outside the builder's archive_root {self.archive_root}")
        if not run_dir.is_dir():
            raise UnknownTarget(f"run directory {run_dir} does not exist")
        return run_dir

    def find_coincidences(self, request: FindCoincidencesRequest, ctx: RequestContext) -> dict:
        run_dir = self._run_dir(request.path)
        obs_config = run_dir / "obs_config.json"
        domes = {**(domes_of_obs_config(obs_config) if obs_config.exists() else {}), **self.rules.domes}
        rules = MatchRules(request.coincidence_window_ns or self.rules.window_ns, self.rules.min_modules,
                           self.rules.min_domes, domes)
        search = ArchiveSearch(rules, self.config.hit_window_ns, self.config.time_offsets_ns,
                               self.config.accidental_shift_ns, request.accidental_shifts, request.max_events)
        ctx.progress(f"reading the pulse-height files of {run_dir}", {}, force=True)
        return find_coincidences(run_dir, request.module_ids, search)

    def beacon_state(self) -> dict:
        return {"events_published": self.receiver.publisher.sent, "events_endpoint": self.receiver.publisher.endpoint}
