"""Find the newest run of each module under a data dir and the PFF file to tail per data product."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from std_daq_service.pff import PffError, parse_data_file_name, parse_run_dir_name

RUN_END_MARKERS = ("recording_ended", "collect_complete", "run_complete")


@dataclass(frozen=True)
class StreamFile:
    """The current file of one stream (module and data product)."""

    module_id: int
    dp: str
    path: Path
    seqno: int
    run: str

    @property
    def key(self) -> tuple[int, str]:
        return self.module_id, self.dp

    @property
    def order(self) -> tuple[datetime, str, int]:
        """Position in the stream: run start time, run name, seqno (later files sort higher)."""
        return (*run_order(self.run), self.seqno)


_MODULE_DIR = re.compile(r"^module_\d+$")
_NO_TIME = datetime.min.replace(tzinfo=timezone.utc)


def run_order(run: str) -> tuple[datetime, str]:
    """How runs sort: by the start time in their name (runs without one first), then by name."""
    try:
        return parse_run_dir_name(run).start, run
    except PffError:
        return _NO_TIME, run


def stream_file(path: Path) -> StreamFile:
    """The StreamFile of a data file path (raises PffError for names that are not Hashpipe's)."""
    name = parse_data_file_name(path.name)
    return StreamFile(name.module_id, name.dp, path, name.seqno, path.parent.name)


def files_of(run_dir: Path, key: tuple[int, str]) -> list[StreamFile]:
    """Every file of one stream in a run dir, by seqno."""
    return sorted((f for f in _stream_files(run_dir) if f.key == key), key=lambda f: (f.seqno, f.path.name))


def first_in_run(file: StreamFile) -> StreamFile:
    """The lowest-seqno file of `file`'s stream and run (`file` itself if it is the only one)."""
    files = files_of(file.path.parent, file.key)
    return files[0] if files else file


def next_file(file: StreamFile) -> StreamFile | None:
    """The file that follows `file` in its stream: the next seqno of its run, else the first file of the
    earliest later run of its module dir (never an older run), or None while there is none."""
    later = [f for f in files_of(file.path.parent, file.key) if f.seqno > file.seqno]
    if later:
        return later[0]
    module_dir = file.path.parent.parent
    if not _MODULE_DIR.match(module_dir.name):
        return None  # an archived run dir: no runs after it
    own = run_order(file.run)
    for run_dir in _run_dirs(module_dir):
        if run_order(run_dir.name) > own:
            files = files_of(run_dir, file.key)
            if files:
                return files[0]
    return None


def _run_dirs(directory: Path) -> list[Path]:
    runs = []
    for entry in directory.glob("obs_*.pffd"):
        try:
            runs.append((parse_run_dir_name(entry.name).start, entry.name, entry))
        except PffError:
            continue
    return [path for _, _, path in sorted(runs)]


def _stream_files(run_dir: Path) -> Iterator[StreamFile]:
    """Every data file of a run dir; names that are not Hashpipe's are passed over."""
    for entry in run_dir.glob("start_*.pff"):
        try:
            yield stream_file(entry)
        except PffError:
            continue


def _files_in_run(run_dir: Path, module_ids: set[int] | None) -> dict[tuple[int, str], StreamFile]:
    """Highest-seqno file per (module, dp) in one run dir; empty files count (Hashpipe creates all four)."""
    newest: dict[tuple[int, str], StreamFile] = {}
    for found in _stream_files(run_dir):
        if module_ids and found.module_id not in module_ids:
            continue
        current = newest.get(found.key)
        if current is None or (found.seqno, found.path.name) > (current.seqno, current.path.name):
            newest[found.key] = found
    return newest


def is_run_dir(path: Path) -> bool:
    try:
        parse_run_dir_name(path.name)
        return True
    except PffError:
        return any(path.glob("start_*.pff"))


def discover(data_dir: Path, module_ids: set[int] | None = None) -> dict[tuple[int, str], StreamFile]:
    """Current file of every stream: newest run per module, highest seqno per data product.

    `data_dir` is either a DAQ node's data dir (`module_<N>/obs_*.pffd/*.pff`) or one archived run
    dir holding the files of all modules.
    """
    if is_run_dir(data_dir):
        return _files_in_run(data_dir, module_ids)
    streams: dict[tuple[int, str], StreamFile] = {}
    for module_dir in sorted(data_dir.glob("module_*")):
        suffix = module_dir.name.removeprefix("module_")
        if not suffix.isdigit() or (module_ids and int(suffix) not in module_ids):
            continue
        runs = _run_dirs(module_dir)
        if runs:
            streams.update(_files_in_run(runs[-1], module_ids))
    return streams


def stream_history(data_dir: Path, module_ids: set[int] | None = None,
                   run: str | None = None) -> dict[tuple[int, str], list[StreamFile]]:
    """Every file of every stream under a data dir (or of one archived run dir), in stream order.

    Args:
        run: only the run dirs of this name (every module has one of the same name on a DAQ node).
    """
    if is_run_dir(data_dir):
        run_dirs = [data_dir] if run is None or data_dir.name == run else []
    else:
        run_dirs = [d for m in sorted(data_dir.glob("module_*")) if _MODULE_DIR.match(m.name)
                    for d in _run_dirs(m) if run is None or d.name == run]
    streams: dict[tuple[int, str], list[StreamFile]] = {}
    for run_dir in run_dirs:
        for found in _stream_files(run_dir):
            if not module_ids or found.module_id in module_ids:
                streams.setdefault(found.key, []).append(found)
    return {key: sorted(files, key=lambda f: (f.order, f.path.name)) for key, files in sorted(streams.items())}


def watched_dirs(data_dir: Path) -> list[Path]:
    """Directories whose changes matter: the data dir, its module dirs and each module's newest run dir."""
    if is_run_dir(data_dir):
        return [data_dir]
    dirs = [data_dir]
    for module_dir in sorted(data_dir.glob("module_*")):
        if module_dir.is_dir():
            dirs.append(module_dir)
            dirs.extend(_run_dirs(module_dir)[-1:])
    return dirs


def run_ended(run_dir: Path) -> str | None:
    """Why a run is over (a marker file, or its dir is gone), or None while it may go on."""
    if not run_dir.is_dir():
        return f"run dir {run_dir} was removed"
    for marker in RUN_END_MARKERS:
        if (run_dir / marker).exists():
            return f"marker file {marker} appeared"
    return None
