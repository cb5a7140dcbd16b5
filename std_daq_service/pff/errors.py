"""The one error type of the PFF library."""

from __future__ import annotations


class PffError(ValueError):
    """A file or name that does not follow the PFF format; the message says where and why."""
