"""One replay request: publish the frames of a past window from the PFF files, in stream order, then `replay_end`.

Per stream (module and data product) the files of the window are read in order across seqnos and runs, each
frame once, with the `seq` of `replay_window`. A stream whose file vanishes while it is replayed (its run dir was
collected) stops there: the result is marked partial (`complete: false`, `partial` per stream), the other streams
go on. The last message is a `replay_end` control message carrying the result, so a requester knows it has every
frame without waiting for the request's final status.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from std_daq_service.broker import RequestContext
from std_daq_service.hp_io_agent.replay_publisher import ReplayPublisher
from std_daq_service.hp_io_agent.replay_window import Piece, candidate_files, file_piece, replay_seq
from std_daq_service.hp_io_agent.run_discovery import StreamFile, stream_history
from std_daq_service.hp_io_agent.seq_index import SeqIndex
from std_daq_service.pff import PffError
from std_daq_service.protocol import (
    DaqError,
    InvalidRequest,
    ReplayRequest,
    RequestKilled,
    UnknownTarget,
    encode_control,
    encode_frames,
)

log = logging.getLogger(__name__)

SUBSCRIBER_WAIT_S = 10.0
_BATCHES_PER_SECOND = 200  # small batches: the rate limit paces smoothly and the live loop waits less for the GIL


@dataclass
class _StreamResult:
    frames: int = 0
    bytes: int = 0
    files: list[str] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    partial: str | None = None
    skipped_files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "bytes": self.bytes, "files": self.files, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "partial": self.partial, "skipped_files": self.skipped_files}


class Replay:
    """Run one replay request (its own thread) on the agent's replay socket."""

    def __init__(self, service_name: str, request: ReplayRequest, ctx: RequestContext, data_dir: Path,
                 publisher: ReplayPublisher, index: SeqIndex, max_batch_frames: int):
        self.service_name = service_name
        self.request = request
        self.ctx = ctx
        self.data_dir = data_dir
        self.publisher = publisher
        self.index = index
        batch = int(publisher.rate.frames_per_second / _BATCHES_PER_SECOND)
        self.batch_frames = max(1, min(max_batch_frames, batch))
        self.streams: dict[str, _StreamResult] = {}
        self.notes: list[str] = []
        self._began = time.monotonic()

    def _check(self) -> int:
        """The window's stop, clipped to now; refuse a window that lies in the future.

        Raises:
            InvalidRequest: the window starts in the future.
            UnknownTarget: the data dir does not exist here.
        """
        now = time.time_ns()
        request = self.request
        if request.start_time >= now:
            raise InvalidRequest(f"the window starts {(request.start_time - now) / 1e9:.1f} s in the future; "
                                 "only frames already written can be replayed")
        if not self.data_dir.is_dir():
            raise UnknownTarget(f"data_dir '{self.data_dir}' does not exist on {self.service_name}")
        if request.stop_time > now:
            self.notes.append(f"stop_time lies {(request.stop_time - now) / 1e9:.1f} s in the future; "
                              "replayed up to the request's arrival")
        return min(request.stop_time, now)

    def run(self) -> dict[str, Any]:
        """Wait for the subscriber, publish, end with `replay_end`; returns the result (also on a kill)."""
        stop_ns = self._check()
        request = self.request
        history = stream_history(self.data_dir, set(request.module_ids) or None, request.run)
        if request.run is not None and not history:
            raise UnknownTarget(f"no run {request.run} with PFF files under {self.data_dir} on {self.service_name}")
        history = {key: files for key, files in history.items()
                   if not request.data_products or key[1] in request.data_products}
        try:
            self.publisher.wait_for_subscriber(self.ctx.request_id, SUBSCRIBER_WAIT_S, self.ctx.cancelled)
        except RequestKilled:
            return self._result(stop_ns, None)  # killed before anything was sent: request_killed
        self._began = time.monotonic()
        error: DaqError | None = None
        try:
            for (module_id, dp), files in history.items():
                if self.ctx.cancelled.is_set():
                    break
                self._replay_stream(f"{module_id}/{dp}", candidate_files(files, request.start_time, stop_ns),
                                    request.start_time, stop_ns)
        except RequestKilled:
            pass
        except DaqError as exc:
            error = exc
        result = self._result(stop_ns, error)
        try:
            self.publisher.send(encode_control(self.service_name, "replay_end", result["message"],
                                               replay_id=self.ctx.request_id, result=result), self.ctx.cancelled)
        except RequestKilled:
            pass  # killed while its subscriber's queue was full: the requester killed it, it does not wait
        if error is not None:
            raise error
        return result

    def _open_pieces(self, name: str, files: list[StreamFile], start_ns: int, stop_ns: int) -> list[Piece]:
        pieces = []
        for file in files:
            try:
                piece = file_piece(file, start_ns, stop_ns)
            except (PffError, OSError) as exc:  # gone (its run dir collected) or unreadable: the stream is partial
                log.warning("replay %s: %s skipped: %s", self.ctx.request_id, file.path, exc)
                result = self.streams.setdefault(name, _StreamResult())
                result.skipped_files.append(f"{file.path.name}: {exc}")
                result.partial = result.partial or f"{file.path} could not be replayed: {exc}"
                continue
            if piece is not None:
                pieces.append(piece)
        return pieces

    def _replay_stream(self, name: str, files: list[StreamFile], start_ns: int, stop_ns: int) -> None:
        pieces = self._open_pieces(name, files, start_ns, stop_ns)
        try:
            if not pieces:
                return
            result = self.streams.setdefault(name, _StreamResult())
            for piece, seq in zip(pieces, replay_seq(pieces, self.index), strict=True):
                result.files.append(piece.file.path.name)
                if not self._send_piece(piece, seq, result):
                    return
        finally:
            for piece in pieces:
                piece.reader.close()

    def _send_piece(self, piece: Piece, seq: np.ndarray, result: _StreamResult) -> bool:
        """Publish one piece; False if the stream stops here (its file vanished)."""
        file = piece.file
        for offset, block in piece.blocks(self.batch_frames):
            if not file.path.exists():
                result.partial = f"{file.path} vanished while being replayed (its run dir was moved or removed)"
                log.warning("replay %s: %s", self.ctx.request_id, result.partial)
                return False
            block_seq = seq[offset : offset + len(block)]
            self.publisher.rate.wait(len(block), block.raw.nbytes, self.ctx.cancelled)
            if self.ctx.cancelled.is_set():
                raise RequestKilled("replay killed")
            self.publisher.send(encode_frames(
                source=self.service_name, origin="replay", module_id=file.module_id, dp=file.dp,
                shape=block.dp.shape, run=file.run, file=file.path.name, seqno=file.seqno,
                frame_number=block.frame_numbers, seq=block_seq, wr_timestamp_ns=block.wr_timestamp_ns,
                host_timestamp_ns=block.host_timestamp_ns, pff_fields=block.fields, image_bytes=block.image_bytes,
                replay_id=self.ctx.request_id), self.ctx.cancelled)
            result.frames += len(block)
            result.bytes += block.raw.nbytes
            result.first_seq = int(block_seq[0]) if result.first_seq is None else result.first_seq
            result.last_seq = int(block_seq[-1])
            self.ctx.progress(f"{self._frames()} frames replayed", {"frames": self._frames()})
        return True

    def _frames(self) -> int:
        return sum(s.frames for s in self.streams.values())

    def _result(self, stop_ns: int, error: DaqError | None) -> dict[str, Any]:
        frames = self._frames()
        partial = {name: s.partial for name, s in self.streams.items() if s.partial}
        killed = self.ctx.cancelled.is_set()
        if error is not None:
            message = f"replay failed after {frames} frames: {error}"
        elif killed:
            message = f"replay killed after {frames} frames"
        elif not frames:
            message = (f"no frames in [{self.request.start_time}, {stop_ns}) ns under {self.data_dir} on "
                       f"{self.service_name}")
        else:
            message = f"{frames} frames replayed" + (f"; partial: {'; '.join(partial.values())}" if partial else "")
        return {"replay_id": self.ctx.request_id, "source": self.service_name, "data_dir": str(self.data_dir),
                "start_time_ns": self.request.start_time, "stop_time_ns": stop_ns, "frames": frames,
                "bytes": sum(s.bytes for s in self.streams.values()), "no_data": not frames,
                "seconds": round(time.monotonic() - self._began, 3),
                "complete": not (partial or killed or error is not None), "partial": partial,
                "streams": {name: s.as_dict() for name, s in sorted(self.streams.items())},
                "notes": self.notes, "message": message}
