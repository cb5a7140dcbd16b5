"""The protocol version carried by every request, status and frame message."""

PROTOCOL_VERSION = "2"
"""2: frame messages carry their per-frame fields as binary columns (a fourth part)."""
