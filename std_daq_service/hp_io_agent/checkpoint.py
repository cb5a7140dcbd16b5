"""What an agent tracks and how far it may have published, kept in Redis so a restart goes on where it stopped.

`checkpoint.<SERVICE_NAME>` holds JSON: the tracking (data dir, modules, preview interval, origin), the
simulation request if the agent was simulating, and per stream the file, byte offset, frame count and next `seq`
of a read position, plus `publish_from_seq`: the horizon. The tracker publishes a frame only once a checkpoint whose
horizon lies beyond the frame's `seq` is stored (write ahead), and asks for the next one before the horizon is
reached, so few writes cover many frames. A restarted agent reads on from the stored position and publishes only
frames from the horizon on: no frame is published twice; frames below the horizon that the old process had not
published show as a `seq` gap (`frames_skipped_at_resume`). A clean stop stores the exact position and horizon.
Writes run in a thread of their own: the tracking loop never waits for Redis.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

from std_daq_service.config import redis_url
from std_daq_service.lifecycle import BackgroundThread, Lifecycle

log = logging.getLogger(__name__)

_TIMEOUT_S = 2.0
"""Longest wait for one Redis reply; in the writer thread only, so it delays no frame by itself."""


class Checkpoint(Lifecycle):
    """Load one agent's checkpoint and store it from a writer thread; `start()` connects and starts the thread.

    `confirmed` holds the horizons (by `module/dp`) of the last stored checkpoint; None while writes fail:
    publishing then goes on without a bound, a restart may repeat frames, and `error` and `failures` say so.
    """

    def __init__(self, url: str | None, service_name: str, notify: Callable[[], None] | None = None):
        self.url = url
        self.key = f"checkpoint.{service_name}"
        self.notify = notify
        self.state: dict[str, Any] = {}
        self.error: str | None = None
        self.writes = 0
        self.failures = 0
        self.confirmed: dict[str, int] | None = {}
        self._pending: tuple[str | None, dict[str, int], int] | None = None
        self._writing = False
        self._generation = 0
        self._cond = threading.Condition()
        self._writer = BackgroundThread("checkpoint", self._run, wake=self._wake)

    def _open(self) -> None:
        self.redis = redis.Redis.from_url(redis_url(self.url), socket_timeout=_TIMEOUT_S,
                                          socket_connect_timeout=_TIMEOUT_S, decode_responses=True)
        self._writer.start()

    def _release(self) -> None:
        self._writer.close()
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
        with self._cond:
            self._generation += 1  # a write of the old tracking in flight confirms nothing any more
            self.confirmed = {}
        self._submit({})

    def save_streams(self, positions: dict[str, dict]) -> None:
        """Store these positions (each with its `publish_from_seq` horizon) as soon as the writer can."""
        if not self.state:
            return
        self.state["streams"] = positions
        self._submit({key: position["publish_from_seq"] for key, position in positions.items()})

    @property
    def busy(self) -> bool:
        """A checkpoint is waiting to be stored or being stored."""
        return self._pending is not None or self._writing

    def flush(self, timeout_s: float) -> bool:
        """Wait until what was submitted is stored (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self.busy, timeout_s)

    def _submit(self, horizons: dict[str, int]) -> None:
        with self._cond:
            self._pending = (json.dumps(self.state) if self.state else None, horizons, self._generation)
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self, stop: threading.Event) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or stop.is_set())
                if self._pending is None:
                    return
                (text, horizons, generation), self._pending = self._pending, None
                self._writing = True
            stored = self._write(text)
            with self._cond:
                if generation == self._generation:
                    self.confirmed = horizons if stored else None
                self._writing = False
                self._cond.notify_all()
            if self.notify is not None:
                self.notify()

    def _write(self, text: str | None) -> bool:
        try:
            if text is not None:
                self.redis.set(self.key, text)
            else:
                self.redis.delete(self.key)
            self.writes += 1
            if self.error:
                log.info("checkpoint %s written again", self.key)
            self.error = None
            return True
        except redis.RedisError as exc:
            self.failures += 1
            if self.error is None:
                log.warning("cannot write the checkpoint %s (%s, after %d s at most); publishing goes on without "
                            "it, a restart now may repeat frames", self.key, exc, _TIMEOUT_S)
            self.error = str(exc)
            return False

    def resume_positions(self) -> dict[tuple[int, str], dict]:
        """Stream positions by (module_id, dp); their files may be gone (a run moved away meanwhile)."""
        out = {}
        for key, position in (self.state.get("streams") or {}).items():
            module_id, dp = key.split("/")
            out[(int(module_id), dp)] = position
        return out
