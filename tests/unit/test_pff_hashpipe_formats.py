"""Files as every Hashpipe version writes them: learnt header sizes, variable widths, torn frames, rewrites."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import PYPFF_PH256, SAMPLE_IMG16, SAMPLE_PH256_M1, SAMPLE_PH256_M3, SHARED_DATA
from helpers.hashpipe import header_text, quabo_fields
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from std_daq_service.pff import WR_INVALID, PffReader, PffTailer

IMG16_NAME = "start_2024-07-25T04:34:46Z.dp_img16.bpp_2.module_1.seqno_0.pff"
T0 = 1_721_882_092_779_007_488
PH256_FRAMES = [SAMPLE_PH256_M1.read_bytes()[i * 636 : (i + 1) * 636] for i in range(10)]
LICK = SHARED_DATA / "lick_2024-07-25/obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"


def reference_frames(data: bytes, image_size: int) -> list[tuple[dict, bytes]]:
    """Read frames as panoseti's util/pff.py does: the header up to the blank line, then `*`, then the image."""
    frames, pos = [], 0
    while True:
        end = data.find(b"\n\n", pos)
        if end < 0 or end + 3 + image_size > len(data):
            return frames
        assert data[end + 2 : end + 3] == b"*"
        frames.append((json.loads(data[pos:end]), data[end + 3 : end + 3 + image_size]))
        pos = end + 3 + image_size


def images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4096, 1024, dtype=np.uint16).tobytes() for _ in range(n)]


def early_file(n: int) -> bytes:
    """img16 frames in the early format: no field widths, so headers change size from frame to frame."""
    return b"".join(header_text("img16", quabo_fields(T0 + k * 10**9 // 7 * 13, 9 ** (k % 11)), "early") + image
                    for k, image in enumerate(images(n)))


def read_all(path) -> list[bytes]:
    with PffReader(path) as reader:
        return [frame.raw for frame in reader]


def tail_all(path, data: bytes, cuts: list[int]) -> tuple[list[bytes], PffTailer]:
    frames, previous = [], 0
    path.touch()
    with PffTailer(path) as tailer, open(path, "ab", buffering=0) as f:
        for cut in [*sorted(set(cuts)), len(data)]:
            f.write(data[previous:cut])
            previous = cut
            while (block := tailer.read_new()) is not None:
                frames += [frame.raw for frame in (block.frame(i) for i in range(len(block)))]
        while (block := tailer.read_new(final=True)) is not None:
            frames += [block.frame(i).raw for i in range(len(block))]
    return frames, tailer


def test_an_early_format_file_whose_header_size_varies_is_read_exactly_as_the_reference_reads_it(tmp_path):
    data = early_file(40)
    reference = reference_frames(data, 2048)
    assert len(reference) == 40 and len({len(json.dumps(h)) for h, _ in reference}) > 1
    path = tmp_path / IMG16_NAME
    path.write_bytes(data)
    with PffReader(path) as reader:
        assert reader.n_frames == 40 and reader.variable_headers and reader.corrupt_bytes == 0
        got = [(frame.header, frame.image.tobytes()) for frame in reader]
        blocks = list(reader.iter_blocks())
        assert all((b.wr_timestamp_ns == WR_INVALID).all() for b in blocks), "pkt_utc gives no WR time"
        host = np.concatenate([b.host_timestamp_ns for b in blocks])
    assert got == reference
    assert host.tolist() == [h["quabo_0"]["tv_sec"] * 10**9 + h["quabo_0"]["tv_usec"] * 1000 for h, _ in reference]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 40 * 2700), max_size=30))
def test_a_growing_early_format_file_yields_every_frame_once_whatever_the_appends(tmp_path_factory, cuts):
    data = early_file(40)
    path = tmp_path_factory.mktemp("early") / IMG16_NAME
    frames, tailer = tail_all(path, data, cuts)
    assert [json.loads(f[: f.index(b"\n\n")]) for f in frames] == [h for h, _ in reference_frames(data, 2048)]
    assert b"".join(frames) == data and tailer.lost_frames == 0


