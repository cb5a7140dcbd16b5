"""The ZMQ frame stream: topics, the batch message format, and control messages.

A frame message is four parts `[topic, header_json, columns, image_bytes]` and carries n >= 1
consecutive frames of one stream (module and data product). `header_json` describes the stream and
lists the per-frame fields as `columns` (`[name, "<i8", per-frame shape]`); `columns` holds those
fields as little-endian arrays back to back, in that order: `frame_number`, `seq`,
`wr_timestamp_ns` (-1 where WR time is invalid), `host_timestamp_ns`, then every number of the PFF
header as `pff_header.<field>` (shape [4], one per quabo, for module images). `image_bytes` holds the
n images back to back, exactly as in the file. Binary columns cost no parsing at either end, however
many frames a message carries (JSON lists of the same numbers were the largest cost of the writer).

A control message is two parts `[b"control.", header_json]` with `kind = "control"` and an
`event`: `run_start`, `run_end`, `reinit`, `stop`.
"""

from __future__ import annotations

import math
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
_NOT_PER_FRAME = ("pff_header", "n_frames", "columns")
_PFF = "pff_header."
_COLUMN_DTYPE = "<i8"


SOCKET_TOPIC_PREFIX = b"socket."
"""Topics of frames from Hashpipe's socket hook begin with this: they are streams of their own."""


def frame_topic(dp: str, module_id: int, origin: str = "file") -> bytes:
    """Topic of a stream; a SUB prefix of `<dp>.` or `<dp>.<module:03d>.` selects exactly.

    Frames from the socket hook (origin "socket") carry their own `seq`, so they are another stream:
    `socket.<dp>.<module:03d>.`, which no file-frame prefix matches.
    """
    topic = f"{dp}.{module_id:03d}.".encode()
    return SOCKET_TOPIC_PREFIX + topic if origin == "socket" else topic


def file_topic_prefixes() -> list[bytes]:
    """SUB prefixes that select every file-frame stream and the control messages, but no socket frames."""
    return [f"{dp}.".encode() for dp in _DTYPES] + [CONTROL_TOPIC]


