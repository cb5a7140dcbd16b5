"""A stream followed through everything Hashpipe does to its files: every completed frame once, losses counted.

The producer is `helpers.hashpipe.HashpipeFiles` (stdio buffering, open-before-close rollover,
restarts that truncate in place, a writer dying mid-frame); the reader is the agent's
`StreamTailer` with the real inotify `FileWatcher`, restarted from its checkpoint position at
random points.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from conftest import SAMPLE_IMG16, SAMPLE_PH256_M1
from helpers.hashpipe import HashpipeFiles
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from std_daq_service.hp_io_agent.file_watcher import FileWatcher
from std_daq_service.hp_io_agent.run_discovery import files_of, stream_file
from std_daq_service.hp_io_agent.stream_tailer import StreamTailer

SOURCES = {"img16": (SAMPLE_IMG16.read_bytes(), 2540), "ph256": (SAMPLE_PH256_M1.read_bytes(), 636)}

OPS = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(sorted(SOURCES)), st.integers(1, 700)),
    st.tuples(st.just("read")),
    st.tuples(st.just("restart_agent")),
    st.tuples(st.just("restart_hashpipe")),
    st.tuples(st.just("crash_mid_frame"), st.sampled_from(sorted(SOURCES)), st.integers(1, 2539)),
)


class Follower:
    """One StreamTailer per data product, fed with the files discovery would find."""

    def __init__(self, hashpipe: HashpipeFiles, watcher: FileWatcher):
        self.hashpipe = hashpipe
        self.watcher = watcher
        self.streams = {dp: self._new(stream_file(hashpipe.path(dp))) for dp in SOURCES}
        self.received: dict[str, list[tuple[int, bytes]]] = {dp: [] for dp in SOURCES}

    def _new(self, file, position=None):
        return StreamTailer(file, False, 100, 30.0, self.watcher, resume=position).start()

    def read(self, final: bool = False) -> None:
        self.watcher.wait(0)
        for dp, stream in self.streams.items():
            stream.offer(files_of(self.hashpipe.run_dir, (self.hashpipe.module_id, dp))[-1])
            stream.run_ended = final
            while (block := stream.read()) is not None:
                self.received[dp] += list(zip(block.seq.tolist(), (bytes(r) for r in block.block.raw), strict=True))

    def restart(self) -> None:
        for dp, stream in self.streams.items():
            position = stream.position()
            stream.close()
            self.streams[dp] = self._new(stream_file(Path(position["file"])), position)

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=25))
def test_every_completed_frame_arrives_once_in_order_and_every_loss_is_a_counted_seq_gap(ops):
    directory = Path(tempfile.mkdtemp(prefix="hashpipe"))
    watcher = FileWatcher().start()
    hashpipe = HashpipeFiles(directory / "module_1" / "obs_T.start_2026-12-02T00:00:00Z.runtype_sci.pffd", 1,
                             max_file_bytes=150_000).open()
    watcher.watch([hashpipe.run_dir])
    follower = Follower(hashpipe, watcher)
    completed = {dp: [] for dp in SOURCES}
    torn = dict.fromkeys(SOURCES, 0)
    position = dict.fromkeys(SOURCES, 0)
    try:
        for op in ops:
            if op[0] == "write":
                data, size = SOURCES[op[1]]
                for _ in range(op[2]):
                    frame = data[position[op[1]] : position[op[1]] + size]
                    position[op[1]] = (position[op[1]] + size) % (1000 * size)
                    hashpipe.write(op[1], frame)
                    completed[op[1]].append(frame)
            elif op[0] == "read":
                follower.read()
            elif op[0] == "restart_agent":
                follower.restart()
            elif op[0] == "restart_hashpipe" and hashpipe.at_first_seqno():
                hashpipe.close()  # the old process flushes at its exit ...
                follower.read()  # ... and what it flushed is read before the new one truncates the files
                hashpipe.open()
            elif op[0] == "crash_mid_frame":
                data, size = SOURCES[op[1]]
                keep = min(op[2], size - 1)
                hashpipe.crash_mid_frame(op[1], data[:size], keep)
                torn[op[1]] += 1
        hashpipe.close()
        for _ in range(3):
            follower.read(final=True)
        for dp in SOURCES:
            seq = [s for s, _ in follower.received[dp]]
            frames = [f for _, f in follower.received[dp]]
            assert frames == completed[dp], f"{dp}: frames differ from the completed ones; ops {ops}"
            assert seq == sorted(set(seq)), f"{dp}: seq not strictly increasing"
            next_seq = follower.streams[dp].next_seq
            assert next_seq == len(frames) + torn[dp], f"{dp}: every torn frame, and nothing else, is a seq gap"
            assert all(s < next_seq for s in seq)
    finally:
        follower.close()
        hashpipe.close()
        watcher.close()
        shutil.rmtree(directory)
