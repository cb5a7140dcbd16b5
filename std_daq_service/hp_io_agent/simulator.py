"""Replay an archived PFF run as a live Hashpipe run: same layout, names, buffering and rollover."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import std_daq_service
from std_daq_service.hp_io_agent.run_discovery import discover
from std_daq_service.lifecycle import BackgroundThread, Lifecycle
from std_daq_service.pff import (
    DATA_PRODUCTS,
    PffReader,
    PffWriter,
    data_product,
    format_data_file_name,
    format_header,
    format_run_dir_name,
)
from std_daq_service.pff.timestamps import pkt_tai

log = logging.getLogger(__name__)

DEFAULT_SOURCE = next((Path(std_daq_service.__file__).parent / "sample_data" / "lick_2024-07-25").glob("obs_*.pffd"))
_IMAGE_BUFFER = 1 << 20  # Hashpipe's stdio buffer for image files
_PH_BUFFER = 4096  # ph256 files keep libc's default stdio buffer


@dataclass
class _SimStream:
    module_id: int
    dp: str
    headers: list[dict]
    images: list[bytes]
    rate_hz: float
    written: int = 0
    seqno: int = 0
    writer: PffWriter | None = None


def _retimed(header: dict, unix_ns: int) -> dict:
    """A header moved to `unix_ns`, WR and host clocks in agreement."""
    tv_sec, ns = divmod(unix_ns, 1_000_000_000)
    times = {"tv_sec": tv_sec, "tv_usec": ns // 1000, "pkt_tai": pkt_tai(tv_sec), "pkt_nsec": ns}
    if "quabo_num" in header:
        return {**header, **times}
    return {key: {**value, **times} if value.get("tv_sec") else value for key, value in header.items()}


class Simulator(Lifecycle):
    """Write a live run under `data_dir/module_<N>/obs_*.pffd/` from the frames of an archived run.

    Behaves as Hashpipe's output thread: all four data product files of each module are opened
    (`fopen "w"`) at start and stay open (unused ones stay empty); frames are written at the
    configured rates with headers moved to the current time through stdio-like buffers (1 MiB
    for images, a few KiB for ph256), so readers see torn frames; after a frame takes a file past
    `max_file_size_mb` the next seqno is opened first and only then the old file closed, which
    flushes its last buffer. The source loops forever from `start()`; `close()` stops and removes the run
    dirs it wrote.
    """

    def __init__(self, source_dir: Path, data_dir: Path, module_ids: list[int], movie_rate_hz: float,
                 pulse_height_rate_hz: float, max_file_size_mb: float):
        self.source_dir = source_dir
        self.data_dir = data_dir
        self.module_ids = module_ids
        self.movie_rate_hz = movie_rate_hz
        self.pulse_height_rate_hz = pulse_height_rate_hz
        self.max_file_bytes = int(max_file_size_mb * 1e6)
        self.run_dirs: list[Path] = []
        self._streams: list[_SimStream] = []
        self._idle: list[PffWriter] = []
        self._loop = BackgroundThread("simulator", self._run)
        self.error: str | None = None

    def _load_source(self) -> dict[int, dict[str, tuple[list[dict], list[bytes]]]]:
        by_module: dict[int, dict[str, tuple[list[dict], list[bytes]]]] = {}
        for (module_id, dp), file in sorted(discover(self.source_dir).items()):
            with PffReader(file.path, dp) as reader:
                if reader.n_frames == 0:
                    continue
                headers, images = [], []
                for block in reader.iter_blocks():
                    headers += [block.header(i) for i in range(len(block))]
                    images += [bytes(row) for row in block.raw[:, block.header_size :]]
            by_module.setdefault(module_id, {})[dp] = (headers, images)
        if not by_module:
            raise FileNotFoundError(f"no PFF frames in {self.source_dir}")
        return by_module

    def _open(self) -> None:
        source = self._load_source()
        source_modules = sorted(source)
        targets = self.module_ids or source_modules
        now = datetime.now(timezone.utc)
        site = "sim"
        for index, module_id in enumerate(targets):
            products = source[source_modules[index % len(source_modules)]]
            run_dir = self.data_dir / f"module_{module_id}" / format_run_dir_name(site, now, "sim")
            run_dir.mkdir(parents=True, exist_ok=True)
            self.run_dirs.append(run_dir)
            for dp in DATA_PRODUCTS:
                writer = self._writer(run_dir / format_data_file_name(now, dp, module_id, 0), dp)
                if dp not in products:
                    self._idle.append(writer)
                    continue
                headers, images = products[dp]
                rate = self.movie_rate_hz if data_product(dp).is_movie else self.pulse_height_rate_hz
                self._streams.append(_SimStream(module_id, dp, headers, images, rate, writer=writer))
        log.info("simulating modules %s from %s into %s", targets, self.source_dir, self.data_dir)
        self._loop.start()

    @staticmethod
    def _writer(path: Path, dp: str) -> PffWriter:
        product = data_product(dp)
        return PffWriter(path, product, _IMAGE_BUFFER if product.is_movie else _PH_BUFFER, truncate=True).open()

    def _roll_over(self, stream: _SimStream) -> None:
        """Hashpipe's order: open the next seqno, then close (and so flush) the old file."""
        old = stream.writer
        stream.seqno += 1
        path = old.path.parent / format_data_file_name(datetime.now(timezone.utc), stream.dp, stream.module_id,
                                                       stream.seqno)
        stream.writer = self._writer(path, stream.dp)
        old.close()

    def _run(self, stop: threading.Event) -> None:
        start_ns = time.time_ns()
        t0 = time.monotonic()
        try:
            while not stop.wait(0.002):
                elapsed = time.monotonic() - t0
                for stream in self._streams:
                    due = int(elapsed * stream.rate_hz)
                    for k in range(stream.written, min(due, stream.written + 10_000)):
                        i = k % len(stream.headers)
                        unix_ns = start_ns + int(np.round(k * 1e9 / stream.rate_hz))
                        frame = format_header(_retimed(stream.headers[i], unix_ns)) + stream.images[i]
                        stream.writer.write_raw(frame, frames=1)
                        stream.written = k + 1
                        if stream.writer.tell() > self.max_file_bytes:
                            self._roll_over(stream)
        except OSError as exc:
            self.error = f"simulator stopped: {exc}"
            log.error(self.error)
        finally:
            self._close_files()

    def _close_files(self) -> None:
        """Close (and so flush) every file; a failed flush is logged: the simulated run is removed anyway."""
        for writer in [s.writer for s in self._streams] + self._idle:
            try:
                writer.close()
            except OSError as exc:
                log.warning("simulated file %s: %s", writer.path, exc)

    def status(self) -> dict:
        return {
            "source_dir": str(self.source_dir),
            "data_dir": str(self.data_dir),
            "frames_written": {f"{s.module_id}.{s.dp}": s.written for s in self._streams},
            "error": self.error,
        }

    def _release(self) -> None:
        """Stop writing, close the files and remove the simulated run dirs."""
        self._loop.close()
        self._close_files()
        for run_dir in self.run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)
            try:
                run_dir.parent.rmdir()
            except OSError:
                pass  # the module dir holds other runs too