def test_a_frame_whose_header_is_a_byte_longer_than_its_neighbours_is_read_not_lost(tmp_path):
    frames = [header_text("img16", quabo_fields(T0 + k * 10**6, k)) + image for k, image in enumerate(images(9))]
    wide = quabo_fields(T0 + 4 * 10**6, 4)
    wide["pkt_nsec"] += 10**9  # file headers do not clamp pkt_nsec: 10 digits in a 9-wide field
    frames[4] = header_text("img16", wide) + images(9)[4]
    assert len(frames[4]) > len(frames[3])
    path = tmp_path / IMG16_NAME
    path.write_bytes(b"".join(frames))
    assert read_all(path) == frames
    path.unlink()
    got, tailer = tail_all(path, b"".join(frames), [])
    assert got == frames and tailer.lost_frames == 0


def test_a_torn_frame_followed_by_whole_frames_is_dropped_and_counted_and_the_next_frames_are_exact(tmp_path):
    source = SAMPLE_IMG16.read_bytes()[: 30 * 2540]
    rows = [source[i * 2540 : (i + 1) * 2540] for i in range(30)]
    data = b"".join(rows[:10]) + rows[10][:1300] + b"".join(rows[11:])  # a writer died mid-frame, another went on
    path = tmp_path / IMG16_NAME
    path.write_bytes(data)
    expected = rows[:10] + rows[11:]
    with PffReader(path) as reader:
        assert [f.raw for f in reader] == expected
        assert (reader.lost_frames, reader.corrupt_bytes) == (1, 1300)
    for cuts in ([], [10 * 2540 + 1300 + 5], list(range(0, len(data), 977))):
        path.unlink()
        got, tailer = tail_all(path, data, cuts)
        assert got == expected and (tailer.lost_frames, tailer.corrupt_bytes) == (1, 1300), cuts


def test_a_torn_frame_whose_rest_is_only_the_start_of_the_next_header_waits_then_is_dropped(tmp_path):
    rows = [SAMPLE_PH256_M1.read_bytes()[i * 636 : (i + 1) * 636] for i in range(6)]
    torn = rows[2][:600]  # the row of 636 bytes then ends with the first 36 bytes of the next frame
    data = b"".join(rows[:2]) + torn + b"".join(rows[3:])
    path = tmp_path / "start_2024-07-25T04:34:46Z.dp_ph256.bpp_2.module_1.seqno_0.pff"
    for cut in range(2 * 636 + 600 + 1, 3 * 636 + 40):
        path.unlink(missing_ok=True)
        got, tailer = tail_all(path, data, [cut])
        assert got == rows[:2] + rows[3:], f"appends cut at {cut}"
        assert tailer.lost_frames == 1


@pytest.mark.parametrize("path", [SAMPLE_IMG16, SAMPLE_PH256_M1, SAMPLE_PH256_M3, PYPFF_PH256],
                         ids=lambda p: p.name[:40])
def test_the_embedded_excerpts_read_exactly_as_pypff_reads_them(path, tmp_path):
    compare_with_pypff(path, tmp_path)


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["dp_img16.bpp_2.module_1", "dp_ph256.bpp_2.module_1", "dp_ph256.bpp_2.module_3"])
def test_the_full_archived_files_read_exactly_as_pypff_reads_them(name, tmp_path):
    files = sorted(LICK.glob(f"*{name}*.pff")) if LICK.exists() else []
    if not files:
        pytest.skip(f"full archived data not present at {SHARED_DATA} (set PANOSETI_DATA)")
    compare_with_pypff(files[0], tmp_path)


def compare_with_pypff(path, tmp_path) -> None:
    pypff = pytest.importorskip("pypff", reason="pypff is installed by setup_dev_env.sh")
    named = tmp_path / path.name.replace("T04_34_46Z", "T04:34:46Z")  # pypff parses only ':' time separators
    named.symlink_to(path)
    with PffReader(path) as reader:
        data, metadata = pypff.datapff(str(named)).readpff(samples=reader.n_frames, metadata=True)
        ours = np.concatenate([b.images().reshape(len(b), -1) for b in reader.iter_blocks()])
        blocks = list(reader.iter_blocks())
        fields = {name: np.concatenate([b.fields[name] for b in blocks]) for name in blocks[0].fields}
    assert np.array_equal(ours, data)
    if "quabo_num" in fields:
        for name, values in metadata.items():
            assert np.array_equal(fields[name], values.astype(np.int64)), name
    else:
        for quabo, by_field in metadata.items():
            for name, values in by_field.items():
                assert np.array_equal(fields[name][:, int(quabo[-1])], values.astype(np.int64)), (quabo, name)


