"""`std_daq pff ...`: inspect PFF files."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from std_daq_service.pff import WR_INVALID, PffError, PffReader


def add_commands(commands) -> None:
    pff = commands.add_parser("pff", help="inspect PFF files", description="Inspect PFF files.")
    sub = pff.add_subparsers(dest="pff_command", metavar="SUBCOMMAND", required=True)
    info = sub.add_parser(
        "info",
        help="frames, torn bytes and time span of PFF files",
        description="Per file: data product, module, seqno, frame size, complete frames, torn trailing bytes, "
        "first/last host and White Rabbit time, and how many frames have an invalid WR time "
        "(WR and host clocks more than 1 s apart).",
    )
    info.add_argument("files", nargs="+", metavar="FILE", help="PFF data files")
    info.add_argument("--json", action="store_true", help="one JSON object per file, one per line")
    info.add_argument("--dp", choices=["img16", "img8", "ph256", "ph1024"],
                      help="data product, for files whose name does not say it")
    info.set_defaults(run=run_info)


def file_info(path: Path, dp: str | None = None) -> dict[str, Any]:
    """Facts about one PFF file; raises PffError for anything that is not one."""
    if not path.is_file():
        raise PffError(f"{path}: no such file")
    with PffReader(path, dp) as reader:
        info: dict[str, Any] = {
            "file": str(path),
            "dp": reader.dp.name,
            "module_id": reader.name.module_id if reader.name else None,
            "seqno": reader.name.seqno if reader.name else None,
            "frame_size": reader.frame_size,
            "n_frames": reader.n_frames,
            "trailing_bytes": reader.trailing_bytes,
            "corrupt_bytes": reader.corrupt_bytes,
            "lost_frames": reader.lost_frames,
            "variable_headers": reader.variable_headers,
            "n_wr_invalid": 0,
            "first_host_timestamp_ns": None,
            "last_host_timestamp_ns": None,
            "first_wr_timestamp_ns": None,
            "last_wr_timestamp_ns": None,
        }
        if reader.n_frames:
            wr = np.concatenate([b.wr_timestamp_ns for b in reader.iter_blocks(65536)])
            valid = wr[wr != WR_INVALID]
            ends = reader.block(0, 1), reader.block(reader.n_frames - 1, reader.n_frames)
            info.update(
                n_wr_invalid=int((wr == WR_INVALID).sum()),
                first_host_timestamp_ns=int(ends[0].host_timestamp_ns[0]),
                last_host_timestamp_ns=int(ends[1].host_timestamp_ns[0]),
                first_wr_timestamp_ns=int(valid[0]) if len(valid) else None,
                last_wr_timestamp_ns=int(valid[-1]) if len(valid) else None,
            )
    return info


def _time(ns: int | None) -> str:
    if ns is None:
        return "-"
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest:09d}Z"


def _print_table(infos: list[dict[str, Any]]) -> None:
    for info in infos:
        print(info["file"])
        print(f"  data product {info['dp']}, module {info['module_id']}, seqno {info['seqno']}, "
              f"frame size {info['frame_size']} B{' (header sizes vary)' if info['variable_headers'] else ''}")
        print(f"  complete frames {info['n_frames']}, torn trailing bytes {info['trailing_bytes']}, "
              f"skipped {info['corrupt_bytes']} corrupt bytes ({info['lost_frames']} frames lost)")
        print(f"  host time {_time(info['first_host_timestamp_ns'])} .. {_time(info['last_host_timestamp_ns'])}")
        print(f"  WR time   {_time(info['first_wr_timestamp_ns'])} .. {_time(info['last_wr_timestamp_ns'])}"
              f"  ({info['n_wr_invalid']} frames with invalid WR time)")


def run_info(args) -> int:
    infos, failed = [], 0
    for name in args.files:
        try:
            infos.append(file_info(Path(name), args.dp))
        except PffError as exc:
            print(f"std_daq pff info: {exc}", file=sys.stderr)
            failed += 1
    if args.json:
        for info in infos:
            print(json.dumps(info))
    else:
        _print_table(infos)
    return 1 if failed else 0
