"""Parsers of command-line values shared by several `std_daq` commands."""

from __future__ import annotations

from std_daq_service.protocol import InvalidRequest


def module_ids(text: str | None) -> list[int]:
    """The ids of `--module-ids 1,3,5`; empty (all modules) when not given."""
    if not text:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidRequest(f"--module-ids takes comma-separated integers, got {text!r}") from None
