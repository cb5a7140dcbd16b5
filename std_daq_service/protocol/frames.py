"""The ZMQ frame stream: topics, the batch message format, control messages, and the time of a frame.

This module alone knows the wire format. A frame message is four parts `[topic, header_json, columns,
image_bytes]` and carries n >= 1 consecutive frames of one stream (module and data product). `header_json`
(schema: `FrameBatchHeader`) describes the stream and lists the per-frame fields as `columns`
(`[name, "<i8", per-frame shape]`); `columns` holds those fields as little-endian arrays back to back, in that
order: `PER_FRAME_COLUMNS` (`frame_number`, `seq`, `wr_timestamp_ns` (-1 where WR time is invalid),
`host_timestamp_ns`), then every number of the PFF header as `pff_header.<field>` (shape [4], one per quabo,
for module images). `image_bytes` holds the n images back to back, exactly as in the file. Binary columns
cost no parsing at either end, however many frames a message carries.

A control message is two parts `[b"control.", header_json]` (schema: `ControlHeader`) with an `event`:
`run_start`, `run_end`, `reinit`, `stop`, and `replay_end` (the last message of a replay).

Replayed frames (an agent's `replay` request, published on its replay socket) travel in the same format on the
same topics, with `origin: "replay"` and the replay request's id as `replay_id` in the header (a key that live
frames do not carry).

Receivers that route messages before decoding them use `peek`; `decode_stream_message` gives a `FrameBatch`
or a `ControlHeader`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Literal

import numpy as np
import orjson
import zmq
from pydantic import BaseModel, ConfigDict, Field

from std_daq_service.pff import DATA_PRODUCTS, WR_INVALID
from std_daq_service.protocol.errors import InvalidMessage
from std_daq_service.protocol.version import PROTOCOL_VERSION

CONTROL_TOPIC = b"control."
TopicOrigin = Literal["file", "socket"]
"""Which stream family a topic names: file frames (also simulated ones) or the socket hook's snapshots."""

SOCKET_TOPIC_PREFIX = b"socket."
"""Topics of frames from Hashpipe's socket hook begin with this: they are streams of their own."""
SUBSCRIBER_TOPIC_PREFIX = b"subscriber."
"""A subscriber says who it is by subscribing `subscriber.<kind>.<name>.`: nothing is ever published there.

Kind `user` is a stream a client opened (the agent hands it out with the `stream` answer); any other kind
(`writer`, later `event_builder`) is infrastructure, which the agent's inits do not wait for.
"""
ControlEvent = Literal["run_start", "run_end", "reinit", "stop", "replay_end"]
MAX_STREAM_MESSAGE_BYTES = 64 << 20
"""Largest message part a stream subscriber accepts (`zmq.MAXMSGSIZE`): a peer sending more is disconnected, so an
untrusted or broken one cannot exhaust memory. An agent's biggest part, `max_batch_frames` (at most 10 000) frames of
2 KiB images, or their header columns, stays below a third of it."""
PER_FRAME_COLUMNS = ("frame_number", "seq", "wr_timestamp_ns", "host_timestamp_ns")
"""The columns every frame message carries first, in this order; the PFF header columns follow."""
PFF_COLUMN_PREFIX = "pff_header."
COLUMN_DTYPE = "<i8"
_COLUMN_DTYPE = np.dtype(COLUMN_DTYPE)
_FRAME_PARTS = 4  # topic, header, columns, images
_COLUMNS_PART = 2
_IMAGES_PART = 3


def stream_subscriber(context: zmq.Context) -> zmq.Socket:
    """A SUB socket for the frame stream whose message parts are bounded by `MAX_STREAM_MESSAGE_BYTES`."""
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_STREAM_MESSAGE_BYTES)
    return sock


def frame_time_ns(wr_timestamp_ns: Any, host_timestamp_ns: Any) -> Any:
    """The time of frames in Unix ns: White Rabbit time where it is valid, else the host's receive time.

    WR time is invalid where it is negative (`WR_INVALID`, written when WR and host clocks disagree) or None
    (a single frame's header). Works on scalars and on arrays alike: a batch's columns, or the
    `wr_timestamp_ns` and `host_timestamp_ns` datasets of a recorded HDF5 file.

    Returns:
        An int for scalar input, else an int64 array.
    """
    wr = np.asarray(WR_INVALID if wr_timestamp_ns is None else wr_timestamp_ns, dtype=np.int64)
    times = np.where(wr >= 0, wr, np.asarray(host_timestamp_ns, dtype=np.int64))
    return int(times) if times.ndim == 0 else times


