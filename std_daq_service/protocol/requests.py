"""Requests that control software sends to services over RabbitMQ, one model per request type."""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from std_daq_service.protocol.errors import InvalidRequest

DataProductName = Literal["img16", "img8", "ph256", "ph1024"]
ModuleId = Annotated[int, Field(ge=0, le=255, description="PANOSETI module id (0-255).")]
CompressionName = Literal["none", "gzip", "lzf", "bitshuffle_lz4", "blosc_lz4"]


class RequestBase(BaseModel):
    """Fields common to every request; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no number beyond every bound


class InitHpIoRequest(RequestBase):
    """Start tracking the PFF runs Hashpipe writes under `data_dir` (panoseti's hp_io_config.json)."""

    request_type: Literal["init_hp_io"] = "init_hp_io"
    data_dir: str | None = Field(
        None,
        min_length=1,
        description="Directory with module_<N>/obs_*.pffd run dirs, or one archived (flat) run dir; "
        "required unless simulate_daq.",
    )
    update_interval_seconds: PositiveFloat = Field(
        1.0,
        le=3600,
        description="Preview period: latest frame per module and product this often; raised to the agent's "
        "min_update_interval_seconds if below it (the result says so).",
    )
    force: bool = Field(False, description="Re-initialise even while consumers are subscribed.")
    module_ids: list[ModuleId] = Field(default_factory=list, description="Empty means all modules.")
    simulate_daq: bool = Field(False, description="Track the simulator's output instead of data_dir.")
    comments: str | list[str] | None = Field(
        None, description="Ignored: the free-text note panoseti's hp_io_config.json files carry."
    )

    @model_validator(mode="after")
    def _data_dir_unless_simulated(self) -> InitHpIoRequest:
        if self.data_dir is None and not self.simulate_daq:
            raise ValueError("data_dir is required unless simulate_daq is true")
        return self


class InitSimRequest(RequestBase):
    """Replay an archived run as a live Hashpipe run and track it."""

    request_type: Literal["init_sim"] = "init_sim"
    source_dir: str | None = Field(
        None, description="Archived run dir to replay; the embedded Lick 2024-07-25 excerpt if omitted."
    )
    module_ids: list[ModuleId] = Field(
        default_factory=list,
        description="Module ids to simulate; source modules are relabelled in order. Empty: as in the source.",
    )
    movie_rate_hz: PositiveFloat = Field(1000.0, le=100_000, description="Image frames per second per module.")
    pulse_height_rate_hz: PositiveFloat = Field(
        100.0, le=100_000, description="Pulse-height frames per second per module."
    )
    max_file_size_mb: PositiveFloat = Field(
        4000.0, le=1_000_000, description="Roll over to the next seqno after this many MB, as Hashpipe does."
    )
    update_interval_seconds: PositiveFloat = Field(1.0, le=3600, description="As in init_hp_io.")
    force: bool = Field(False, description="As in init_hp_io.")


class StopHpIoRequest(RequestBase):
    """Stop tracking (and the simulator, if running); tell subscribers the stream ended."""

    request_type: Literal["stop_hp_io"] = "stop_hp_io"


class StatusRequest(RequestBase):
    """Report what the service is doing; the answer is the `result` of `request_success`."""

    request_type: Literal["status"] = "status"


class StreamRequest(RequestBase):
    """Ask where to subscribe for frames; the answer holds ZMQ endpoints and topics."""

    request_type: Literal["stream"] = "stream"
    stream_movie_data: bool = Field(True, description="Include image (movie) data products.")
    stream_pulse_height_data: bool = Field(True, description="Include pulse-height data products.")
    update_interval_seconds: float = Field(
        1.0, ge=0, le=3600, description="Wanted period of the latest frames; 0: every frame, as fast as they come."
    )
    module_ids: list[ModuleId] = Field(default_factory=list, description="Empty means all modules.")

    @model_validator(mode="after")
    def _one_kind(self) -> StreamRequest:
        if not (self.stream_movie_data or self.stream_pulse_height_data):
            raise ValueError("at least one of stream_movie_data and stream_pulse_height_data must be true")
        return self


MAX_UNIX_NS = 2**63 - 1
"""Times are int64 nanoseconds, as in the HDF5 files (until the year 2262)."""


_UNIX_NS = re.compile(r"[+-]?\d+")
_ISO_8601 = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"
    r"(?:[Tt ](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?"
    r"(?P<zone>[Zz]|(?P<sign>[+-])(?P<zone_hour>\d{2})(?::?(?P<zone_minute>\d{2}))?)?"
)


