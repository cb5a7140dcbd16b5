"""`std_daq h5 info FILE...`: what a recorded HDF5 file holds."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from std_daq_service.protocol import InvalidRequest, UnknownTarget, frame_time_ns


def add_commands(commands) -> None:
    h5 = commands.add_parser("h5", help="inspect HDF5 files recorded by a writer")
    sub = h5.add_subparsers(dest="h5_command", metavar="SUBCOMMAND", required=True)
    info = sub.add_parser("info", help="per file: complete or not, streams, frames, time span, missing frames")
    info.add_argument("files", nargs="+", help="HDF5 files written by std_daq_writer")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=run_info)


def _iso(ns: int | None) -> str | None:
    if ns is None or ns < 0:
        return None
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if hasattr(value, "tolist"):
        return [_text(v) for v in value.tolist()] if hasattr(value, "__len__") else value.item()
    return value


def describe(path: Path) -> dict[str, Any]:
    """The facts of one recorded file."""
    import h5py
    import hdf5plugin  # noqa: F401  (filters for reading compressed data)

    if not path.exists():
        raise UnknownTarget(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise InvalidRequest(f"{path}: not an HDF5 file")
    with h5py.File(path, "r") as f:
        attrs = {k: _text(v) for k, v in f.attrs.items()}
        streams = []
        for module in sorted(f):
            for dp, group in sorted(f[module].items()):
                g = {k: _text(v) for k, v in group.attrs.items()}
                frames = group["data"].shape[0]
                wr, host, first, last = group["wr_timestamp_ns"], group["host_timestamp_ns"], None, None
                if frames:
                    first, last = frame_time_ns(wr[0], host[0]), frame_time_ns(wr[-1], host[-1])
                streams.append({"module_id": g.get("module_id"), "dp": dp, "frames": frames,
                                "missing_frames": g.get("missing_frames"), "source": g.get("source"),
                                "compression": g.get("compression"), "first": _iso(first), "last": _iso(last),
                                "seconds": None if first is None or last is None else (last - first) / 1e9})
    return {"file": str(path), "bytes": path.stat().st_size, "complete": bool(attrs.get("complete")),
            "end_reason": attrs.get("end_reason"), "request_id": attrs.get("request_id"),
            "writer": attrs.get("writer"), "runs": attrs.get("runs"),
            "first": _iso(attrs.get("first_timestamp_ns")), "last": _iso(attrs.get("last_timestamp_ns")),
            "streams": streams}


def run_info(args) -> int:
    described = [describe(Path(name)) for name in args.files]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for d in described:
        print(f"{d['file']}: {d['bytes'] / 1e6:.1f} MB, {'complete' if d['complete'] else 'INCOMPLETE'} "
              f"({d['end_reason']}), {d['first']} .. {d['last']}")
        print(f"  request {d['request_id']} by {d['writer']}, runs {', '.join(d['runs'] or []) or '-'}")
        for s in d["streams"]:
            span = f"{s['seconds']:.3f} s" if s["seconds"] is not None else "-"
            print(f"  module {s['module_id']:>3} {s['dp']:6s} {s['frames']:8d} frames over {span}, "
                  f"missing {s['missing_frames']}, {s['compression']}, from {s['source']}")
    return 0
