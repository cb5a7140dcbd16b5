"""Request validation, status and frame wire formats."""

import math

import numpy as np
import orjson
import pytest
from conftest import SAMPLE_IMG16, SAMPLE_PH256_M1

from std_daq_service.pff import DATA_PRODUCTS, PffReader
from std_daq_service.protocol import (
    CONTROL_TOPIC,
    ERRORS,
    Busy,
    ControlHeader,
    DaqError,
    FrameBatchHeader,
    InvalidMessage,
    InvalidRequest,
    KillRequest,
    Peek,
    RequestKilled,
    Status,
    StorageError,
    UnknownTarget,
    WriteRequest,
    decode_kill,
    decode_request,
    decode_status,
    decode_stream_message,
    encode_control,
    encode_frames,
    encode_request,
    encode_status,
    error_result,
    frame_time_ns,
    frame_topic,
    parse_subscriber_topic,
    parse_topic,
    peek,
    rebuild_error,
    subscriber_topic,
)
from std_daq_service.protocol.frames import COLUMN_DTYPE, PER_FRAME_COLUMNS, PFF_COLUMN_PREFIX


@pytest.mark.parametrize(
    "body,expected",
    [
        (b"{", "not valid JSON"),
        (b"[]", "object"),
        (b'{"request_type": "nope"}', "unknown request_type; known: init_hp_io"),
        (b"{}", "request_type: missing"),
        (b'{"request_type": "write", "output_file": "a", "n_images": -1}', "n_images: Input should be greater than 0"),
        (b'{"request_type": "write", "output_file": "a", "bogus": 1}', "bogus: unknown field"),
        (b'{"request_type": "write", "output_file": "a", "n_images": "ten"}', "n_images"),
        (b'{"request_type": "write", "output_file": "a", "n_images": 1, "duration_seconds": 2}', "at most one of"),
        (b'{"request_type": "write", "output_file": "a\\u0000b"}', "NUL"),
        (b'{"request_type": "write", "output_file": "a", "start_time": "yesterday"}', "ISO 8601"),
        (b'{"request_type": "stream", "stream_movie_data": false, "stream_pulse_height_data": false}', "at least one"),
        (b'{"request_type": "init_hp_io"}', "data_dir is required unless simulate_daq"),
        (b'{"request_type": "init_hp_io", "data_dir": "/x", "module_ids": [999]}', "module_ids.0"),
        (b'{"request_type": "init_hp_io", "data_dir": "/x", "comment": "typo"}', "comment: unknown field"),
        (b'{"request_type": "stream", "update_interval_seconds": -1}', "update_interval_seconds"),
        (b'{"request_type": "init_sim", "max_file_size_mb": 1e999}', "max_file_size_mb: Input should be a finite"),
    ],
)
def test_bad_requests_are_rejected_naming_the_problem(body, expected):
    with pytest.raises(InvalidRequest, match=expected):
        decode_request(body)


def test_panoseti_hp_io_configs_and_a_zero_stream_interval_are_accepted():
    lick = {"data_dir": "/mnt/data10", "update_interval_seconds": 0.1, "force": True, "simulate_daq": False,
            "module_ids": [], "comments": "Default Lick observatory config for daq1"}
    assert decode_request({**lick, "request_type": "init_hp_io"}).data_dir == "/mnt/data10"
    simulate = {"update_interval_seconds": 0.001, "simulate_daq": True, "comments": "no data_dir needed"}
    assert decode_request({**simulate, "request_type": "init_hp_io"}).update_interval_seconds == 0.001
    assert decode_request({"request_type": "stream", "update_interval_seconds": 0}).update_interval_seconds == 0


def test_write_request_times_accept_iso_and_ns_and_round_trip():
    request = decode_request(b'{"request_type": "write", "output_file": "x.h5", "start_time": "2024-07-25T04:34:46.5Z",'
                             b' "sources": "lick.daq1.hp_io_agent"}')
    assert isinstance(request, WriteRequest)
    assert request.start_time == 1721882086_500000000
    assert request.sources == ["lick.daq1.hp_io_agent"]
    assert decode_request(encode_request(request)) == request


