"""`std_daq history`: the requests services received, from the audit trail in Redis."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from std_daq_service.broker import parse_time, read_history
from std_daq_service.config import connect_redis


def add_commands(commands) -> None:
    history = commands.add_parser(
        "history", help="requests services received: who sent them, when, and how they ended",
        description="Reads the audit trail (Redis stream audit.requests), newest first: one line per request "
        "and service. Times are Unix seconds or ISO 8601 (UTC unless a zone is given).",
    )
    history.add_argument("--service", help="only requests received by this SERVICE_NAME")
    history.add_argument("--type", dest="request_type", help="only this request_type (write, init_sim, ...)")
    history.add_argument("--since", help="received at or after this time")
    history.add_argument("--until", help="received at or before this time")
    history.add_argument("--limit", type=int, default=50, help="most requests shown (default 50)")
    history.add_argument("--json", action="store_true", help="the full records (request, statuses, result)")
    history.set_defaults(run=run_history)


def run_history(args) -> int:
    records = read_history(connect_redis(args.redis_url), args.service, args.request_type,
                           parse_time(args.since, "--since"), parse_time(args.until, "--until"), args.limit)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    for record in records:
        print(_line(record))
    if not records:
        print("no requests recorded for this selection")
    return 0


def _line(record: dict[str, Any]) -> str:
    """`2025-01-01 04:34:06  1.20 s  e3462e79  write  lick.daq1.writer  alice@host  request_success: write done`."""
    received = datetime.fromtimestamp(record["received"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    took = f"{record['ended'] - record['received']:6.2f} s" if record["ended"] else "   ...  "
    caller = record["caller"] or {}
    who = f"{caller.get('user') or '?'}@{caller.get('host') or '?'}"
    last = record["statuses"][-1] if record["statuses"] else {}
    return (f"{received}  {took}  {record['request_id'][:8]}  {record['request_type'] or '?':<11} "
            f"{record['service']}  {who}  {record['outcome']}: {last.get('message', '')}")
