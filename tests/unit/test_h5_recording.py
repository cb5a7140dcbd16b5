"""A recording's files: chunk-aligned appends, SWMR mode once the streams settle, a stream arriving after it starts a
new part, rollover by frames and bytes, a discarded recording leaves nothing, not even its closed parts, and chunks
compressed outside HDF5 are the very bytes its filter writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import SAMPLE_IMG16

from std_daq_service.pff import PffReader
from std_daq_service.protocol import FrameBatch, decode_frames, encode_frames
from std_daq_service.writer.h5_recording import H5Recording, compression_options

AGENT = "a.b.hp_io_agent"


def batch(module_id: int, first_seq: int, n: int = 100) -> FrameBatch:
    with PffReader(SAMPLE_IMG16) as reader:
        block = reader.block(0, n)
    seq = np.arange(first_seq, first_seq + n)
    return decode_frames([memoryview(p) for p in encode_frames(
        source=AGENT, origin="file", module_id=module_id, dp="img16", shape=(32, 32), run="obs_x",
        file=SAMPLE_IMG16.name, seqno=0, frame_number=seq, seq=seq, wr_timestamp_ns=block.wr_timestamp_ns,
        host_timestamp_ns=block.host_timestamp_ns, pff_fields=block.fields, image_bytes=block.image_bytes)])


def test_flushes_append_whole_chunks_and_a_partial_chunk_at_the_next_flush(tmp_path):
    with H5Recording(tmp_path / "x.h5", "none", {}) as recording:
        for i in range(3):
            recording.append(AGENT, batch(1, 100 * i), slice(None))
        recording.flush()  # 300 frames: one chunk of 256, the rest held once
        assert recording.summary()["1/img16"]["rows_in_file"] == 256
        assert not recording.current.swmr, "a new stream came since the last flush: others may follow"
        recording.flush()
        assert recording.summary()["1/img16"]["rows_in_file"] == 300
        assert recording.current.swmr, "no new stream since the last flush: open to readers"
        recording.commit(True, "done")
    with h5py.File(tmp_path / "x.h5") as f:
        assert f["module_1/img16/data"].shape[0] == f["module_1/img16/counts"][()]["n_frames"] == 300


def test_a_stream_arriving_after_the_file_opened_to_readers_starts_a_part(tmp_path):
    with H5Recording(tmp_path / "x.h5", "none", {"request_id": "r"}) as recording:
        recording.append(AGENT, batch(1, 0), slice(None))
        recording.flush()
        recording.flush()
        recording.append(AGENT, batch(2, 0), slice(None))
        recording.append(AGENT, batch(1, 100), slice(None))
        recording.commit(True, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5", "x_part0001.h5", "x_part0002.h5"]
    with h5py.File(tmp_path / "x_part0001.h5") as f:
        assert list(f) == ["module_1"] and "continued in x_part0002.h5" in f.attrs["end_reason"]
    with h5py.File(tmp_path / "x.h5") as f:
        assert list(f.attrs["parts"]) == ["x_part0001.h5", "x_part0002.h5"] and f.attrs["request_id"] == "r"
        assert np.array_equal(f["module_1/img16/seq"][()], np.arange(200))
        assert np.array_equal(f["module_2/img16/seq"][()], np.arange(100))
        assert f["module_1/img16"].attrs["n_frames"] == 200


def test_rollover_by_bytes_keeps_each_part_under_the_limit(tmp_path):
    with H5Recording(tmp_path / "x.h5", "none", {}, max_file_size_mb=0.5) as recording:
        for i in range(10):
            recording.append(AGENT, batch(1, 100 * i), slice(None))
        recording.commit(True, "done")
        row_bytes = recording.streams[(1, "img16")].shape.row_bytes
    with h5py.File(tmp_path / "x.h5") as f:
        parts = list(f.attrs["parts"])
        assert np.array_equal(f["module_1/img16/seq"][()], np.arange(1000))
    rows = []
    for part in parts:
        with h5py.File(tmp_path / part) as f:
            rows.append(f["module_1/img16/data"].shape[0])
    assert sum(rows) == 1000 and len(parts) > 1
    assert all(n * row_bytes <= 500_000 for n in rows) and all((n + 1) * row_bytes > 500_000 for n in rows[:-1])


def test_a_discarded_recording_leaves_no_part(tmp_path):
    recording = H5Recording(tmp_path / "x.h5", "none", {}, max_frames_per_file=150).start()
    for i in range(4):
        recording.append(AGENT, batch(1, 100 * i), slice(None))
    recording.flush(everything=True)
    assert len(recording.parts) == 2
    recording.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("compression", ["bitshuffle_lz4", "none"])
def test_chunks_written_directly_are_what_h5py_and_its_filter_write(tmp_path, compression):
    """Chunks compressed in threads and written with `write_direct_chunk` (a partial one written at a flush in SWMR
    mode and again when it grew, the last one padded) read back equal with plain h5py + hdf5plugin, byte for byte
    the chunks h5py writes through the filter."""
    batches = [batch(1, 100 * i) for i in range(50)] + [batch(1, 5000, 37)]
    with H5Recording(tmp_path / "x.h5", compression, {}) as recording:
        assert recording.codec is not None, "the chunks should bypass HDF5's filter"
        for i, frames in enumerate(batches):
            recording.append(AGENT, frames, slice(None))
            if i in (2, 3, 20):
                recording.flush()  # 300 rows: a partial chunk, held once, then written while it is partial
        assert recording.current.swmr
        recording.commit(True, "done")
    images = np.concatenate([b.images for b in batches])
    with h5py.File(tmp_path / "x.h5") as f, h5py.File(tmp_path / "filter.h5", "w") as g:
        data = f["module_1/img16/data"]
        assert np.array_equal(data[()], images)
        assert np.array_equal(f["module_1/img16/seq"][()], np.concatenate([b.seq for b in batches]))
        assert f["module_1/img16/pff_header/pkt_num"].shape == (len(images), 4)
        reference = g.create_dataset("data", data=images, chunks=data.chunks, maxshape=(None, 32, 32),
                                     **compression_options(compression))
        assert data.id.get_num_chunks() == reference.id.get_num_chunks() == -(-len(images) // data.chunks[0])
        for start in range(0, len(images), data.chunks[0]):
            assert data.id.read_direct_chunk((start, 0, 0)) == reference.id.read_direct_chunk((start, 0, 0))
