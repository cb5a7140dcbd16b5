"""A reader of a file being recorded, as a user runs it: `python swmr_reader.py LIVE FINAL REPORT`.

Waits for LIVE (`<name>.<writer tag>.part`; a glob pattern such as `run.h5.*.part` finds it) to be readable in SWMR
mode, then, until FINAL exists (the writer renamed the file),
reads module 1 img16 over and over: takes the live `counts`, then refreshes every dataset and checks that each
holds at least that many rows and that `seq` has no gap in them, and notes what it read. REPORT gets a JSON list
of observations ({"n", "seq_first", "seq_last", "data_sum"}); the exit code is 1 with the error on stderr if a
read failed or a check did not hold.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the recording is bitshuffle/LZ4)
import numpy as np


def open_live(live: Path, final: Path, deadline: float) -> h5py.File | None:
    while time.monotonic() < deadline and not final.exists():
        for path in sorted(live.parent.glob(live.name)):
            try:
                return h5py.File(path, "r", swmr=True, libver="latest")
            except (OSError, FileNotFoundError):  # not there yet, or not yet in SWMR mode
                pass
        time.sleep(0.02)
    return None


def observe(group: h5py.Group) -> dict:
    counts = group["counts"]
    counts.refresh()
    n = int(counts[()]["n_frames"])  # first: the rows it counts reached the file before it
    datasets = [group[name] for name in group if isinstance(group[name], h5py.Dataset)]
    datasets += [group["pff_header"][name] for name in group["pff_header"]]
    for dataset in datasets:
        dataset.refresh()
    short = [d.name for d in datasets if d.ndim and d.maxshape[0] is None and d.shape[0] < n]
    if short:
        raise AssertionError(f"counts say {n} rows, but {short} hold fewer")
    seq = group["seq"][:n]
    if n and not (np.diff(seq) == 1).all():
        raise AssertionError(f"seq has gaps or garbage in the first {n} rows")
    data = group["data"][:n]
    return {"n": n, "seq_first": int(seq[0]) if n else None, "seq_last": int(seq[-1]) if n else None,
            "data_sum": int(data.sum(dtype=np.int64))}


def main() -> int:
    live, final, report = map(Path, sys.argv[1:4])
    observations: list[dict] = []
    f = open_live(live, final, time.monotonic() + 60)
    if f is None:
        print(f"{live} never became readable", file=sys.stderr)
        return 1
    with f:
        while True:
            done = final.exists()  # checked before the read: the last read sees the closed file's last rows
            try:
                observations.append(observe(f["module_1/img16"]))
            except KeyError:
                pass  # the stream's group is not in the file yet
            if done:
                break
            time.sleep(0.05)
    report.write_text(json.dumps(observations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