@pytest.mark.parametrize("given, ns", [
    ("2024-07-25T04:34:06.123456789Z", 1721882046_123456789),
    ("2024-07-25T04:34:06.123456789+00:00", 1721882046_123456789),
    ("2024-07-25T06:34:06.123456789+02:00", 1721882046_123456789),
    ("2024-07-24T23:04:06.000000001-0530", 1721882046_000000001),
    ("2024-07-25 04:34:06,1", 1721882046_100000000),  # no zone: UTC; a comma is ISO's other decimal sign
    ("2024-07-25T04:34:06.1234Z", 1721882046_123400000),  # a fraction Python 3.10's fromisoformat refuses
    ("2024-07-25T04:34Z", 1721882040_000000000),
    ("2024-07-25", 1721865600_000000000),
    ("1721882046123456789", 1721882046_123456789),  # Unix ns as a string, as every CLI argument is
    (" 1721882046123456789 ", 1721882046_123456789),
    (1721882046123456789, 1721882046_123456789),
])
def test_write_request_times_are_exact_to_the_nanosecond(given, ns):
    assert WriteRequest(output_file="x.h5", start_time=given).start_time == ns
    assert WriteRequest(output_file="x.h5", stop_time=given).stop_time == ns


@pytest.mark.parametrize("given, problem", [
    ("2024-07-25T04:34:06.1234567891Z", "at most 9 fractional digits"),
    ("2024-13-25T04:34:06Z", "month must be in 1..12"),
    ("2024-07-25T04:34:06+", "neither Unix nanoseconds nor an ISO 8601 time"),
    ("1721882046.5", "neither Unix nanoseconds nor an ISO 8601 time"),
    ("-5", "greater than or equal to 0"),
    ("1969-12-31T23:59:59Z", "greater than or equal to 0"),
    ("99999999999999999999", "less than or equal to"),
])
def test_bad_write_request_times_are_refused_with_the_field_named(given, problem):
    with pytest.raises(InvalidRequest, match=f"start_time: .*{problem}"):
        decode_request({"request_type": "write", "output_file": "x.h5", "start_time": given})


def test_status_round_trip_with_std_daq_headers():
    status = Status(request_id="r1", source="lick.daq1.writer", action="request_fail", message="disk full",
                    result={"error": "x"})
    body, headers = encode_status(status)
    assert headers["action"] == "request_fail" and headers["source"] == "lick.daq1.writer"
    assert headers["message"] == "disk full"
    assert decode_status(body) == status
    with pytest.raises(InvalidMessage):
        decode_status(b'{"request_id": 1}')


def encoded(path, origin="file", module_id=1, first=10, n=10):
    with PffReader(path) as reader:
        block = reader.block(first, first + n)
        parts = encode_frames(
            source="s", origin=origin, module_id=module_id, dp=reader.dp.name, shape=reader.dp.shape, run="obs_x",
            file=path.name, seqno=0, frame_number=block.frame_numbers, seq=np.arange(100, 100 + n),
            wr_timestamp_ns=block.wr_timestamp_ns, host_timestamp_ns=block.host_timestamp_ns,
            pff_fields=block.fields, image_bytes=block.image_bytes,
            replay_id="r-1" if origin == "replay" else None,
        )
    return parts, block


def one_frame(dp="ph256", wr=-1, topic=None, **changes):
    parts = encode_frames(
        source="s", origin="file", module_id=254, dp=dp, shape=DATA_PRODUCTS[dp].shape, run=None, file=None,
        seqno=None, frame_number=np.array([0]), seq=np.array([0]), wr_timestamp_ns=np.array([wr]),
        host_timestamp_ns=np.array([5]), pff_fields={"tv_sec": np.array([1])},
        image_bytes=bytes(DATA_PRODUCTS[dp].image_size),
    )
    header = {**orjson.loads(parts[1]), **changes}
    return [topic or parts[0], orjson.dumps(header), parts[2], parts[3]]


