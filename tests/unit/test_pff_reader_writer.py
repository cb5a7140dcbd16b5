"""PFF reading and writing on real PANOSETI data."""

from datetime import datetime, timezone

import numpy as np
import pytest
from conftest import PYPFF_PH256, SAMPLE_IMG16, SAMPLE_PH256_M1, SAMPLE_PH256_M3, SHARED_DATA

from std_daq_service.pff import (
    WR_INVALID,
    PffError,
    PffReader,
    PffWriter,
    data_product,
    format_data_file_name,
    format_header,
    parse_header,
)

LICK = SHARED_DATA / "lick_2024-07-25/obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"
REAL_FILES = [
    (LICK / "start_2024-07-25T04_34_46Z.dp_img16.bpp_2.module_1.seqno_0.debug_TRUNCATED.pff", 4128, 640, 0),
    (LICK / "start_2024-07-25T04_34_46Z.dp_ph256.bpp_2.module_1.seqno_0.debug_TRUNCATED.pff", 16487, 28, 0),
    (LICK / "start_2024-07-25T04_34_46Z.dp_ph256.bpp_2.module_3.seqno_0.debug_TRUNCATED.pff", 16487, 28, 0),
    (SHARED_DATA / "pypff_example/start_2025-08-02T05:31:36Z.dp_ph256.bpp_2.module_254.seqno_0.pff", 88, 0, 88),
]
EXCERPTS = [(SAMPLE_IMG16, 1000, 640, 0), (SAMPLE_PH256_M1, 1000, 28, 0), (SAMPLE_PH256_M3, 1000, 28, 0),
            (PYPFF_PH256, 88, 0, 88)]


def _check_facts(path, n_frames, trailing, n_invalid):
    with PffReader(path) as reader:
        assert reader.n_frames == n_frames
        assert reader.trailing_bytes == trailing
        wr = reader.block().wr_timestamp_ns
        assert int((wr == WR_INVALID).sum()) == n_invalid
        assert (reader.corrupt_bytes, reader.lost_frames, reader.variable_headers) == (0, 0, False)


@pytest.mark.parametrize("path,n_frames,trailing,n_invalid", EXCERPTS, ids=lambda v: getattr(v, "name", v))
def test_embedded_excerpts_have_the_documented_frames_and_torn_bytes(path, n_frames, trailing, n_invalid):
    _check_facts(path, n_frames, trailing, n_invalid)


@pytest.mark.real_data
@pytest.mark.parametrize("path,n_frames,trailing,n_invalid", REAL_FILES, ids=lambda v: getattr(v, "name", v))
def test_full_archived_files_have_the_documented_frames_and_torn_bytes(path, n_frames, trailing, n_invalid):
    if not path.exists():
        pytest.skip(f"full archived data not present at {SHARED_DATA} (set PANOSETI_DATA)")
    _check_facts(path, n_frames, trailing, n_invalid)


def test_first_img16_frame_matches_the_file_bytes():
    raw = SAMPLE_IMG16.read_bytes()
    with PffReader(SAMPLE_IMG16) as reader:
        frame = reader[0]
        assert frame.raw == raw[:2540]
        assert frame.header["quabo_0"] == {"pkt_num": 37905, "pkt_tai": 529, "pkt_nsec": 691007488,
                                           "tv_sec": 1721882092, "tv_usec": 691344}
        assert frame.image.dtype == np.dtype("<u2") and frame.image.shape == (32, 32)
        assert frame.image.tobytes() == raw[492:2540]
        last = reader[-1]
        assert last.frame_number == 999 and last.raw == raw[999 * 2540 : 1000 * 2540]


def test_vectorised_fields_equal_json_parsing_of_every_header():
    for path in (SAMPLE_IMG16, SAMPLE_PH256_M1, PYPFF_PH256):
        with PffReader(path) as reader:
            block = reader.block()
            for i in range(0, len(block), 37):
                header = block.header(i)
                for name, values in block.fields.items():
                    if values.ndim == 2:
                        assert values[i].tolist() == [header[f"quabo_{q}"][name] for q in range(4)]
                    else:
                        assert values[i] == header[name]


def test_pulse_height_pixels_are_signed():
    with PffReader(SAMPLE_PH256_M1) as reader:
        images = reader.block().images()
    assert images.dtype == np.dtype("<i2") and images.shape == (1000, 16, 16)
    assert (images < 0).any()


def test_seek_time_finds_the_first_frame_at_or_after_a_time():
    with PffReader(SAMPLE_IMG16) as reader:
        host = reader.block().host_timestamp_ns
        assert reader.seek_time(int(host[500])) == 500
        assert reader.seek_time(int(host[500]) + 1) == 501
        assert reader.seek_time(0) == 0
        assert reader.seek_time(int(host[-1]) + 1) == reader.n_frames


@pytest.mark.parametrize("path", [SAMPLE_IMG16, SAMPLE_PH256_M3, PYPFF_PH256], ids=lambda p: p.name[:40])
def test_read_write_read_round_trip_is_byte_identical(tmp_path, path):
    with PffReader(path) as reader:
        out = tmp_path / format_data_file_name(datetime.now(timezone.utc), reader.dp.name, 9, 0)
        with PffWriter(out, reader.dp) as writer:
            for frame in reader:
                writer.write_frame(frame.header, frame.image)
        n = reader.n_frames
        assert out.read_bytes() == path.read_bytes()[: n * reader.frame_size]


def test_snapshot_headers_clamp_nanoseconds_and_file_headers_grow_a_byte_as_hashpipe_does():
    header = {"quabo_num": 2, "pkt_num": 1, "pkt_tai": 3, "pkt_nsec": 1_500_000_000, "tv_sec": 17, "tv_usec": 5}
    snapshot = format_header(header, style="snapshot")
    assert len(snapshot) == data_product("ph256").header_size
    assert parse_header(snapshot)["pkt_nsec"] == 999_999_999
    wide = format_header(header)
    assert len(wide) == data_product("ph256").header_size + 1 and parse_header(wide)["pkt_nsec"] == 1_500_000_000


def test_image_header_sizes_are_those_of_hashpipes_files_and_snapshots():
    header = {f"quabo_{i}": {"pkt_num": 5, "pkt_tai": 1, "pkt_nsec": 7, "tv_sec": 9, "tv_usec": 3} for i in range(4)}
    assert len(format_header(header)) == 489 + 3
    assert len(format_header(header, style="snapshot")) == 478 + 3


def test_empty_file_has_no_frames(tmp_path):
    empty = tmp_path / "start_2024-07-25T04:34:46Z.dp_img8.bpp_1.module_1.seqno_0.pff"
    empty.touch()
    with PffReader(empty) as reader:
        assert (reader.n_frames, reader.trailing_bytes) == (0, 0)


def test_a_file_that_is_not_pff_is_rejected_with_a_clear_error(tmp_path):
    bogus = tmp_path / "start_2024-07-25T04:34:46Z.dp_img16.bpp_2.module_1.seqno_0.pff"
    bogus.write_bytes(b"hello world" * 100)
    with pytest.raises(PffError, match="does not start with a PFF frame header"):
        PffReader(bogus).open()
    with pytest.raises(PffError, match="not a PFF data file name"):
        PffReader(tmp_path / "notes.txt").open()
