"""A write job owns its HDF5 recording (created on start, committed under its name, or discarded), and a write
that falls behind its streams drops new frames, counts them and says so, instead of growing."""

from __future__ import annotations

import threading
import time

import h5py
import pytest
from conftest import SAMPLE_IMG16

from std_daq_service.broker import RequestContext
from std_daq_service.config import AgentStream
from std_daq_service.pff import PffReader
from std_daq_service.protocol import RequestTimeout, StorageError, WriteRequest, encode_frames, peek
from std_daq_service.writer.h5_recording import H5Recording
from std_daq_service.writer.output_paths import part_path
from std_daq_service.writer.ring_buffer import RingBuffer
from std_daq_service.writer.stream_receiver import ReceivedBatch, StreamReceiver
from std_daq_service.writer.write_job import Selection, WriteJob

AGENT = "a.b.hp_io_agent"


def messages(n: int, per_message: int = 100, module_id: int = 1) -> list[ReceivedBatch]:
    with PffReader(SAMPLE_IMG16) as reader:
        block = reader.block(0, per_message)
    out = []
    for i in range(n):
        seq = block.frame_numbers + i * per_message
        parts = encode_frames(source=AGENT, origin="file", module_id=module_id, dp="img16", shape=(32, 32),
                              run="obs_x", file=SAMPLE_IMG16.name, seqno=0, frame_number=seq, seq=seq,
                              wr_timestamp_ns=block.wr_timestamp_ns, host_timestamp_ns=block.host_timestamp_ns,
                              pff_fields=block.fields, image_bytes=block.image_bytes)
        buffers = [memoryview(p) for p in parts]
        out.append(ReceivedBatch(AGENT, peek(buffers), buffers, time.time_ns(), time.monotonic()))
    return out


def job(tmp_path, request: WriteRequest, name: str = "x.h5", past: tuple[ReceivedBatch, ...] = (),
        **options) -> WriteJob:
    receiver = StreamReceiver("a.b.writer", [AgentStream(name=AGENT, data="tcp://127.0.0.1:1")],
                              RingBuffer(10, 1 << 30))
    for received in past:
        receiver.ring.add(received)
    ctx = RequestContext("r1", request, "a.b.writer", publish=lambda status: None)
    selection = Selection(frozenset({AGENT}), frozenset(request.module_ids), frozenset(request.data_products))
    recording = H5Recording(tmp_path / name, "none", {}, overwrite=request.overwrite)
    return WriteJob(request, ctx, receiver, recording, selection, 10, **options)


def test_a_write_behind_its_streams_drops_counts_and_warns(tmp_path):
    incoming = messages(6)
    writing = job(tmp_path, WriteRequest(output_file="behind.h5", n_images=300),
                  max_backlog_bytes=sum(m.nbytes for m in incoming[:3]) - 1)
    for received in incoming:  # six messages arrive before the write consumes any
        writing.offer(received)
    assert writing.dropped_frames == 300, "three of six 100-frame messages fit the backlog"
    result = writing.run()  # the write catches up with what it kept
    assert result["frames"] == 300 and result["end_reason"] == "300 frames per stream recorded"
    assert result["warnings"] == ["the file could not keep up with the stream: 300 frames were dropped (seq gaps "
                                  "in the file)"]


def test_streams_flowing_when_a_write_starts_are_in_its_first_file_however_late_their_frames_come(tmp_path):
    """Pulse heights come in small bursts, images in 1 MiB ones: a stream whose first frames reach the write after
    the file opened for readers would start a new part, unless the write gave it its datasets at the start."""
    request = WriteRequest(output_file="x.h5", n_images=100, module_ids=[1, 2], data_products=["img16"])
    writing = job(tmp_path, request, past=(messages(1, module_id=1)[0], messages(1, module_id=2)[0]))
    thread = threading.Thread(target=lambda: results.append(writing.run()))
    results: list[dict] = []
    writing.offer(messages(1, module_id=1)[0])
    thread.start()
    deadline = time.monotonic() + 30
    while not (writing.recording.current and writing.recording.current.swmr) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writing.recording.current.swmr, "the file opened for readers with module 1's frames in it"
    writing.offer(messages(1, module_id=2)[0])
    thread.join(30)
    assert results and results[0]["frames"] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"], "one file, no parts"
    with h5py.File(tmp_path / "x.h5") as f:
        assert f["module_1/img16/data"].shape[0] == f["module_2/img16/data"].shape[0] == 100


def test_a_recording_is_written_as_part_and_committed_under_its_name(tmp_path):
    recording = H5Recording(tmp_path / "x.h5", "none", {"request_id": "r1"})
    assert not list(tmp_path.iterdir()), "nothing happens before start"
    with recording:
        assert [p.name for p in tmp_path.iterdir()] == [part_path(tmp_path / "x.h5").name]
        recording.append(AGENT, messages(1)[0].batch, slice(0, 10))
        recording.commit(True, "done")
    recording.close()
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]
    with h5py.File(tmp_path / "x.h5") as f:
        assert f.attrs["complete"] and f.attrs["request_id"] == "r1" and f["module_1/img16/data"].shape[0] == 10


def test_a_recording_closed_without_commit_leaves_nothing_and_closes_twice(tmp_path):
    recording = H5Recording(tmp_path / "x.h5", "none", {}).start()
    recording.append(AGENT, messages(1)[0].batch, slice(0, 10))
    recording.flush()
    recording.close()
    recording.close()
    assert not list(tmp_path.iterdir())


def test_a_failed_write_keeps_what_it_recorded_marked_incomplete(tmp_path):
    request = WriteRequest(output_file="x.h5", n_images=200, module_ids=[1, 2], data_products=["img16"],
                           timeout_seconds=0.2)
    failing = job(tmp_path, request)
    failing.offer(messages(1)[0])
    with pytest.raises(RequestTimeout, match="module 2 img16"):
        failing.run()
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]
    with h5py.File(tmp_path / "x.h5") as f:
        assert not f.attrs["complete"] and f["module_1/img16/data"].shape[0] == 100


def test_a_failed_write_with_nothing_recorded_leaves_nothing(tmp_path):
    request = WriteRequest(output_file="x.h5", n_images=200, module_ids=[2], timeout_seconds=0.2)
    with pytest.raises(RequestTimeout):
        job(tmp_path, request).run()
    assert not list(tmp_path.iterdir())


def test_a_file_that_cannot_be_committed_fails_the_write_and_leaves_no_part_file(tmp_path):
    (tmp_path / "x.h5").mkdir()  # the rename onto the final name fails
    (tmp_path / "x.h5" / "keep").touch()
    writing = job(tmp_path, WriteRequest(output_file="x.h5", n_images=100, overwrite=True))
    writing.offer(messages(1)[0])
    with pytest.raises(StorageError, match="nothing kept"):
        writing.run()
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"] and (tmp_path / "x.h5").is_dir()
