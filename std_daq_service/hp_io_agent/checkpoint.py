"""What an agent tracks and how far it has published, kept in Redis so a restart goes on where it stopped.

`checkpoint.<SERVICE_NAME>` holds JSON: the tracking (data dir, modules, preview interval, origin), the
simulation request if the agent was simulating, and per stream the file, byte offset, frame count and next `seq`.
The tracker saves the streams' positions before it publishes the frames read up to them, so a restart never
publishes a frame twice; frames whose message was lost in the crash show as a gap in `seq`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from std_daq_service.config import redis_url
from std_daq_service.lifecycle import Lifecycle

log = logging.getLogger(__name__)

_TIMEOUT_S = 0.2


class Checkpoint(Lifecycle):
    """Save and load one agent's checkpoint; a Redis failure is logged and never blocks publishing long."""

    def __init__(self, url: str | None, service_name: str):
        self.url = url
        self.key = f"checkpoint.{service_name}"
        self.state: dict[str, Any] = {}
        self.error: str | None = None

    def _open(self) -> None:
        self.redis = redis.Redis.from_url(redis_url(self.url), socket_timeout=_TIMEOUT_S,
                                          socket_connect_timeout=_TIMEOUT_S, decode_responses=True)

    def _release(self) -> None:
        self.redis.close()

    def load(self) -> dict[str, Any]:
        """Read the checkpoint; empty when there is none or Redis cannot be read."""
        try:
            raw = self.redis.get(self.key)
        except redis.RedisError as exc:
            log.warning("cannot read the checkpoint %s: %s; starting afresh", self.key, exc)
            return {}
        self.state = json.loads(raw) if raw else {}
        return self.state

    def set_tracking(self, tracking: dict[str, Any] | None, simulation: dict[str, Any] | None = None) -> None:
        """A new tracking (None: stopped); stream positions start over."""
        self.state = {"tracking": tracking, "simulation": simulation, "streams": {}} if tracking else {}
        self._write()

    def save_streams(self, positions: dict[str, dict]) -> None:
        if not self.state:
            return
        self.state["streams"] = positions
        self._write()

    def _write(self) -> None:
        try:
            if self.state:
                self.redis.set(self.key, json.dumps(self.state))
            else:
                self.redis.delete(self.key)
            if self.error:
                log.info("checkpoint %s written again", self.key)
            self.error = None
        except redis.RedisError as exc:
            if self.error is None:
                log.warning("cannot write the checkpoint %s (%s); publishing goes on, a restart now may repeat "
                            "frames", self.key, exc)
            self.error = str(exc)

    def resume_positions(self) -> dict[tuple[int, str], dict]:
        """Stream positions by (module_id, dp); their files may be gone (a run moved away meanwhile)."""
        out = {}
        for key, position in (self.state.get("streams") or {}).items():
            module_id, dp = key.split("/")
            out[(int(module_id), dp)] = position
        return out
