"""The progress of a write on stderr (rich): frames, rate and size; ETA when the end is known, elapsed otherwise."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from std_daq_service.protocol import Status
from std_daq_service.protocol.requests import to_unix_ns


class WriteProgress:
    """A progress bar fed with a write's statuses; a context manager.

    The bar counts frames for `n_images` (frames per stream times the streams seen), seconds for a duration or a
    stop time still ahead, and pulses for an open-ended write.
    """

    def __init__(self, n_images: int | None = None, duration_s: float | None = None,
                 stop_time: int | str | None = None, console: Console | None = None):
        self.n_images = n_images
        self.seconds = duration_s
        stop_ns = to_unix_ns(stop_time)
        if stop_ns is not None and stop_ns > time.time_ns():
            self.seconds = (stop_ns - time.time_ns()) / 1e9
        columns: list[ProgressColumn] = [TextColumn("{task.description}")]
        if n_images or self.seconds:
            columns += [BarColumn(), TaskProgressColumn()]
        columns += [TextColumn("{task.fields[frames]} frames  {task.fields[rate]:.0f} frames/s  "
                               "{task.fields[megabytes]:.1f} MB  {task.fields[streams]} streams"),
                    TimeElapsedColumn()]
        if n_images or self.seconds:
            columns.append(TimeRemainingColumn())
        self.progress = Progress(*columns, console=console or Console(stderr=True))
        self.task = self.progress.add_task("write", total=self.seconds, frames=0, rate=0.0, megabytes=0.0,
                                           streams=0)
        self.started = time.monotonic()

    def __enter__(self) -> WriteProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.stop()

    def update(self, status: Status) -> None:
        """Show a `request_progress` status, or the final count of a `request_success` (others are ignored)."""
        final = status.action == "request_success"
        if not (final or status.action == "request_progress") or not status.result:
            return
        streams = status.result["streams"]
        frames = sum(s["frames"] for s in streams.values())
        elapsed = time.monotonic() - self.started
        fields = {"frames": frames, "rate": frames / elapsed if elapsed > 0 else 0.0,
                  "megabytes": status.result["bytes"] / 1e6, "streams": len(streams)}
        if self.n_images:
            total = self.n_images * max(len(streams), 1)
            self.progress.update(self.task, total=total, completed=min(frames, total), **fields)
        elif self.seconds:
            self.progress.update(self.task, completed=self.seconds if final else min(elapsed, self.seconds),
                                 **fields)
        else:
            self.progress.update(self.task, **fields)
