"""The tailer returns every complete frame once, in order, whatever the append pattern."""

import os

import numpy as np
from conftest import SAMPLE_IMG16, SAMPLE_PH256_M1
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from std_daq_service.pff import PffTailer

IMG16 = SAMPLE_IMG16.read_bytes()[: 60 * 2540]
PH256 = SAMPLE_PH256_M1.read_bytes()[: 200 * 636]
SOURCES = {
    "img16": (IMG16, 2540, "start_2024-07-25T04:34:46Z.dp_img16.bpp_2.module_1.seqno_0.pff"),
    "ph256": (PH256, 636, "start_2024-07-25T04:34:46Z.dp_ph256.bpp_2.module_1.seqno_0.pff"),
}


def _collect(tailer):
    frames = []
    while (block := tailer.read_new()) is not None:
        frames.extend(bytes(row) for row in block.raw)
        assert block.first_frame_number == tailer.frames_read - len(block)
    return frames


def _append_in_chunks(path, data, cuts, tailer):
    frames = []
    with open(path, "ab", buffering=0) as f:
        previous = 0
        for cut in sorted(set(cuts)) + [len(data)]:
            f.write(data[previous:cut])
            previous = cut
            frames.extend(_collect(tailer))
    return frames


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_chunking_yields_each_frame_once_in_order(tmp_path_factory, data):
    source, frame_size, name = SOURCES[data.draw(st.sampled_from(sorted(SOURCES)), label="source")]
    cuts = data.draw(st.lists(st.integers(0, len(source)), max_size=80))
    tiny = data.draw(st.booleans())
    if tiny:  # also 1-byte appends around a header boundary
        cuts += list(range(frame_size - 5, frame_size + 130))
    path = tmp_path_factory.mktemp("tail") / name
    path.touch()
    with PffTailer(path) as tailer:
        frames = _append_in_chunks(path, source, cuts, tailer)
    expected = [source[i : i + frame_size] for i in range(0, len(source), frame_size)]
    assert frames == expected


def test_empty_file_then_growth(tmp_path):
    path = tmp_path / SAMPLE_IMG16.name
    path.touch()
    with PffTailer(path) as tailer:
        assert tailer.read_new() is None
        with open(path, "ab") as f:
            f.write(IMG16[:2540 + 100])
        block = tailer.read_new()
        assert len(block) == 1 and tailer.read_new() is None
        assert tailer.lag_bytes == 100


def test_torn_trailing_frame_of_a_real_file_is_never_returned(tmp_path):
    with PffTailer(SAMPLE_IMG16) as tailer:
        frames = _collect(tailer)
        assert len(frames) == 1000 and tailer.lag_bytes == 640
    assert tailer.lag_bytes == 0, "a closed tailer reports no lag and does not reopen the file"


def test_garbage_in_the_middle_is_skipped_counted_and_followed_by_every_later_frame(tmp_path):
    frame = 2540
    garbage = os.urandom(1000).replace(b"{", b"(")
    corrupted_header = bytearray(IMG16[10 * frame : 11 * frame])
    corrupted_header[20:24] = b"@@@@"  # a broken number inside frame 10's header
    data = IMG16[: 5 * frame] + garbage + IMG16[5 * frame : 10 * frame] + bytes(corrupted_header) + IMG16[11 * frame :]
    path = tmp_path / SAMPLE_IMG16.name
    path.write_bytes(data)
    with PffTailer(path) as tailer:
        frames = _collect(tailer)
    expected = [IMG16[i * frame : (i + 1) * frame] for i in range(60) if i != 10]
    assert frames == expected
    assert tailer.resyncs == 2
    assert tailer.corrupt_bytes == 1000 + frame


def test_marker_corruption_with_growth_resynchronises(tmp_path):
    frame = 636
    bad = bytearray(PH256[:frame])
    bad[121:124] = b"xxx"
    path = tmp_path / SAMPLE_PH256_M1.name
    path.write_bytes(bytes(bad))
    with PffTailer(path) as tailer:
        assert tailer.read_new() is None
        with open(path, "ab") as f:
            f.write(PH256[frame : 3 * frame])
        block = tailer.read_new()
        assert block is not None
        assert [bytes(r) for r in block.raw] == [PH256[frame : 2 * frame], PH256[2 * frame : 3 * frame]]
        assert tailer.corrupt_bytes == frame


def test_a_file_that_shrinks_is_reported_and_its_new_content_read_from_its_first_frame(tmp_path):
    path = tmp_path / SAMPLE_PH256_M1.name
    path.write_bytes(PH256[: 10 * 636])
    with PffTailer(path) as tailer:
        assert len(tailer.read_new()) == 10
        path.write_bytes(PH256[20 * 636 : 21 * 636])
        block = tailer.read_new()
        assert [bytes(r) for r in block.raw] == [PH256[20 * 636 : 21 * 636]] and block.first_frame_number == 0
        assert "shrank" in tailer.events[-1]


def test_skip_to_end_returns_only_frames_appended_afterwards(tmp_path):
    path = tmp_path / SAMPLE_IMG16.name
    path.write_bytes(IMG16[: 3 * 2540 + 100])
    with PffTailer(path) as tailer:
        tailer.skip_to_end()
        assert tailer.frames_read == 3 and tailer.read_new() is None
        with open(path, "ab") as f:
            f.write(IMG16[3 * 2540 + 100 : 5 * 2540])
        block = tailer.read_new()
        assert block.first_frame_number == 3
        assert [bytes(r) for r in block.raw] == [IMG16[3 * 2540 : 4 * 2540], IMG16[4 * 2540 : 5 * 2540]]


def test_max_bytes_bounds_each_block(tmp_path):
    path = tmp_path / SAMPLE_IMG16.name
    path.write_bytes(IMG16)
    with PffTailer(path, max_bytes=10 * 2540) as tailer:
        sizes = []
        while (block := tailer.read_new()) is not None:
            sizes.append(len(block))
    assert sizes == [10] * 6
    assert np.sum(sizes) == 60