def test_a_subscriber_topic_names_its_kind_and_name_and_matches_no_frame_or_control_topic():
    topic = subscriber_topic("writer", "lick.daq1.writer")
    assert topic == b"subscriber.writer.lick.daq1.writer."
    assert parse_subscriber_topic(topic) == ("writer", "lick.daq1.writer")
    assert parse_subscriber_topic(frame_topic("img16", 1)) is None and parse_subscriber_topic(CONTROL_TOPIC) is None
    assert parse_subscriber_topic(b"subscriber.writer.") is None
    assert parse_topic(topic) is None
    assert not any(t.startswith(topic) for t in (frame_topic("img16", 1), frame_topic("ph256", 3, "socket")))


@pytest.mark.parametrize("path", [SAMPLE_IMG16, SAMPLE_PH256_M1], ids=["img16", "ph256"])
def test_frame_batch_round_trip_is_exact(path):
    parts, block = encoded(path)
    assert parts[0] == frame_topic(block.dp.name, 1) == f"{block.dp.name}.001.".encode()
    batch = decode_stream_message(parts)
    assert len(batch) == 10 and (batch.module_id, batch.dp, batch.origin, batch.file) == (1, block.dp.name, "file",
                                                                                            path.name)
    assert np.array_equal(batch.images, block.images()) and batch.images.dtype == block.dp.dtype
    assert batch.frame_number.tolist() == list(range(10, 20)) and batch.seq.tolist() == list(range(100, 110))
    assert np.array_equal(batch.wr_timestamp_ns, block.wr_timestamp_ns)
    assert np.array_equal(batch.host_timestamp_ns, block.host_timestamp_ns)
    assert batch.pff_columns.keys() == block.fields.keys()
    for i in range(10):
        assert batch.pff_header(i) == block.header(i)
        fields = batch.frame_fields(i)
        assert fields["pff_header"] == block.header(i)
        assert fields["frame_number"] == 10 + i and fields["seq"] == 100 + i
        assert fields["wr_timestamp_ns"] == int(block.wr_timestamp_ns[i])
    last = batch.tail(2)
    assert len(last) == 2 and last.seq.tolist() == [108, 109] and last.pff_header(1) == block.header(9)


@pytest.mark.parametrize("path", [SAMPLE_IMG16, SAMPLE_PH256_M1], ids=["img16", "ph256"])
@pytest.mark.parametrize("origin", ["file", "socket", "simulator", "replay"])
def test_encoded_frame_messages_follow_the_documented_schema(path, origin):
    parts, block = encoded(path, origin, module_id=3)
    header = orjson.loads(parts[1])
    documented = FrameBatchHeader.model_validate(header).model_dump(mode="json", exclude_unset=True)
    assert documented == header, "no field undocumented"
    assert ("replay_id" in header) == (origin == "replay"), "live frames carry no replay_id"
    assert decode_stream_message(parts).replay_id == header.get("replay_id")
    product = DATA_PRODUCTS[header["dp"]]
    assert (header["dtype"], header["bytes_per_pixel"], tuple(header["shape"])) == (
        product.dtype.str, product.dtype.itemsize, product.shape)
    names = [name for name, _, _ in header["columns"]]
    assert names == [*PER_FRAME_COLUMNS, *(PFF_COLUMN_PREFIX + name for name in block.fields)]
    per_quabo = [4] if block.layout.is_module_image else []
    assert all(kind == COLUMN_DTYPE for _, kind, _ in header["columns"])
    assert [shape for _, _, shape in header["columns"]] == [[]] * 4 + [per_quabo] * len(block.fields)
    n = header["n_frames"]
    assert len(parts[2]) == sum(n * math.prod(shape) * 8 for _, _, shape in header["columns"])
    assert len(parts[3]) == n * product.image_size
    assert parse_topic(parts[0]) == (block.dp.name, 3, "socket" if origin == "socket" else "file")