@lru_cache(maxsize=1024)
def frame_topic(dp: str, module_id: int, origin: str = "file") -> bytes:
    """Topic of a stream; a SUB prefix of `<dp>.` or `<dp>.<module:03d>.` selects exactly.

    Frames from the socket hook (origin "socket") carry their own `seq`, so they are another stream:
    `socket.<dp>.<module:03d>.`, which no file-frame prefix matches.
    """
    topic = f"{dp}.{module_id:03d}.".encode()
    return SOCKET_TOPIC_PREFIX + topic if origin == "socket" else topic


def file_topic_prefixes() -> list[bytes]:
    """SUB prefixes that select every file-frame stream and the control messages, but no socket frames."""
    return [f"{dp}.".encode() for dp in DATA_PRODUCTS] + [CONTROL_TOPIC]


def subscriber_topic(kind: str, name: str) -> bytes:
    """`("writer", "lick.daq1.writer")` -> `subscriber.writer.lick.daq1.writer.`."""
    return SUBSCRIBER_TOPIC_PREFIX + f"{kind}.{name}.".encode()


def parse_subscriber_topic(topic: bytes) -> tuple[str, str] | None:
    """`subscriber.writer.lick.daq1.writer.` -> ("writer", "lick.daq1.writer"); None for any other topic."""
    if not topic.startswith(SUBSCRIBER_TOPIC_PREFIX) or not topic.endswith(b"."):
        return None
    kind, _, name = topic[len(SUBSCRIBER_TOPIC_PREFIX) : -1].decode(errors="replace").partition(".")
    return (kind, name) if kind and name else None


def parse_topic(topic: bytes | memoryview) -> tuple[str, int, TopicOrigin] | None:
    """`img16.001.` -> ("img16", 1, "file"); `socket.ph256.003.` -> ("ph256", 3, "socket"); None otherwise."""
    raw = bytes(topic)
    origin: TopicOrigin = "socket" if raw.startswith(SOCKET_TOPIC_PREFIX) else "file"
    fields = raw.removeprefix(SOCKET_TOPIC_PREFIX).split(b".")
    if len(fields) != 3 or fields[2] or not fields[1].isdigit():
        return None
    if fields[0].decode(errors="replace") not in DATA_PRODUCTS:
        return None
    return fields[0].decode(), int(fields[1]), origin


