"""The live page of the REST proxy (`/ui`): images and counts of every stream, services, requests, controls.

The page is served with its state embedded and then polls `/ui/state.json`; it reloads a stream's PNG only when
that stream has a new frame. Controls post to the proxy's own endpoints (with the token where one is set).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis
from flask import Blueprint, Flask, Response, redirect, render_template

from std_daq_service.broker import SharedCaller, read_history
from std_daq_service.config import RestConfig, live_services, service_kind
from std_daq_service.pff import DATA_PRODUCTS
from std_daq_service.rest import json_body
from std_daq_service.rest.frame_png import COLOUR_MAP, PngCache
from std_daq_service.rest.preview_feed import PH_WINDOWS_S, PreviewFeed

STALE_AFTER_S = 5.0
"""A beacon older than this (it is refreshed every 2 s, and expires after 6 s) marks its service stale."""
FORGET_DOWN_AFTER_S = 600.0
"""A service that is down this long leaves the page (unless the config names it)."""
HISTORY_ROWS = 15
REFRESH_SECONDS = 1.0


class LivePage:
    """The state the page shows, from the beacons in Redis, the preview feed and the audit trail."""

    def __init__(self, service_name: str, config: RestConfig, caller: SharedCaller, redis_client: redis.Redis,
                 feed: PreviewFeed):
        self.service_name = service_name
        self.config = config
        self.caller = caller
        self.redis = redis_client
        self.feed = feed
        self.pngs = PngCache()
        self._seen: dict[str, float] = {}  # SERVICE_NAME -> last time its beacon was seen

    @property
    def configured(self) -> set[str]:
        return {*self.config.agents, *self.config.writers, self.service_name}

    def services(self, now: float) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """Every service of the page as live, stale or down, and the beacons of those that have one."""
        configured = self.configured
        only_configured = bool(self.config.agents or self.config.writers)
        beacons = {name: beacon for name, beacon in live_services(self.redis).items()
                   if not only_configured or name in configured}
        for name in beacons:
            self._seen[name] = now
        for name, seen in list(self._seen.items()):
            if name not in beacons and now - seen > FORGET_DOWN_AFTER_S and name not in configured:
                del self._seen[name]
        rows = []
        for name in sorted(set(self._seen) | (configured if only_configured else set())):
            beacon = beacons.get(name)
            age = now - float(beacon.get("heartbeat_timestamp", 0)) if beacon else None
            state = "down" if beacon is None else "live" if age is not None and age <= STALE_AFTER_S else "stale"
            rows.append({"name": name, "kind": service_kind(name), "state": state,
                         "beacon_age_seconds": None if age is None else round(age, 1),
                         "host": beacon.get("host") if beacon else None,
                         "version": beacon.get("version") if beacon else None,
                         "agent_state": beacon.get("state") if beacon else None,
                         "broker_connected": beacon.get("broker_connected") if beacon else None})
        return rows, beacons

    def running(self, beacons: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Requests the services run now, with the message and result of their latest status."""
        rows = []
        for name, beacon in beacons.items():
            for entry in beacon.get("running_requests") or []:
                history = self.caller.history(entry["request_id"]) or []
                latest = history[-1] if history else None
                rows.append({"service": name, **entry, "message": latest.message if latest else "",
                             "progress": latest.result if latest and latest.action == "request_progress" else None,
                             "started": history[0].timestamp if history else None})
        return rows

    def history(self) -> list[dict[str, Any]]:
        configured = self.configured if self.config.agents or self.config.writers else None
        records = read_history(self.redis, limit=HISTORY_ROWS * 4 if configured else HISTORY_ROWS)
        rows = [r for r in records if configured is None or r["service"] in configured][:HISTORY_ROWS]
        return [{key: r[key] for key in ("request_id", "service", "request_type", "caller", "received", "outcome",
                                         "ended")} | {"message": r["statuses"][-1]["message"] if r["statuses"] else ""}
                for r in rows]

    def state(self) -> dict[str, Any]:
        now = time.time()
        services, beacons = self.services(now)
        states = {row["name"]: row["state"] for row in services}
        streams = []
        for stream in self.feed.summaries():
            agent = stream["agent"]
            stats = ((beacons.get(agent) or {}).get("streams") or {}).get(f"{stream['module_id']}/{stream['dp']}")
            streams.append({**stream, "agent_state": states.get(agent, "down"), "stats": stats})
        return {"service": self.service_name, "time": now, "services": services, "streams": streams,
                "running": self.running(beacons), "history": self.history(),
                "broker_connected": self.caller.connected.is_set(), "token_required": bool(self.config.token),
                "agents": sorted(name for name in beacons if service_kind(name) == "hp_io_agent"),
                "writers": sorted(name for name in beacons if service_kind(name) == "writer")}

    def png(self, agent: str, module_id: int, dp: str) -> bytes | None:
        snapshot = self.feed.snapshot(agent, module_id, dp)
        if snapshot is None:
            return None
        image, seq, limits = snapshot
        return self.pngs.get((agent, module_id, dp), seq, image, limits)


def add_live_page(app: Flask, page: LivePage) -> None:
    """Serve the page at `/ui` (and `/`), its state, its images and its script and style sheet."""
    blueprint = Blueprint("live", __name__, static_folder="static", static_url_path="/ui/static",
                          template_folder="templates")

    def json_answer(payload: dict[str, Any]) -> Response:
        return Response(json_body.dumps(payload, orjson.OPT_SERIALIZE_NUMPY),
                        mimetype="application/json", headers={"Cache-Control": "no-store"})

    @blueprint.get("/")
    def root():
        return redirect("/ui")

    @blueprint.get("/ui")
    def ui():
        state = json_body.dumps(page.state(), orjson.OPT_SERIALIZE_NUMPY).decode()
        return render_template("live.html", state=state, service=page.service_name, refresh=REFRESH_SECONDS,
                               windows=PH_WINDOWS_S, colours=[f"rgb({r},{g},{b})" for r, g, b in COLOUR_MAP[::32]])

    @blueprint.get("/ui/state.json")
    def state():
        return json_answer({"status": "ok", **page.state()})

    @blueprint.get("/ui/image/<agent>/<int:module_id>/<dp>.png")
    def image(agent: str, module_id: int, dp: str):
        png = page.png(agent, module_id, dp) if dp in DATA_PRODUCTS else None
        if png is None:
            return Response(json_body.dumps({"status": "error", "message": f"no frame of {agent} {module_id} {dp}"}),
                            status=404, mimetype="application/json")
        return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})

    app.register_blueprint(blueprint)
