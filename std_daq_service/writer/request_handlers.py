"""The writer's answers to write and status requests."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from std_daq_service.broker import Handler, RequestContext
from std_daq_service.config import WriterConfig
from std_daq_service.metrics import Families, fill_writer
from std_daq_service.protocol import Busy, InvalidRequest, StatusRequest, UnknownTarget, WriteRequest
from std_daq_service.writer.event_receiver import EventReceiver
from std_daq_service.writer.event_write_job import EventWriteJob
from std_daq_service.writer.h5_recording import H5Recording, part_name
from std_daq_service.writer.output_paths import confined_path, make_folders, part_path, stale_parts
from std_daq_service.writer.stream_receiver import StreamReceiver
from std_daq_service.writer.write_job import Selection, WriteJob

log = logging.getLogger(__name__)


class WriterHandlers:
    """Request handlers of one writer; writes run concurrently up to `max_concurrent_writes`.

    Args:
        broker_url: where writes reaching back past the ring buffer ask the agents for replays.
    """

    def __init__(self, service_name: str, config: WriterConfig, receiver: StreamReceiver,
                 event_receiver: EventReceiver, broker_url: str | None = None):
        self.service_name = service_name
        self.broker_url = broker_url
        self.config = config
        self.receiver = receiver
        self.event_receiver = event_receiver
        self.output_root = Path(config.output_root)
        self._lock = threading.Lock()
        self._writing: dict[Path, str] = {}
        self._recordings: dict[Path, H5Recording] = {}
        self._written = (0, 0)  # frames, bytes of the writes that ended
        self.stale_parts = [str(p) for p in stale_parts(self.output_root)]
        if self.stale_parts:
            log.warning("%d unfinished .part file(s) from an earlier writer under %s (a writer died mid-write): %s",
                        len(self.stale_parts), self.output_root, ", ".join(self.stale_parts[:5]))

    def handlers(self) -> dict[str, Handler]:
        return {"write": self.write, "status": self.status}

    def _selection(self, request: WriteRequest) -> Selection | str:
        """The frames a write records, or the event builder whose events it records."""
        known, builders = set(self.receiver.agents), set(self.event_receiver.builders)
        sources = set(request.sources) or known
        unknown = sources - known - builders
        if unknown:
            raise UnknownTarget(f"{self.service_name} does not record {', '.join(sorted(unknown))}; "
                                f"it records {', '.join(sorted(known | builders))}")
        if sources & builders:
            if len(sources) > 1:
                raise InvalidRequest("sources: a write records the events of one event builder, or frames of "
                                     f"agents, not both: {', '.join(sorted(sources))}")
            if request.module_ids or request.data_products:
                raise InvalidRequest("module_ids, data_products: select frames of agents, not events of "
                                     f"{', '.join(sources)}")
            return sources.pop()
        return Selection(frozenset(sources), frozenset(request.module_ids), frozenset(request.data_products))

    def _claim(self, path: Path, request: WriteRequest, request_id: str, recording: H5Recording) -> None:
        with self._lock:
            if path in self._writing:
                raise Busy(f"{path} is being written by request {self._writing[path]}")
            if len(self._writing) >= self.config.max_concurrent_writes:
                raise Busy(f"{len(self._writing)} writes are running, the most this writer takes "
                           f"(max_concurrent_writes); retry when one ends")
            if path.exists() and not request.overwrite:
                raise Busy(f"{path} exists; set overwrite=true to replace it")
            self._writing[path] = request_id
            self._recordings[path] = recording

    def write(self, request: WriteRequest, ctx: RequestContext) -> dict:
        selection = self._selection(request)
        path = confined_path(self.output_root, request.output_file)
        rolling = request.max_frames_per_file is not None or request.max_file_size_mb is not None
        longest = part_path(part_name(path, 9999)).name.encode()
        if rolling and len(longest) > 255:
            raise InvalidRequest(f"output_file {request.output_file!r}: its parts would be named {longest.decode()!r},"
                                 f" {len(longest)} bytes, longer than 255")
        attrs = {"request": request.model_dump(mode="json"), "request_id": ctx.request_id,
                 "writer": self.service_name,
                 "sources": [selection] if isinstance(selection, str) else sorted(selection.sources),
                 "start_time_ns": request.start_time if request.start_time is not None else -1,
                 "stop_time_ns": request.stop_time if request.stop_time is not None else -1}
        recording = H5Recording(path, request.compression or self.config.compression, attrs,
                                max_frames_per_file=request.max_frames_per_file,
                                max_file_size_mb=request.max_file_size_mb, swmr=self.config.swmr,
                                overwrite=request.overwrite)
        self._claim(path, request, ctx.request_id, recording)
        try:
            make_folders(self.output_root, path)
            if isinstance(selection, str):
                return EventWriteJob(request, ctx, self.event_receiver, recording, selection).run()
            return WriteJob(request, ctx, self.receiver, recording, selection, self.config.ring_buffer_seconds,
                            broker_url=self.broker_url).run()
        finally:
            with self._lock:
                self._writing.pop(path, None)
                self._recordings.pop(path, None)
                frames, nbytes = _written(recording)
                self._written = (self._written[0] + frames, self._written[1] + nbytes)

    def status(self, request: StatusRequest, ctx: RequestContext) -> dict:
        with self._lock:
            writing = {str(path): request_id for path, request_id in self._writing.items()}
        return {**self.receiver.status(), **self.event_receiver.status(), "output_root": str(self.output_root),
                "writing": writing,
                "stale_part_files": self.stale_parts}

    def beacon_state(self) -> dict:
        with self._lock:
            return {"writes_running": len(self._writing)}

    def metrics(self, families: Families) -> None:
        """The writer's Prometheus metrics, read from its receiver's status and its recordings at a scrape."""
        with self._lock:  # a write that ends moves its counts to `_written` under this lock: none counted twice
            frames, nbytes = self._written
            for recording in self._recordings.values():
                running_frames, running_bytes = _written(recording)
                frames, nbytes = frames + running_frames, nbytes + running_bytes
            running = len(self._writing)
        fill_writer(families, self.receiver.status(), running, frames, nbytes)


def _written(recording: H5Recording) -> tuple[int, int]:
    """Frames and bytes a recording has taken so far."""
    return sum(stream["frames"] for stream in recording.summary().values()), recording.bytes


def check_output_root(config: WriterConfig) -> str | None:
    """Why the output root cannot be used (None if it can); it is created when missing."""
    root = Path(config.output_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"output_root {root}: {exc}"
    if not root.is_dir():
        return f"output_root {root} is not a directory"
    return None