class FrameBatchHeader(BaseModel):
    """JSON header of a frame message (the documented schema; a unit test checks `encode_frames` against it)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["frames"] = "frames"
    protocol_version: str = PROTOCOL_VERSION
    source: str = Field(description="SERVICE_NAME of the publishing agent.")
    origin: Literal["file", "socket", "simulator", "replay"] = Field(
        description="Where the frames were read: live from files (or the simulator's), from the socket hook, or "
        "from the files again by a replay request."
    )
    replay_id: str | None = Field(
        None, description="Replayed frames only: the id of the replay request that published them."
    )
    module_id: int
    dp: str = Field(description="Data product: one of pff.DATA_PRODUCTS.")
    shape: list[int] = Field(description="Image height and width, those of the data product.")
    bytes_per_pixel: int
    dtype: str = Field(description="numpy dtype string of the pixels (the data product's), little-endian.")
    run: str | None = Field(description="obs_* run directory name.")
    file: str | None = Field(description="PFF file name the frames were read from.")
    seqno: int | None
    n_frames: int
    columns: list[tuple[str, Literal["<i8"], list[int]]] = Field(
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
    replay_id: str | None = Field(None, description="replay_end only: the replay request it ends.")
    result: dict[str, Any] | None = Field(None, description="replay_end only: what the replay published.")


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
    replay_id: str | None = None,
) -> list[bytes]:
    """Encode n frames of one stream as a multipart message.

    Args:
        pff_fields: header numbers, arrays of shape (n,) or (n, 4) for module images.
        wr_timestamp_ns: -1 where WR time is invalid.
        replay_id: the replay request of replayed frames (origin "replay"); live frames carry no such key.
    """
    columns = dict(zip(PER_FRAME_COLUMNS, (frame_number, seq, wr_timestamp_ns, host_timestamp_ns), strict=True))
    columns.update({f"{PFF_COLUMN_PREFIX}{name}": values for name, values in pff_fields.items()})
    arrays = [values if type(values) is np.ndarray and values.dtype is _COLUMN_DTYPE  # (tobytes: C order)
              else np.ascontiguousarray(values, dtype=COLUMN_DTYPE) for values in columns.values()]
    pixels = DATA_PRODUCTS[dp].dtype
    header = {
        "kind": "frames",
        "protocol_version": PROTOCOL_VERSION,
        "source": source,
        "origin": origin,
        "module_id": module_id,
        "dp": dp,
        "shape": list(shape),
        "bytes_per_pixel": pixels.itemsize,
        "dtype": pixels.str,
        "run": run,
        "file": file,
        "seqno": seqno,
        "n_frames": len(frame_number),
        "columns": [(name, COLUMN_DTYPE, a.shape[1:]) for name, a in zip(columns, arrays, strict=True)],
    }
    if replay_id is not None:
        header["replay_id"] = replay_id
    columns_part = b"".join(a.tobytes() for a in arrays)
    return [frame_topic(dp, module_id, origin), orjson.dumps(header), columns_part, image_bytes]


def encode_control(source: str, event: ControlEvent, message: str = "", **fields: Any) -> list[bytes]:
    """Encode a control message for the frame stream."""
    header = ControlHeader(source=source, event=event, message=message, **fields)
    replay_fields = {"replay_id", "result"} if header.replay_id is None else set()  # live bytes as before
    return [CONTROL_TOPIC, header.model_dump_json(exclude=replay_fields).encode()]


@dataclass(frozen=True)
class Peek:
    """What a message is, read from its topic and part lengths without decoding it.

    Attributes:
        kind: "frames" or "control"; the other fields describe frames only.
        origin: "socket" for the socket hook's streams, else "file" (simulated and replayed frames travel as file
            frames: the header tells them apart).
        n_frames: from the length of the image part.
    """

    kind: Literal["frames", "control"]
    dp: str = ""
    module_id: int = -1
    origin: TopicOrigin = "file"
    n_frames: int = 0


def peek(parts: Sequence[bytes | memoryview]) -> Peek:
    """Route a message without decoding it: control, or the stream and frame count of a frame message.

    Raises:
        InvalidMessage: neither a control message nor a frame message of a known stream holding whole images.
    """
    if len(parts) == 2 and parts[0] == CONTROL_TOPIC:
        return Peek("control")
    stream = parse_topic(parts[0]) if len(parts) == _FRAME_PARTS else None
    if stream is None:
        topic = bytes(parts[0][:40]) if parts else b""
        raise InvalidMessage(f"message with {len(parts)} parts and topic {topic!r} is no frame or control message")
    dp, module_id, origin = stream
    n_frames, rest = divmod(len(parts[_IMAGES_PART]), DATA_PRODUCTS[dp].image_size)
    if rest:
        raise InvalidMessage(f"image part of {len(parts[_IMAGES_PART])} bytes holds no whole number of {dp} images")
    return Peek("frames", dp, module_id, origin, n_frames)


@dataclass(frozen=True, eq=False)
class FrameBatch:
    """n decoded frames of one stream: the stream's fields, per-frame columns and images (views of the message).

    Attributes:
        frame_number: per frame, its index in its file.
        seq: per frame, its number in the stream (no gaps unless frames were lost).
        wr_timestamp_ns: per frame, White Rabbit time in Unix ns, -1 where invalid.
        host_timestamp_ns: per frame, the host's receive time in Unix ns.
        pff_columns: the PFF header numbers, (n,) per field, or (n, 4) per quabo for module images.
        images: (n, H, W) pixels.
    """

    source: str
    origin: str
    module_id: int
    dp: str
    run: str | None
    file: str | None
    seqno: int | None
    frame_number: np.ndarray
    seq: np.ndarray
    wr_timestamp_ns: np.ndarray
    host_timestamp_ns: np.ndarray
    pff_columns: dict[str, np.ndarray]
    images: np.ndarray
    protocol_version: str = PROTOCOL_VERSION
    replay_id: str | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.images.shape[1:]

    @property
    def bytes_per_pixel(self) -> int:
        return self.images.dtype.itemsize

    @cached_property
    def frame_times_ns(self) -> np.ndarray:
        """Per frame, its time by the one rule of `frame_time_ns`."""
        return frame_time_ns(self.wr_timestamp_ns, self.host_timestamp_ns)

    def pff_header(self, i: int) -> dict[str, Any]:
        """The PFF header of frame `i` in its original shape (quabo_<i> sub-objects for module images)."""
        columns = self.pff_columns
        if columns and next(iter(columns.values())).ndim == 2:
            quabos = next(iter(columns.values())).shape[1]
            return {f"quabo_{q}": {name: int(values[i, q]) for name, values in columns.items()}
                    for q in range(quabos)}
        return {name: int(values[i]) for name, values in columns.items()}

    def frame_fields(self, i: int) -> dict[str, Any]:
        """The header of frame `i` as a one-frame message would carry it (WR time None where invalid)."""
        wr = int(self.wr_timestamp_ns[i])
        return {
            "kind": "frames", "protocol_version": self.protocol_version, "source": self.source,
            "origin": self.origin, "module_id": self.module_id, "dp": self.dp, "shape": list(self.shape),
            "bytes_per_pixel": self.bytes_per_pixel, "dtype": self.images.dtype.str, "run": self.run,
            "file": self.file, "seqno": self.seqno, "frame_number": int(self.frame_number[i]),
            "seq": int(self.seq[i]), "wr_timestamp_ns": None if wr < 0 else wr,
            "host_timestamp_ns": int(self.host_timestamp_ns[i]), "pff_header": self.pff_header(i),
        }

    def tail(self, n: int = 1) -> FrameBatch:
        """The last n frames as a batch of their own."""
        cut = slice(len(self) - n, None)
        return dataclasses.replace(
            self, frame_number=self.frame_number[cut], seq=self.seq[cut], wr_timestamp_ns=self.wr_timestamp_ns[cut],
            host_timestamp_ns=self.host_timestamp_ns[cut], images=self.images[cut],
            pff_columns={name: values[cut] for name, values in self.pff_columns.items()})


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
    return decode_frames(parts)


def decode_frames(parts: Sequence[bytes | memoryview]) -> FrameBatch:
    """Decode a frame message (one that `peek` found to be frames).

    Raises:
        InvalidMessage: the message does not follow the wire format of frame messages.
    """
    if len(parts) != _FRAME_PARTS:
        raise InvalidMessage(f"frame message has {len(parts)} parts, expected {_FRAME_PARTS}")
    try:
        header = orjson.loads(parts[1])
        n = header["n_frames"]
        product = DATA_PRODUCTS[header["dp"]]
        if header["dtype"] != product.dtype.str or tuple(header["shape"]) != product.shape:
            raise ValueError(f"{product.name} images are {product.dtype.str} {product.shape}")
        columns = [(name, kind, tuple(per_frame)) for name, kind, per_frame in header["columns"]]
        if any(kind != COLUMN_DTYPE for _, kind, _ in columns):
            raise ValueError(f"columns must be {COLUMN_DTYPE}")
        topic = frame_topic(product.name, header["module_id"], header["origin"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidMessage(f"bad frame header: {exc}") from exc
    if bytes(parts[0]) != topic:
        raise InvalidMessage(f"topic {bytes(parts[0][:40])!r} does not match the header's stream {topic!r}")
    counts = [n * math.prod(per_frame) for _, _, per_frame in columns]
    if 8 * sum(counts) != len(parts[_COLUMNS_PART]):
        raise InvalidMessage(f"columns part has {len(parts[_COLUMNS_PART])} bytes, expected {8 * sum(counts)} "
                             f"for {n} frames")
    if len(parts[_IMAGES_PART]) != n * product.image_size:
        raise InvalidMessage(f"image part has {len(parts[_IMAGES_PART])} bytes, expected {n * product.image_size} "
                             f"for {n} frames")
    flat = np.frombuffer(parts[_COLUMNS_PART], dtype=COLUMN_DTYPE)  # every column is int64: one view, sliced
    offset, named, pff = 0, {}, {}
    for (name, _, per_frame), count in zip(columns, counts, strict=True):
        values = flat[offset : offset + count].reshape(n, *per_frame)
        offset += count
        if name.startswith(PFF_COLUMN_PREFIX):
            pff[name.removeprefix(PFF_COLUMN_PREFIX)] = values
        else:
            named[name] = values
    missing = [name for name in PER_FRAME_COLUMNS if name not in named]
    if missing:
        raise InvalidMessage(f"frame message lacks the column(s) {', '.join(missing)}")
    try:
        return FrameBatch(
            source=header["source"], origin=header["origin"], module_id=header["module_id"], dp=product.name,
            run=header["run"], file=header["file"], seqno=header["seqno"],
            **{name: named[name] for name in PER_FRAME_COLUMNS}, pff_columns=pff,
            images=np.frombuffer(parts[_IMAGES_PART], dtype=product.dtype).reshape(n, *product.shape),
            protocol_version=header["protocol_version"], replay_id=header.get("replay_id"))
    except KeyError as exc:
        raise InvalidMessage(f"bad frame header: {exc} missing") from exc