def test_a_file_rewritten_in_place_that_grew_past_the_offset_is_read_again_from_its_first_frame(tmp_path):
    first = SAMPLE_IMG16.read_bytes()[: 10 * 2540]
    second = SAMPLE_IMG16.read_bytes()[100 * 2540 : 120 * 2540]
    path = tmp_path / IMG16_NAME
    path.write_bytes(first)
    with PffTailer(path) as tailer:
        assert len(tailer.read_new()) == 10
        with open(path, "r+b") as f:  # Hashpipe restarted within the same second: fopen("w"), then frames
            f.truncate(0)
            f.write(second)
        block = tailer.read_new()
        assert block.first_frame_number == 0 and block.raw.tobytes() == second
        assert "rewritten in place" in tailer.events[-1]


def test_a_file_replaced_by_rename_is_noticed_and_the_new_one_read_from_its_first_frame(tmp_path):
    data = SAMPLE_IMG16.read_bytes()
    path = tmp_path / IMG16_NAME
    path.write_bytes(data[: 5 * 2540])
    with PffTailer(path) as tailer:
        assert len(tailer.read_new()) == 5
        other = tmp_path / "incoming.tmp"
        other.write_bytes(data[50 * 2540 : 53 * 2540])
        os.replace(other, path)
        assert tailer.read_new() is None and tailer.replaced()
        tailer.reopen()
        block = tailer.read_new()
        assert block.raw.tobytes() == data[50 * 2540 : 53 * 2540] and block.first_frame_number == 0


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.one_of(st.integers(0, 59), st.binary(min_size=1, max_size=3000),
                                 st.tuples(st.integers(0, 59), st.integers(1, 2539))), max_size=25),
       prefix=st.sampled_from([0, 2]))
@example(pieces=[(0, 2537), (0, 1)], prefix=2)  # torn records adding up to one row, the second cut after its `{`
@example(pieces=[(0, 2538), (0, 1), 0], prefix=2)  # the same, its `{` just after the row
def test_any_mix_of_frames_torn_frames_and_garbage_ends_and_yields_only_real_frames(pieces, prefix):
    """The scanner always finishes, and whatever it returns is a frame that was written whole.

    Socket records (prefix 2) may be torn one after another (partial writes), and the scanner checks
    every row there; a file has one writer, so a torn piece is followed by whole frames. Garbage comes
    after whole frames (a torn frame ending in garbage cannot be told from a whole one).
    """
    from std_daq_service.pff import FrameScanner, data_product

    pieces = [p for i, p in enumerate(pieces) if not isinstance(p, bytes) or i == 0 or isinstance(pieces[i - 1], int)]
    if not prefix:
        pieces = [q for p in pieces for q in ([p] if isinstance(p, int) else [p, 0])]
    rows = [SAMPLE_IMG16.read_bytes()[i * 2540 : (i + 1) * 2540] for i in range(60)]
    head = b"\x00\x07" if prefix else b""
    data = b"".join(head + rows[p] if isinstance(p, int) else head + rows[p[0]][: p[1]] if isinstance(p, tuple) else p
                    for p in pieces)
    scanner = FrameScanner(data_product("img16"), prefix=prefix, check_every_row=bool(prefix))
    buf, position, found = np.frombuffer(data, dtype=np.uint8), 0, []
    for _ in range(len(data) + 2):
        step = scanner.step(buf[position:], final=True)
        if step.block is not None:
            found += [bytes(r) for r in step.block.raw]
        position += step.end
        if step.end == 0:
            break
    else:
        pytest.fail("the scanner did not finish")
    assert set(found) <= set(rows)
    whole = [p for p in pieces if isinstance(p, int)]
    assert len(found) <= len(whole)