def to_unix_ns(value: int | str | None) -> int | None:
    """Unix nanoseconds from an integer, a string of digits, or an ISO 8601 time (UTC when no zone is given).

    ISO times are parsed here, not by `datetime.fromisoformat` (microseconds only; Python 3.10 knows no `Z` and
    no fraction other than 3 or 6 digits): `YYYY-MM-DD[THH:MM[:SS[.fraction]]][Z|±HH[:MM]]`, up to 9
    fractional digits, exact to the nanosecond.
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is neither Unix nanoseconds (an integer) nor an ISO 8601 time (a string)")
    text = value.strip()
    if _UNIX_NS.fullmatch(text):
        return int(text)
    match = _ISO_8601.fullmatch(text)
    if match is None:
        raise ValueError(f"{value!r} is neither Unix nanoseconds nor an ISO 8601 time "
                         "(e.g. 2024-07-25T04:34:06.123456789Z)")
    fraction = match["fraction"] or ""
    if len(fraction) > 9:
        raise ValueError(f"{value!r}: at most 9 fractional digits (nanoseconds)")
    offset = timedelta()
    if match["sign"]:
        offset = timedelta(hours=int(match["zone_hour"]), minutes=int(match["zone_minute"] or 0))
        offset = -offset if match["sign"] == "-" else offset
    try:
        when = datetime(int(match["year"]), int(match["month"]), int(match["day"]), int(match["hour"] or 0),
                        int(match["minute"] or 0), int(match["second"] or 0), tzinfo=timezone(offset))
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    return calendar.timegm(when.utctimetuple()) * 1_000_000_000 + int(fraction.ljust(9, "0"))


class TimedRequest(RequestBase):
    """A request with `start_time` / `stop_time`: both parsed by `to_unix_ns` (the one owner of time parsing)."""

    @field_validator("start_time", "stop_time", mode="before", check_fields=False)
    @classmethod
    def _time(cls, value):
        return to_unix_ns(value)


_RUN_DESCRIPTION = ("Only this run (its obs_*.pffd dir name) of the data dir; default: every run whose files hold "
                    "frames of the window.")
_DATA_DIR_DESCRIPTION = ("Where the agent finds the PFF files: a data dir (module_<N>/obs_*.pffd) or one archived "
                         "run dir, on the agent's node; default: the dir it tracks.")


class WriteRequest(TimedRequest):
    """Record selected frames into one HDF5 file under the writer's output root."""

    request_type: Literal["write"] = "write"
    output_file: str = Field(min_length=1, max_length=1024, description="Path relative to the output root.")
    sources: list[str] = Field(
        default_factory=list, description="Agent service names to record frames from (empty: all configured), or "
        "one event builder's name (of the writer's event_builders) to record its coincidence events."
    )
    module_ids: list[ModuleId] = Field(default_factory=list, description="Empty means all modules.")
    data_products: list[DataProductName] = Field(default_factory=list, description="Empty means all.")
    n_images: PositiveInt | None = Field(None, description="Stop after this many frames per stream (or events).")
    duration_seconds: PositiveFloat | None = Field(None, le=7 * 86400, description="Record this long.")
    start_time: NonNegativeInt | None = Field(
        None, le=MAX_UNIX_NS, description="Unix ns (an integer or a string of digits) or ISO 8601 (UTC unless it "
        "names a zone, up to 9 fractional digits); may lie in the past: what the ring buffer no longer holds is "
        "replayed from the agents' PFF files."
    )
    stop_time: NonNegativeInt | None = Field(
        None, le=MAX_UNIX_NS, description="Unix ns (an integer or a string of digits) or ISO 8601, as start_time."
    )
    timeout_seconds: PositiveFloat = Field(
        10.0, le=86400, description="Fail if a selected stream sends nothing for this long."
    )
    overwrite: bool = Field(False, description="Replace an existing file.")
    compression: CompressionName | None = Field(None, description="None: the writer's configured default.")
    run: str | None = Field(None, min_length=1, max_length=255,
                            description=f"Replayed part (needs start_time): {_RUN_DESCRIPTION}")
    data_dir: str | None = Field(None, min_length=1, max_length=4096,
                                 description=f"Replayed part (needs start_time): {_DATA_DIR_DESCRIPTION}")
    max_frames_per_file: PositiveInt | None = Field(
        None, description="Roll over to a new part after this many frames of a stream: the recording is then "
        "parts <stem>_part0001<suffix>, ... and output_file is an index presenting them as one stack per stream."
    )
    max_file_size_mb: PositiveFloat | None = Field(
        None, le=1e9, description="Roll over to a new part at this size (MB = 10^6 bytes of frames before "
        "compression); parts and index as with max_frames_per_file."
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _one_source(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("output_file")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL bytes")
        return value

    @model_validator(mode="after")
    def _one_limit(self) -> WriteRequest:
        limits = [n for n in ("n_images", "duration_seconds", "stop_time") if getattr(self, n) is not None]
        if len(limits) > 1:
            raise ValueError(f"give at most one of n_images, duration_seconds, stop_time (got {limits})")
        if self.start_time is not None and self.stop_time is not None and self.stop_time <= self.start_time:
            raise ValueError("stop_time must be after start_time")
        if (self.run or self.data_dir) and self.start_time is None:
            raise ValueError("run and data_dir choose the files a past window is replayed from: give start_time")
        return self


class ReplayRequest(TimedRequest):
    """Publish the frames of a past time window again, from the agent's PFF files, on its replay socket.

    Subscribe to the replay endpoint (`endpoints.replay` of `stream` or `status`) with the frame topics wanted and
    `subscriber.replay.<request id>.` before sending: the agent waits for that subscription, then publishes.
    """

    request_type: Literal["replay"] = "replay"
    start_time: NonNegativeInt = Field(
        le=MAX_UNIX_NS, description="Unix ns or ISO 8601, as in write: frames whose time (WR, else host) lies in "
        "[start_time, stop_time) are published."
    )
    stop_time: NonNegativeInt = Field(le=MAX_UNIX_NS, description="Unix ns or ISO 8601; after start_time.")
    module_ids: list[ModuleId] = Field(default_factory=list, description="Empty means all modules.")
    data_products: list[DataProductName] = Field(default_factory=list, description="Empty means all.")
    run: str | None = Field(None, min_length=1, max_length=255, description=_RUN_DESCRIPTION)
    data_dir: str | None = Field(None, min_length=1, max_length=4096, description=_DATA_DIR_DESCRIPTION)

    @model_validator(mode="after")
    def _window(self) -> ReplayRequest:
        if self.stop_time <= self.start_time:
            raise ValueError("the window is empty: stop_time must be after start_time")
        return self


class FindCoincidencesRequest(RequestBase):
    """Find coincidence events in an archived run: the event builder's matching, fed from the PFF files."""

    request_type: Literal["find_coincidences"] = "find_coincidences"
    path: str = Field(min_length=1, max_length=4096,
                      description="Archived (flat) run directory, absolute or relative to the builder's archive_root.")
    module_ids: list[ModuleId] = Field(default_factory=list, description="Empty means every module with ph files.")
    coincidence_window_ns: PositiveInt | None = Field(
        None, le=1_000_000_000, description="None: the builder's configured window.")
    accidental_shifts: PositiveInt = Field(
        100, le=10_000, description="Shifted copies averaged for the accidental estimate.")
    max_events: NonNegativeInt = Field(1000, le=100_000, description="Most events listed in the result.")


Request = Annotated[
    InitHpIoRequest | InitSimRequest | StopHpIoRequest | StatusRequest | StreamRequest | WriteRequest
    | FindCoincidencesRequest | ReplayRequest,
    Field(discriminator="request_type"),
]
REQUEST_TYPES: dict[str, type[RequestBase]] = {
    model.model_fields["request_type"].default: model
    for model in (InitHpIoRequest, InitSimRequest, StopHpIoRequest, StatusRequest, StreamRequest, WriteRequest,
                  FindCoincidencesRequest, ReplayRequest)
}
_REQUEST_ADAPTER: TypeAdapter = TypeAdapter(Request)


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: `field: what is wrong`."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"] if part not in REQUEST_TYPES)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "union_tag_invalid":
            message = f"unknown request_type; known: {', '.join(REQUEST_TYPES)}"
        elif error["type"] == "union_tag_not_found":
            where, message = "request_type", f"missing; one of {', '.join(REQUEST_TYPES)}"
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def decode_request(body: bytes | str | dict) -> Request:
    """Validate a request from JSON bytes or a dict.

    Raises:
        InvalidRequest: the body is not JSON, not an object, or a field is wrong (named in the message).
    """
    try:
        if isinstance(body, dict):
            return _REQUEST_ADAPTER.validate_python(body)
        return _REQUEST_ADAPTER.validate_json(body)
    except ValidationError as exc:
        if exc.error_count() == 1 and exc.errors()[0]["type"] == "json_invalid":
            raise InvalidRequest(f"request body is not valid JSON: {exc.errors()[0]['msg']}") from exc
        if exc.error_count() == 1 and exc.errors()[0]["type"] == "model_attributes_type":
            raise InvalidRequest("request body must be a JSON object") from exc
        raise InvalidRequest(f"invalid request: {describe_validation_error(exc)}") from exc


def encode_request(request: RequestBase) -> bytes:
    """JSON bytes of a request, as sent on the `request` exchange."""
    return request.model_dump_json().encode()


class KillRequest(RequestBase):
    """Stop a running request; sent on the `kill` exchange with the target's id as correlation_id too."""

    request_id: str = Field(min_length=1, max_length=200, description="The id of the request to stop.")


def decode_kill(body: bytes | dict) -> KillRequest:
    """Validate a kill message body.

    Raises:
        InvalidRequest: the body is not a kill (the message names the field).
    """
    try:
        if isinstance(body, dict):
            return KillRequest.model_validate(body)
        return KillRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid kill: {describe_validation_error(exc)}") from exc
