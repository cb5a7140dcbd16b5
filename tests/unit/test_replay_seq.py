"""The `seq` of replayed frames and the seam between a write's replayed past and its ring buffer."""

from __future__ import annotations

import dataclasses

import numpy as np
from conftest import SAMPLE_IMG16

from std_daq_service.hp_io_agent.replay_window import Piece, replay_seq
from std_daq_service.hp_io_agent.run_discovery import stream_file
from std_daq_service.hp_io_agent.seq_index import SeqIndex
from std_daq_service.pff import PffReader
from std_daq_service.protocol import decode_frames, encode_frames
from std_daq_service.writer.replay_seam import OVERLAP_NS, Seam


def piece(start: int, stop: int) -> Piece:
    return Piece(stream_file(SAMPLE_IMG16), None, start, stop, 0, 2**62)  # type: ignore[arg-type]


def test_the_seq_index_gives_the_live_seq_and_where_frames_were_lost_the_shifted_one():
    index = SeqIndex()
    path = str(SAMPLE_IMG16)
    index.record(path, 100, 5000, 50)  # frames 100..149 published as seq 5000..5049
    index.record(path, 150, 5052, 10)  # two frames lost between: frames 150..159 are seq 5052..5061
    seq, known = index.lookup(path, np.arange(98, 162))
    assert known.tolist() == [False] * 2 + [True] * 60 + [False] * 2
    assert seq[2:52].tolist() == list(range(5000, 5050)) and seq[52:62].tolist() == list(range(5052, 5062))


def test_replayed_frames_keep_the_live_seq_and_continue_it_where_the_live_stream_never_sent_them():
    index = SeqIndex()
    index.record(str(SAMPLE_IMG16), 300, 7000, 100)  # the live stream began at frame 300 of this file
    first, second = piece(100, 300), piece(300, 450)
    seq = np.concatenate(replay_seq([first, second], index))
    assert seq.tolist() == list(range(6800, 7150)), "backwards before the first known, forwards after the last"
    untracked = np.concatenate(replay_seq([piece(0, 10)], SeqIndex()))
    assert untracked.tolist() == list(range(10)), "an untracked file: from 0"


def batches(first: int, n: int, per: int = 100) -> list:
    with PffReader(SAMPLE_IMG16) as reader:
        block = reader.block(first, first + n)
        out = []
        for a in range(0, n, per):
            part = block[a : a + per]
            parts = encode_frames(source="a", origin="file", module_id=1, dp="img16", shape=(32, 32), run="obs_r",
                                  file=SAMPLE_IMG16.name, seqno=0, frame_number=part.frame_numbers,
                                  seq=part.frame_numbers, wr_timestamp_ns=part.wr_timestamp_ns,
                                  host_timestamp_ns=part.host_timestamp_ns, pff_fields=part.fields,
                                  image_bytes=part.image_bytes)
            out.append(decode_frames(parts))
        return out


def test_the_seam_records_replayed_frames_up_to_the_ring_buffer_and_ring_frames_from_there():
    ring = batches(600, 300)
    start = int(batches(0, 1)[0].frame_times_ns[0])
    seam = Seam.plan(start, None, ring, now_ns=2**62)
    assert seam.stop_ns == int(ring[0].frame_times_ns[0]) + OVERLAP_NS and not seam.whole_window
    replayed = batches(0, 1000, per=250)  # reaches well into the ring buffer
    kept = []
    for batch in replayed:
        rows = seam.replayed_rows(batch)
        seam.recorded(batch, rows)
        kept.extend(batch.frame_number[:rows].tolist())
    assert kept == list(range(600)), "replayed frames stop at the ring buffer's first frame"
    assert all(seam.live_first_row(b) == 0 for b in ring), "the ring buffer then records everything it holds"


def test_a_stream_without_ring_frames_joins_the_live_frames_after_its_last_replayed_one():
    seam = Seam.plan(0, None, [], now_ns=10**18)
    assert seam.stop_ns == 10**18 and seam.whole_window
    replayed = batches(0, 200)
    for batch in replayed:
        seam.recorded(batch, len(batch))
    live = batches(150, 200)
    assert seam.live_first_row(live[0]) == 50, "frames 150..199 were replayed already"
    assert seam.live_first_row(live[1]) == 0
    later_file = dataclasses.replace(live[0], seqno=1, frame_number=live[0].frame_number - 150)
    assert seam.live_first_row(later_file) == 0


def test_no_replay_when_the_ring_buffer_reaches_back_to_the_start():
    ring = batches(0, 200)
    assert Seam.plan(int(ring[0].frame_times_ns[5]), None, ring, now_ns=2**62).stop_ns is None