def test_peek_routes_without_decoding():
    parts, _ = encoded(SAMPLE_IMG16, origin="socket", module_id=7, n=5)
    assert peek(parts) == Peek("frames", "img16", 7, "socket", 5)
    assert peek(encode_control("s", "stop")) == Peek("control")
    for bad in ([b"x"], [b"nope.001.", b"", b"", b""], [b"img16.001.", b"", b""], [], parts[:3] + [bytes(100)]):
        with pytest.raises(InvalidMessage):
            peek(bad)


def test_frame_time_is_wr_time_where_valid_else_host_time():
    assert frame_time_ns(np.array([7, -1, 9]), np.array([1, 2, 3])).tolist() == [7, 2, 9]
    assert frame_time_ns(None, 5) == 5 and frame_time_ns(-1, 5) == 5 and frame_time_ns(7, 5) == 7
    batch = decode_stream_message(one_frame(wr=-1))
    assert batch.frame_times_ns.tolist() == [5]


def test_invalid_wr_time_travels_as_minus_one_and_reads_as_none():
    batch = decode_stream_message(one_frame(wr=-1))
    assert batch.wr_timestamp_ns.tolist() == [-1] and batch.frame_fields(0)["wr_timestamp_ns"] is None


def test_control_messages_and_malformed_messages():
    control = decode_stream_message(encode_control("s", "run_end", "run ended", run="obs_x"))
    assert isinstance(control, ControlHeader) and control.event == "run_end"
    for parts in ([b"img16.001.", b"{}", b"", b""], [b"img16.001.", b"not json", b"", b""], [b"x"],
                  [CONTROL_TOPIC, b"{}"], [b"img16.001.", b"{}", b""]):
        with pytest.raises(InvalidMessage):
            decode_stream_message(parts)
    good = one_frame(wr=1)
    with pytest.raises(InvalidMessage, match="expected 512"):
        decode_stream_message(good[:3] + [bytes(100)])
    with pytest.raises(InvalidMessage, match="columns part"):
        decode_stream_message([good[0], good[1], good[2][:-8], good[3]])


@pytest.mark.parametrize("body, problem", [
    (b"{}", "request_id: Field required"),
    (b'{"request_id": ""}', "request_id: String should have at least 1 character"),
    (b'{"request_id": 7}', "request_id: Input should be a valid string"),
    (b'{"request_id": "a", "force": true}', "force: unknown field"),
    (b"not json", "invalid kill"),
])
def test_kill_body_is_validated_by_its_model(body, problem):
    with pytest.raises(InvalidRequest, match=problem):
        decode_kill(body)


def test_kill_round_trip():
    kill = KillRequest(request_id="0f8e")
    assert decode_kill(encode_request(kill)) == kill


@pytest.mark.parametrize("error", [Busy("busy"), UnknownTarget("nobody"), InvalidRequest("bad"), StorageError("full"),
                                   RequestKilled("killed")])
def test_an_error_crosses_the_wire_as_its_own_class(error):
    rebuilt = rebuild_error(error_result(error), str(error))
    assert type(rebuilt) is type(error) and str(rebuilt) == str(error)
    assert rebuilt.http_status == error.http_status


def test_a_new_error_class_registers_itself_and_crosses_the_wire_as_its_own_class():
    class DiskAsleep(DaqError):
        http_status = 503

    rebuilt = rebuild_error(error_result(DiskAsleep("spinning up")), "spinning up")
    assert type(rebuilt) is DiskAsleep and rebuilt.http_status == 503


def test_an_unexpected_error_crosses_the_wire_as_a_daq_error_with_its_code():
    rebuilt = rebuild_error(error_result(KeyError("x")), "internal error")
    assert type(rebuilt) is DaqError and rebuilt.http_status == 500
    assert set(ERRORS) >= {"Busy", "UnknownTarget", "InvalidRequest", "RequestTimeout", "NoServiceAnswered"}
    with pytest.raises(InvalidMessage, match="does not match"):
        decode_stream_message(one_frame(topic=b"ph256.001."))
    with pytest.raises(InvalidMessage, match="ph256 images are <i2"):
        decode_stream_message(one_frame(dtype="<u2"))
