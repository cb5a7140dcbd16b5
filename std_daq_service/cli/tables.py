"""Tables (rich) of `std_daq status` answers and of `std_daq monitor`, for a terminal."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

from std_daq_service.protocol import Status

_MONITOR_ROWS = 20


def answer_table(value: Any, title: str | None = None) -> RenderableType:
    """A JSON-like answer as nested tables: a dict as key/value rows, a list of dicts as one row each."""
    if isinstance(value, dict):
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for key, item in value.items():
            table.add_row(str(key), answer_table(item))
        return table
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        columns = list(dict.fromkeys(key for item in value for key in item))
        table = Table(*columns, title=title, title_justify="left")
        for item in value:
            table.add_row(*(answer_table(item.get(column, "")) for column in columns))
        return table
    if isinstance(value, list):
        return ", ".join(json.dumps(item) if isinstance(item, dict | list) else str(item) for item in value)
    return "-" if value is None else str(value)


class MonitorView:
    """The live services and the latest status of the most recent requests."""

    def __init__(self) -> None:
        self.services: dict[str, list] = {}
        self.requests: dict[tuple[str, str], Status] = {}

    def add(self, status: Status) -> None:
        key = (status.request_id, status.source)
        self.requests.pop(key, None)  # re-inserted last: most recent first when shown
        self.requests[key] = status
        while len(self.requests) > _MONITOR_ROWS:
            del self.requests[next(iter(self.requests))]

    def render(self) -> RenderableType:
        services = Table("service", "running requests", title=f"{len(self.services)} live services",
                         title_justify="left")
        for name, running in self.services.items():
            services.add_row(name, str(len(running)))
        requests = Table("time", "request", "type", "source", "status", "message", title="recent requests",
                         title_justify="left")
        for status in reversed(self.requests.values()):
            requests.add_row(datetime.fromtimestamp(status.timestamp).strftime("%H:%M:%S"), status.request_id[:8],
                             (status.request or {}).get("request_type", "?"), status.source, status.action,
                             status.message or "")
        return Group(services, requests)
