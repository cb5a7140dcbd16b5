"""The ZMQ frame stream: topics, the batch message format, and control messages.

A frame message is three parts `[topic, header_json, image_bytes]` and carries n >= 1
consecutive frames of one stream (module and data product). Fields that vary per frame
(`frame_number`, `seq`, `wr_timestamp_ns`, `host_timestamp_ns`, and every number of the PFF
header under `pff_header`) are lists of n values, so a block of frames is encoded without a
per-frame Python loop. `image_bytes` holds the n images back to back, exactly as in the file.

A control message is two parts `[b"control.", header_json]` with `kind = "control"` and an
`event`: `run_start`, `run_end`, `reinit`, `stop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, Field

from std_daq_service.protocol.errors import InvalidMessage
from std_daq_service.protocol.version import PROTOCOL_VERSION

CONTROL_TOPIC = b"control."
ControlEvent = Literal["run_start", "run_end", "reinit", "stop"]
_DTYPES = {"img16": "<u2", "img8": "|u1", "ph256": "<i2", "ph1024": "<i2"}
_PER_FRAME = ("frame_number", "seq", "wr_timestamp_ns", "host_timestamp_ns")


def frame_topic(dp: str, module_id: int) -> bytes:
    """Topic of a stream; a SUB prefix of `<dp>.` or `<dp>.<module:03d>.` selects exactly."""
    return f"{dp}.{module_id:03d}.".encode()


class FrameBatchHeader(BaseModel):
    """JSON header of a frame message (documentation of the wire format; decoded without pydantic)."""

    kind: Literal["frames"] = "frames"
    protocol_version: str = PROTOCOL_VERSION
    source: str = Field(description="SERVICE_NAME of the publishing agent.")
    origin: Literal["file", "socket", "simulator"] = Field(description="Where the frames were read.")
    module_id: int
    dp: str
    shape: list[int]
    bytes_per_pixel: int
    dtype: str = Field(description="numpy dtype string of the pixels, little-endian.")
    run: str | None = Field(description="obs_* run directory name.")
    file: str | None = Field(description="PFF file name the frames were read from.")
    seqno: int | None
    n_frames: int
    frame_number: list[int] = Field(description="Index of each frame in its file.")
    seq: list[int] = Field(description="Per-stream counter without gaps unless frames were lost.")
    wr_timestamp_ns: list[int | None] = Field(description="White Rabbit Unix ns, null when invalid.")
    host_timestamp_ns: list[int]
    pff_header: dict[str, Any] = Field(
        description="PFF header numbers, one list per field (per quabo_<i> sub-object for images)."
    )


class ControlHeader(BaseModel):
    """JSON header of a control message on the frame stream."""

    kind: Literal["control"] = "control"
    protocol_version: str = PROTOCOL_VERSION
    source: str
    event: ControlEvent
    message: str = ""
    run: str | None = None
    module_id: int | None = None


def encode_frames(
    *,
    source: str,
    origin: str,
    module_id: int,
    dp: str,
    shape: tuple[int, int],
    run: str | None,
    file: str | None,
    seqno: int | None,
    frame_number: np.ndarray,
    seq: np.ndarray,
    wr_timestamp_ns: np.ndarray,
    host_timestamp_ns: np.ndarray,
    pff_fields: dict[str, np.ndarray],
    image_bytes: bytes,
) -> list[bytes]:
    """Encode n frames of one stream as a multipart message.

    Args:
        pff_fields: header numbers, arrays of shape (n,) or (n, 4) for module images.
        wr_timestamp_ns: -1 where WR time is invalid (sent as null).
    """
    if np.ndim(pff_fields.get("tv_sec")) == 2:
        pff_header = {
            f"quabo_{q}": {name: np.ascontiguousarray(values[:, q]) for name, values in pff_fields.items()}
            for q in range(next(iter(pff_fields.values())).shape[1])
        }
    else:
        pff_header = pff_fields
    wr = wr_timestamp_ns.tolist()
    if -1 in wr:
        wr = [None if t < 0 else t for t in wr]
    header = {
        "kind": "frames",
        "protocol_version": PROTOCOL_VERSION,
        "source": source,
        "origin": origin,
        "module_id": module_id,
        "dp": dp,
        "shape": list(shape),
        "bytes_per_pixel": np.dtype(_DTYPES[dp]).itemsize,
        "dtype": _DTYPES[dp],
        "run": run,
        "file": file,
        "seqno": seqno,
        "n_frames": len(frame_number),
        "frame_number": frame_number,
        "seq": seq,
        "wr_timestamp_ns": wr,
        "host_timestamp_ns": host_timestamp_ns,
        "pff_header": pff_header,
    }
    return [frame_topic(dp, module_id), orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY), image_bytes]


def encode_control(source: str, event: ControlEvent, message: str = "", **fields: Any) -> list[bytes]:
    """Encode a control message for the frame stream."""
    header = ControlHeader(source=source, event=event, message=message, **fields)
    return [CONTROL_TOPIC, header.model_dump_json().encode()]


@dataclass(frozen=True)
class FrameBatch:
    """n decoded frames of one stream; `images` has shape (n, H, W)."""

    header: dict[str, Any]
    images: np.ndarray

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def module_id(self) -> int:
        return self.header["module_id"]

    @property
    def dp(self) -> str:
        return self.header["dp"]

    def pff_header(self, i: int) -> dict[str, Any]:
        """The PFF header of frame `i` in its original shape (quabo_<i> sub-objects for images)."""
        fields = self.header["pff_header"]
        return {
            key: {k: v[i] for k, v in value.items()} if isinstance(value, dict) else value[i]
            for key, value in fields.items()
        }

    def frame_fields(self, i: int) -> dict[str, Any]:
        """The per-frame header of frame `i`, as a one-frame message would carry it."""
        out = {k: v for k, v in self.header.items() if k not in _PER_FRAME and k not in ("pff_header", "n_frames")}
        out.update({k: self.header[k][i] for k in _PER_FRAME})
        out["pff_header"] = self.pff_header(i)
        return out


def decode_stream_message(parts: Sequence[bytes | memoryview]) -> FrameBatch | ControlHeader:
    """Decode one multipart message from an agent's stream (bytes, or zero-copy buffers of zmq frames).

    Raises:
        InvalidMessage: the message does not follow the wire format.
    """
    if len(parts) == 2 and parts[0] == CONTROL_TOPIC:
        try:
            return ControlHeader.model_validate_json(bytes(parts[1]))
        except ValueError as exc:
            raise InvalidMessage(f"bad control message: {exc}") from exc
    if len(parts) != 3:
        raise InvalidMessage(f"frame message has {len(parts)} parts, expected 3")
    try:
        header = orjson.loads(parts[1])
        n = header["n_frames"]
        shape = tuple(header["shape"])
        dtype = np.dtype(header["dtype"])
        if any(len(header[k]) != n for k in _PER_FRAME):
            raise InvalidMessage("per-frame field lengths differ from n_frames")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidMessage(f"bad frame header: {exc}") from exc
    expected = n * int(np.prod(shape)) * dtype.itemsize
    if len(parts[2]) != expected:
        raise InvalidMessage(f"image part has {len(parts[2])} bytes, expected {expected} for {n} frames")
    images = np.frombuffer(parts[2], dtype=dtype).reshape(n, *shape)
    return FrameBatch(header, images)
