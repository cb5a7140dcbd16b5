"""A write that falls behind its streams drops new frames, counts them and says so, instead of growing."""

from __future__ import annotations

import time

from conftest import SAMPLE_IMG16

from std_daq_service.broker import RequestContext
from std_daq_service.config import AgentStream
from std_daq_service.pff import PffReader
from std_daq_service.protocol import WriteRequest, encode_frames
from std_daq_service.writer.h5_recording import H5Recording
from std_daq_service.writer.stream_receiver import ReceivedBatch, RingBuffer, StreamReceiver
from std_daq_service.writer.write_job import Selection, WriteJob


def messages(n: int, per_message: int = 100) -> list[ReceivedBatch]:
    with PffReader(SAMPLE_IMG16) as reader:
        block = reader.block(0, per_message)
    out = []
    for i in range(n):
        seq = block.frame_numbers + i * per_message
        parts = encode_frames(source="a.b.hp_io_agent", origin="file", module_id=1, dp="img16", shape=(32, 32),
                              run="obs_x", file=SAMPLE_IMG16.name, seqno=0, frame_number=seq, seq=seq,
                              wr_timestamp_ns=block.wr_timestamp_ns, host_timestamp_ns=block.host_timestamp_ns,
                              pff_fields=block.fields, image_bytes=block.image_bytes)
        out.append(ReceivedBatch("a.b.hp_io_agent", 1, "img16", [memoryview(p) for p in parts], time.time_ns(),
                                 time.monotonic()))
    return out


def test_a_write_behind_its_streams_drops_counts_and_warns(tmp_path):
    incoming = messages(6)
    receiver = StreamReceiver([AgentStream(name="a.b.hp_io_agent", data="tcp://127.0.0.1:1")], RingBuffer(10, 1 << 30))
    request = WriteRequest(output_file="behind.h5", n_images=300)
    ctx = RequestContext("r1", request, "a.b.writer", publish=lambda status: None)
    recording = H5Recording(tmp_path / "behind.h5", "none", {})
    job = WriteJob(request, ctx, receiver, recording, Selection(frozenset({"a.b.hp_io_agent"}), frozenset(),
                                                                 frozenset()), 10,
                   max_backlog_bytes=sum(m.nbytes for m in incoming[:3]) - 1)
    for received in incoming:  # six messages arrive, as the receiver offers them, before the write takes any
        job.offer(received)
    complete, reason = job.run()  # the write catches up with what it kept
    recording.close(complete, reason)
    assert job.dropped_frames == 300, "three of six 100-frame messages fit the backlog"
    assert recording.summary()["1/img16"]["frames"] == 300 and reason == "300 frames per stream recorded"
    assert job.warnings == ["the file could not keep up with the stream: 300 frames were dropped (seq gaps in the "
                            "file)"]