@pytest.mark.parametrize("follow", [False, True], ids=["at_the_end", "then_a_whole_record"])
@pytest.mark.parametrize(("torn", "module_id", "sent"), [(2537, 7, 3), (2537, 3, 3), (2538, 7, 3), (2534, 9, 6)],
                         ids=["brace_ends_the_row", "other_known_module", "brace_after_the_row", "new_module"])
def test_torn_records_that_add_up_to_one_row_are_not_taken_for_a_frame(torn, module_id, sent, follow):
    """Partial writes: a record torn a few bytes short, then one cut after its `{` (or a few bytes more).

    The row's image then ends in `<module id>{`, and no real image does: both records are lost, not published.
    """
    from std_daq_service.pff import FrameScanner, data_product

    rows = [SAMPLE_IMG16.read_bytes()[i * 2540 : (i + 1) * 2540] for i in range(4)]
    data = (b"\x00\x07" + rows[0] + b"\x00\x03" + rows[1] + b"\x00\x07" + rows[2][:torn]
            + (module_id.to_bytes(2, "big") + rows[3])[:sent] + (b"\x00\x07" + rows[3] if follow else b""))
    scanner = FrameScanner(data_product("img16"), prefix=2, check_every_row=True)
    buf, position, found, lost = np.frombuffer(data, dtype=np.uint8), 0, [], 0
    while (step := scanner.step(buf[position:], final=True)).end:
        lost += step.lost_frames
        found += [bytes(r) for r in step.block.raw] if step.block is not None else []
        position += step.end
    assert found == rows[:2] + rows[3:] * follow
    assert lost + (position < len(data)) == 2, "the torn record and the cut one are each a lost frame"


@pytest.mark.parametrize("prefix", [0, 2])
def test_records_arriving_one_byte_at_a_time_are_all_found_and_nothing_is_skipped(prefix):
    """A fresh reader that gets a record's first bytes alone (a module id not seen yet) waits for the rest."""
    from std_daq_service.pff import FrameScanner, data_product

    frames = [PH256_FRAMES[i] for i in range(4)]
    data = b"".join((b"\x00" + bytes([3 + i]) if prefix else b"") + f for i, f in enumerate(frames))
    scanner = FrameScanner(data_product("ph256"), prefix=prefix, check_every_row=bool(prefix))
    pending, found, skipped = b"", [], 0
    for i in range(len(data)):
        pending += data[i : i + 1]
        while pending:
            step = scanner.step(np.frombuffer(pending, dtype=np.uint8), final=i == len(data) - 1)
            skipped += step.skipped
            if step.block is not None:
                found += [bytes(r) for r in step.block.raw]
            pending = pending[step.end :]
            if step.end == 0:
                break
    assert found == frames and skipped == 0 and pending == b""


def test_a_last_frame_whose_header_is_shorter_than_the_one_before_is_read(tmp_path):
    frames = [header_text("img16", quabo_fields(T0 + k * 10**6, k)) + image for k, image in enumerate(images(4))]
    wide = quabo_fields(T0 + 2 * 10**6, 2)
    wide["pkt_nsec"] += 10**9
    frames[2] = header_text("img16", wide) + images(4)[2]
    path = tmp_path / IMG16_NAME
    path.write_bytes(b"".join(frames))
    with PffReader(path) as reader:
        assert [f.raw for f in reader] == frames and reader.trailing_bytes == 0


def test_a_rewrite_in_place_caught_by_its_first_header_counts_the_unread_old_frames(tmp_path):
    old, new = SAMPLE_IMG16.read_bytes()[: 10 * 2540], SAMPLE_IMG16.read_bytes()[500 * 2540 : 505 * 2540]
    path = tmp_path / IMG16_NAME
    path.write_bytes(old)
    with PffTailer(path, max_bytes=2 * 2540) as tailer:  # it sees the 10 frames, and reads 2 of them
        assert len(tailer.read_new()) == 2
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(new)
        assert tailer.read_new().raw.tobytes() == new[: 2 * 2540]
        assert tailer.lost_frames == 8