def parse_topic(topic: bytes | memoryview) -> tuple[str, int, str] | None:
    """`img16.001.` -> ("img16", 1, "file"); `socket.ph256.003.` -> ("ph256", 3, "socket"); None otherwise."""
    raw = bytes(topic)
    origin = "socket" if raw.startswith(SOCKET_TOPIC_PREFIX) else "file"
    fields = raw.removeprefix(SOCKET_TOPIC_PREFIX).split(b".")
    if len(fields) != 3 or fields[2] or not fields[1].isdigit():
        return None
    if fields[0].decode(errors="replace") not in _DTYPES:
        return None
    return fields[0].decode(), int(fields[1]), origin


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
    columns: list[tuple[str, str, list[int]]] = Field(
        description="Per-frame fields in the columns part: name, numpy dtype, shape per frame. frame_number "
        "(index in its file), seq (per stream, no gaps unless frames were lost), wr_timestamp_ns (White Rabbit "
        "Unix ns, -1 when invalid), host_timestamp_ns, pff_header.<field> ([4]: per quabo for images)."
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
        wr_timestamp_ns: -1 where WR time is invalid.
    """
    columns = {"frame_number": frame_number, "seq": seq, "wr_timestamp_ns": wr_timestamp_ns,
               "host_timestamp_ns": host_timestamp_ns,
               **{f"{_PFF}{name}": values for name, values in pff_fields.items()}}
    arrays = [np.ascontiguousarray(values, dtype=_COLUMN_DTYPE) for values in columns.values()]
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
        "columns": [[name, _COLUMN_DTYPE, list(a.shape[1:])] for name, a in zip(columns, arrays, strict=True)],
    }
    columns_part = b"".join(a.tobytes() for a in arrays)
    return [frame_topic(dp, module_id, origin), orjson.dumps(header), columns_part, image_bytes]


def encode_control(source: str, event: ControlEvent, message: str = "", **fields: Any) -> list[bytes]:
    """Encode a control message for the frame stream."""
    header = ControlHeader(source=source, event=event, message=message, **fields)
    return [CONTROL_TOPIC, header.model_dump_json().encode()]


@dataclass(frozen=True)
class FrameBatch:
    """n decoded frames of one stream.

    Attributes:
        header: the JSON header, plus the per-frame columns as arrays under `frame_number`, `seq`,
            `wr_timestamp_ns` (-1 invalid), `host_timestamp_ns` and `pff_header` (field arrays, per
            `quabo_<i>` sub-dict for module images, as in the PFF header).
        images: (n, H, W) pixels, a view of the message.
        pff_columns: PFF header numbers as (n,) or (n, 4) arrays.
    """

    header: dict[str, Any]
    images: np.ndarray
    pff_columns: dict[str, np.ndarray]

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
        return {
            key: {k: int(v[i]) for k, v in value.items()} if isinstance(value, dict) else int(value[i])
            for key, value in self.header["pff_header"].items()
        }

    def frame_fields(self, i: int) -> dict[str, Any]:
        """The per-frame header of frame `i`, as a one-frame message would carry it (WR time None if invalid)."""
        out = {k: v for k, v in self.header.items() if k not in _PER_FRAME and k not in _NOT_PER_FRAME}
        out.update({k: int(self.header[k][i]) for k in _PER_FRAME})
        if out["wr_timestamp_ns"] < 0:
            out["wr_timestamp_ns"] = None
        out["pff_header"] = self.pff_header(i)
        return out

    def tail(self, n: int = 1) -> FrameBatch:
        """The last n frames as a batch of their own."""
        cut = slice(len(self) - n, None)
        header = {**self.header, "n_frames": n, **{k: self.header[k][cut] for k in _PER_FRAME}}
        pff = {name: values[cut] for name, values in self.pff_columns.items()}
        header["pff_header"] = _pff_header(pff)
        return FrameBatch(header, self.images[cut], pff)


def _pff_header(pff: dict[str, np.ndarray]) -> dict[str, Any]:
    if pff and next(iter(pff.values())).ndim == 2:
        quabos = next(iter(pff.values())).shape[1]
        return {f"quabo_{q}": {name: values[:, q] for name, values in pff.items()} for q in range(quabos)}
    return dict(pff)


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
    if len(parts) != 4:
        raise InvalidMessage(f"frame message has {len(parts)} parts, expected 4")
    try:
        header = orjson.loads(parts[1])
        n = header["n_frames"]
        shape = tuple(header["shape"])
        dtype = np.dtype(header["dtype"])
        columns = [(name, kind, tuple(per_frame)) for name, kind, per_frame in header["columns"]]
        if any(kind != _COLUMN_DTYPE for _, kind, _ in columns):
            raise ValueError(f"columns must be {_COLUMN_DTYPE}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidMessage(f"bad frame header: {exc}") from exc
    counts = [n * math.prod(per_frame) for _, _, per_frame in columns]
    if 8 * sum(counts) != len(parts[2]):
        raise InvalidMessage(f"columns part has {len(parts[2])} bytes, expected {8 * sum(counts)} for {n} frames")
    expected = n * math.prod(shape) * dtype.itemsize
    if len(parts[3]) != expected:
        raise InvalidMessage(f"image part has {len(parts[3])} bytes, expected {expected} for {n} frames")
    flat = np.frombuffer(parts[2], dtype=_COLUMN_DTYPE)  # every column is int64: one view, sliced
    offset, pff = 0, {}
    for (name, _, per_frame), count in zip(columns, counts, strict=True):
        values = flat[offset : offset + count].reshape(n, *per_frame)
        offset += count
        if name.startswith(_PFF):
            pff[name.removeprefix(_PFF)] = values
        else:
            header[name] = values
    if any(k not in header for k in _PER_FRAME):
        raise InvalidMessage(f"frame message lacks a column of {', '.join(_PER_FRAME)}")
    header["pff_header"] = _pff_header(pff)
    images = np.frombuffer(parts[3], dtype=dtype).reshape(n, *shape)
    return FrameBatch(header, images, pff)
