"""`std_daq h5 info FILE...`: what a recorded HDF5 file holds; `std_daq h5 export SRC DST`: a plain-gzip copy.

Recorded files are compressed with bitshuffle/LZ4 by default: reading them needs the filters of `hdf5plugin`
(`import hdf5plugin` in Python before opening; HDF5 tools need `HDF5_PLUGIN_PATH` set to `hdf5plugin.PLUGIN_PATH`).
`export` writes a copy that every HDF5 reader opens without plugins.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from std_daq_service.protocol import InvalidRequest, UnknownTarget, frame_time_ns

PLUGIN_FILTERS = ("bitshuffle_lz4", "blosc_lz4")
"""Compressions whose files need hdf5plugin to be read."""
_SCALE_ATTRS = ("CLASS", "NAME", "DIMENSION_LIST", "REFERENCE_LIST")
"""Dimension-scale attributes: references into the file, made anew in a copy."""
_EXPORT_ROWS_BYTES = 64 << 20


def add_commands(commands) -> None:
    h5 = commands.add_parser("h5", help="inspect HDF5 files recorded by a writer, copy them for plugin-less tools")
    sub = h5.add_subparsers(dest="h5_command", metavar="SUBCOMMAND", required=True)
    info = sub.add_parser("info", help="per file: complete or not, streams, frames, time span, missing frames "
                          "(a file being written, <name>.part, is read live)")
    info.add_argument("files", nargs="+", help="HDF5 files written by std_daq_writer")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=run_info)
    export = sub.add_parser("export", help="copy a recorded file (or a rollover index with its parts) to one "
                            "gzip-compressed file that HDF5 tools without hdf5plugin open")
    export.add_argument("source", help="recorded file or index")
    export.add_argument("destination", help="new file")
    export.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    export.set_defaults(run=run_export)


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


def _open(path: Path):
    """Open a recorded file for reading, also while it is written (SWMR)."""
    import h5py
    import hdf5plugin  # noqa: F401  (filters for reading compressed data)

    if not path.exists():
        raise UnknownTarget(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise InvalidRequest(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r", swmr=True, libver="latest")
    except OSError:  # written by an older writer, without the latest file format
        return h5py.File(path, "r")


def describe(path: Path) -> dict[str, Any]:
    """The facts of one recorded file."""
    with _open(path) as f:
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
    parts = attrs.get("parts") or []
    size = path.stat().st_size + sum((path.parent / p).stat().st_size for p in parts if (path.parent / p).exists())
    return {"file": str(path), "bytes": size, "complete": bool(attrs.get("complete")),
            "end_reason": attrs.get("end_reason"), "request_id": attrs.get("request_id"),
            "writer": attrs.get("writer"), "runs": attrs.get("runs"), "parts": parts,
            "first": _iso(attrs.get("first_timestamp_ns")), "last": _iso(attrs.get("last_timestamp_ns")),
            "needs_hdf5plugin": any(s["compression"] in PLUGIN_FILTERS for s in streams),
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
        if d["parts"]:
            print(f"  index of {len(d['parts'])} parts: {', '.join(d['parts'])}")
        for s in d["streams"]:
            span = f"{s['seconds']:.3f} s" if s["seconds"] is not None else "-"
            print(f"  module {s['module_id']:>3} {s['dp']:6s} {s['frames']:8d} frames over {span}, "
                  f"missing {s['missing_frames']}, {s['compression']}, from {s['source']}")
        if d["needs_hdf5plugin"]:
            print("  reading it needs hdf5plugin (`import hdf5plugin` before h5py opens it); "
                  "`std_daq h5 export` makes a plain-gzip copy")
    return 0


def run_export(args) -> int:
    source, destination = Path(args.source), Path(args.destination)
    if destination.exists() and not args.overwrite:
        raise InvalidRequest(f"{destination} exists; --overwrite replaces it")
    shown = [-1]

    def show(done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if percent != shown[0]:
            shown[0] = percent
            print(f"\r{done / 1e6:8.1f} of {total / 1e6:.1f} MB ({percent:3d} %)", end="", file=sys.stderr,
                  flush=True)

    copied = export(source, destination, show)
    print(f"\n{destination}: {copied / 1e6:.1f} MB of data copied, gzip-compressed", file=sys.stderr)
    return 0


def export(source: Path, destination: Path, progress=lambda done, total: None) -> int:
    """Copy `source` (a recorded file, or an index: its parts are read through it) to `destination`, every
    dataset gzip-compressed, attributes and dimension scales kept; returns the bytes of data copied.

    The copy is written as `<destination>.part` and renamed when complete.
    """
    import h5py

    part = destination.with_name(destination.name + ".part")
    with _open(source) as src:
        datasets: list[h5py.Dataset] = []
        src.visititems(lambda name, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None)
        total, done = sum(d.nbytes for d in datasets), 0
        try:
            with h5py.File(part, "w", libver="latest") as dst:
                _copy_attrs(src, dst)
                src.visititems(lambda name, item: _copy_attrs(item, dst.require_group(name))
                               if isinstance(item, h5py.Group) else None)
                for d in datasets:
                    done = _copy_dataset(d, dst, done, total, progress)
                for d in datasets:
                    _copy_scales(d, dst)
            part.replace(destination)
        finally:
            part.unlink(missing_ok=True)
    return done


def _copy_attrs(src, dst) -> None:
    for key, value in src.attrs.items():
        if key not in _SCALE_ATTRS:
            dst.attrs[key] = value


def _copy_dataset(d, dst, done: int, total: int, progress) -> int:
    options: dict[str, Any] = {}
    if d.ndim and d.shape[0]:
        options = {"chunks": d.chunks or True, "compression": "gzip", "compression_opts": 4, "shuffle": True}
    out = dst.create_dataset(d.name, shape=d.shape, dtype=d.dtype, **options)
    _copy_attrs(d, out)
    if not d.ndim:
        out[()] = d[()]
        progress(done + d.nbytes, total)
        return done + d.nbytes
    row_bytes = max(1, d.nbytes // max(d.shape[0], 1))
    step = max(1, _EXPORT_ROWS_BYTES // row_bytes)
    for start in range(0, d.shape[0], step):
        rows = d[start:start + step]
        out[start:start + len(rows)] = rows
        done += rows.nbytes
        progress(done, total)
    return done


def _copy_scales(d, dst) -> None:
    """Make the same dimension scales, attached to the same axes, as in the source."""
    import h5py

    out = dst[d.name]
    if h5py.h5ds.is_scale(d.id) and not h5py.h5ds.is_scale(out.id):
        out.make_scale(_text(h5py.h5ds.get_scale_name(d.id)))
    for axis, dim in enumerate(d.dims):
        for scale in dim.values():
            target = dst[scale.name]
            if not h5py.h5ds.is_scale(target.id):
                target.make_scale(_text(h5py.h5ds.get_scale_name(scale.id)))
            out.dims[axis].attach_scale(target)
