"""The protocol version carried by every request, status and frame message."""

PROTOCOL_VERSION = "1"
