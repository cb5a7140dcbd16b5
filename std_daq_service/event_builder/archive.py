"""`find_coincidences` over an archived run: the live builder's grouping and matching, fed from PFF files."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from std_daq_service.event_builder.coincidence import (
    MatchRules,
    find_events,
    group_hits,
    multiplicity,
    shifted_event_counts,
)
from std_daq_service.event_builder.frame_table import PULSE_HEIGHT_PRODUCTS, FrameTable
from std_daq_service.pff import PffError, PffReader, parse_data_file_name
from std_daq_service.protocol import InvalidRequest


@dataclass(frozen=True)
class ArchiveSearch:
    """What to look for: rules, grouping, per-module delays, and the accidental estimate's shifts."""

    rules: MatchRules
    hit_window_ns: int
    time_offsets_ns: dict[int, int]
    shift_ns: int
    n_shifts: int
    max_events: int


def pulse_height_files(run_dir: Path, module_ids: Iterable[int] = ()) -> list[tuple[Path, int, str]]:
    """The ph256/ph1024 files of a run dir (flat, or module_<id>/ below it): (path, module id, dp), by name."""
    wanted = set(module_ids)
    files = []
    for path in sorted(run_dir.rglob("*.pff")):
        try:
            name = parse_data_file_name(path.name)
        except PffError:
            continue
        if name.dp in PULSE_HEIGHT_PRODUCTS and (not wanted or name.module_id in wanted):
            files.append((path, name.module_id, name.dp))
    return files


def read_frames(files: list[tuple[Path, int, str]], offsets: dict[int, int]) -> FrameTable:
    """Every whole frame of the files as one table (`source` indexes `files`, `seq` is the frame number)."""
    tables = []
    for source, (path, module_id, dp) in enumerate(files):
        with PffReader(path, dp) as reader:
            for block in reader.iter_blocks(1 << 16):
                n = len(block)
                pixels = block.images().reshape(n, -1)
                quabo = block.fields.get("quabo_num")
                wr = block.wr_timestamp_ns.astype(np.int64)
                tables.append(FrameTable(
                    module=np.full(n, module_id, np.int64),
                    quabo=quabo.astype(np.int64) if quabo is not None and quabo.ndim == 1 else np.full(n, -1, np.int64),
                    seq=block.frame_numbers, wr_ns=wr, time_ns=wr - offsets.get(module_id, 0),
                    pixel_max=pixels.max(axis=1).astype(np.int64), pixel_sum=pixels.sum(axis=1, dtype=np.int64),
                    dp=np.full(n, PULSE_HEIGHT_PRODUCTS.index(dp), np.int64), source=np.full(n, source, np.int64),
                    chunk=np.zeros(n, np.int64), row=np.zeros(n, np.int64), arrival_ns=np.zeros(n, np.int64)))
    return FrameTable.concat(tables)


def find_coincidences(run_dir: Path, module_ids: list[int], search: ArchiveSearch) -> dict:
    """Find the coincidence events of an archived run.

    Returns:
        Counts (frames, invalid WR time, hits per module), the events (up to `max_events` listed) with the
        time differences between their modules, and the accidental estimate (shifted copies, and the
        expectation of Poisson hits at the measured rates).

    Raises:
        InvalidRequest: no pulse-height files of the wanted modules in `run_dir`.
    """
    files = pulse_height_files(run_dir, module_ids)
    if not files:
        raise InvalidRequest(f"{run_dir}: no ph256/ph1024 files" + (f" of modules {module_ids}" if module_ids else ""))
    frames = read_frames(files, search.time_offsets_ns)
    valid = frames.wr_ns >= 0
    good = frames.take(valid)
    hits = group_hits(good.module, good.time_ns, search.hit_window_ns)
    events = find_events(hits.time_ns, hits.module, search.rules)
    shifted = shifted_event_counts(hits.time_ns, hits.module, search.rules, search.shift_ns, search.n_shifts)
    modules = sorted(set(hits.module.tolist()))
    spans = {m: (int(hits.time_ns[hits.module == m].min()), int(hits.time_ns[hits.module == m].max()))
             for m in modules}
    overlap = (max(start for start, _ in spans.values()), min(end for _, end in spans.values()))
    overlap_ns = max(0, overlap[1] - overlap[0])
    within = (hits.time_ns >= overlap[0]) & (hits.time_ns <= overlap[1])
    in_overlap = {m: np.count_nonzero(within & (hits.module == m)) for m in modules}
    rates = {m: float(np.count_nonzero(hits.module == m)) / max((end - start) / 1e9, 1e-9)
             for m, (start, end) in spans.items()}
    listed: list[dict] = []
    differences: dict[str, list[int]] = {}
    for start, stop in zip(events.start.tolist(), events.stop.tolist(), strict=True):
        first: dict[int, int] = {}
        for t, m in zip(hits.time_ns[start:stop].tolist(), hits.module[start:stop].tolist(), strict=True):
            first.setdefault(m, t)
        for a, b in itertools.combinations(sorted(first), 2):
            differences.setdefault(f"{a}-{b}", []).append(first[b] - first[a])
        if len(listed) < search.max_events:
            members = good.take(hits.frames_of(start, stop))
            listed.append({
                "time_ns": int(hits.time_ns[start]), "modules": sorted(first),
                "members": [{"module_id": m, "quabo": q, "file": files[s][0].name, "frame_number": f,
                             "wr_timestamp_ns": wr, "pixel_max": pmax, "pixel_sum": psum}
                            for m, q, s, f, wr, pmax, psum in zip(
                                members.module.tolist(), members.quabo.tolist(), members.source.tolist(),
                                members.seq.tolist(), members.wr_ns.tolist(), members.pixel_max.tolist(),
                                members.pixel_sum.tolist(), strict=True)]})
    window = search.rules.window_ns
    poisson = sum(in_overlap[a] * in_overlap[b] * 2 * window / overlap_ns  # r_a * r_b * 2W * T, in the overlap
                  for a, b in itertools.combinations(modules, 2) if overlap_ns and search.rules.accepts({a, b}))
    return {
        "run_dir": str(run_dir), "files": [path.name for path, _, _ in files],
        "frames": len(frames), "invalid_wr_frames": int(np.count_nonzero(~valid)),
        "hits": {str(m): int(np.count_nonzero(hits.module == m)) for m in modules},
        "hit_rates_hz": {str(m): round(rate, 4) for m, rate in rates.items()},
        "overlap_seconds": overlap_ns / 1e9, "hits_in_overlap": {str(m): int(n) for m, n in in_overlap.items()},
        "window_ns": window, "hit_window_ns": search.hit_window_ns,
        "domes": {str(m): search.rules.domes[m] for m in modules if m in search.rules.domes},
        "events": len(events),
        "multiplicity": {str(k): int(n) for k, n in zip(*np.unique(multiplicity(hits.module, events),
                                                                    return_counts=True), strict=True)},
        "time_differences_ns": differences,
        "accidental": {"shift_ns": search.shift_ns, "shifts": search.n_shifts, "events_per_shift_mean":
                       float(shifted.mean()), "events_per_shift_max": int(shifted.max(initial=0)),
                       "poisson_expectation": float(poisson)},
        "listed_events": listed,
    }
