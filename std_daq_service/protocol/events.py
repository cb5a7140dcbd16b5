"""Coincidence events on the event builder's ZMQ PUB socket: the message format, encode and decode.

An event message is three parts `[b"event.", header_json, image_bytes]`. `header_json` (schema:
`EventHeader`) gives the event time, the window, and the member frames (module, quabo, seq, WR time,
pixel max and sum); `image_bytes` holds the members' images back to back in member order, each exactly
as in its PFF file (ph256: 16x16 int16, ph1024: 32x32 int16, little-endian).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from std_daq_service.pff import DATA_PRODUCTS
from std_daq_service.protocol.errors import InvalidMessage
from std_daq_service.protocol.version import PROTOCOL_VERSION

EVENT_TOPIC = b"event."


class EventMember(BaseModel):
    """One frame of a coincidence event."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="SERVICE_NAME of the agent that published the frame.")
    module_id: int
    dp: str = Field(description="ph256 or ph1024.")
    quabo: int = Field(description="The ph256 frame's quabo_num; -1 for ph1024 (the whole module).")
    seq: int = Field(description="The frame's seq in its agent's stream.")
    wr_timestamp_ns: int = Field(description="White Rabbit time, Unix ns.")
    time_ns: int = Field(description="WR time minus the module's configured delay (time_offsets_ns): matched on.")
    pixel_max: int
    pixel_sum: int


class EventHeader(BaseModel):
    """JSON header of an event message."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["event"] = "event"
    protocol_version: str = PROTOCOL_VERSION
    source: str = Field(description="SERVICE_NAME of the event builder.")
    event_id: int = Field(description="Counts the builder's events from 0 since its start.")
    time_ns: int = Field(description="Earliest member time_ns (the anchor of the window).")
    window_ns: int = Field(description="Members lie within [time_ns, time_ns + window_ns].")
    multiplicity: int = Field(description="Distinct modules among the members.")
    modules: list[int]
    domes: list[str] = Field(description="Distinct known domes of the member modules.")
    members: list[EventMember] = Field(
        description="Hit by hit in order of hit time (a hit's frames in time order); images follow in this order.")


@dataclass(frozen=True)
class CoincidenceEvent:
    """A decoded event: its header and one image per member (int16 views of the message)."""

    header: EventHeader
    images: list[np.ndarray]


def encode_event(header: dict, images: Sequence[bytes | np.ndarray]) -> list[bytes]:
    """Encode an event from a header dict (the `EventHeader` fields) and its member images in order."""
    image_bytes = b"".join(image if isinstance(image, bytes) else np.ascontiguousarray(image).tobytes()
                           for image in images)
    return [EVENT_TOPIC, orjson.dumps({"kind": "event", "protocol_version": PROTOCOL_VERSION, **header}),
            image_bytes]


def decode_event(parts: Sequence[bytes | memoryview]) -> CoincidenceEvent:
    """Decode an event message.

    Raises:
        InvalidMessage: not an event message, or its images do not match its members.
    """
    if len(parts) != 3 or bytes(parts[0]) != EVENT_TOPIC:
        raise InvalidMessage(f"an event message has 3 parts and topic {EVENT_TOPIC!r}")
    try:
        header = EventHeader.model_validate_json(bytes(parts[1]))
        products = [DATA_PRODUCTS[member.dp] for member in header.members]
    except (ValidationError, KeyError) as exc:
        raise InvalidMessage(f"bad event header: {exc}") from exc
    expected = sum(product.image_size for product in products)
    if len(parts[2]) != expected:
        raise InvalidMessage(f"event image part has {len(parts[2])} bytes, expected {expected}")
    images, offset = [], 0
    for product in products:
        images.append(np.frombuffer(parts[2], dtype=product.dtype, count=product.shape[0] * product.shape[1],
                                    offset=offset).reshape(product.shape))
        offset += product.image_size
    return CoincidenceEvent(header, images)
