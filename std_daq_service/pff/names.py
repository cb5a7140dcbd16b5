"""Hashpipe file and run directory names: parsing (any time separator) and formatting."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from std_daq_service.pff.data_products import data_product
from std_daq_service.pff.errors import PffError

_TIME = r"\d{4}-\d{2}-\d{2}T\d{2}[:_-]\d{2}[:_-]\d{2}(?:\.\d+)?Z?"
_DATA_FILE = re.compile(
    rf"^start_(?P<start>{_TIME})\.dp_(?P<dp>[a-z0-9]+)\.bpp_(?P<bpp>\d+)"
    rf"\.module_(?P<module>\d+)\.seqno_(?P<seqno>\d+)(?P<extra>(?:\.[^./]+)*?)\.pff$"
)
_RUN_DIR = re.compile(
    rf"^obs_(?P<site>[^.]+)\.start_(?P<start>{_TIME})\.runtype_(?P<runtype>[^.]+)(?P<extra>(?:\.[^./]+)*?)\.pffd$"
)


def _parse_time(text: str) -> datetime:
    date, clock = text.rstrip("Z").split("T")
    clock = re.sub(r"[_-]", ":", clock)
    return datetime.fromisoformat(f"{date}T{clock}").replace(tzinfo=timezone.utc)


def _format_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class DataFileName:
    """Fields of a PFF data file name `start_<UTC>.dp_<dp>.bpp_<n>.module_<id>.seqno_<n>.pff`."""

    start: datetime
    dp: str
    bytes_per_pixel: int
    module_id: int
    seqno: int


@dataclass(frozen=True)
class RunDirName:
    """Fields of a run directory name `obs_<site>.start_<UTC>.runtype_<type>.pffd`."""

    site: str
    start: datetime
    runtype: str


def parse_data_file_name(name: str) -> DataFileName:
    """Parse a data file name (a path's last part is used).

    Raises:
        PffError: the name does not follow Hashpipe's pattern or names an unknown data product.
    """
    base = name.rsplit("/", 1)[-1]
    match = _DATA_FILE.match(base)
    if match is None:
        raise PffError(
            f"{base!r} is not a PFF data file name "
            "(expected start_<UTC>.dp_<dp>.bpp_<n>.module_<id>.seqno_<n>.pff)"
        )
    data_product(match["dp"])
    return DataFileName(
        start=_parse_time(match["start"]),
        dp=match["dp"],
        bytes_per_pixel=int(match["bpp"]),
        module_id=int(match["module"]),
        seqno=int(match["seqno"]),
    )


def parse_run_dir_name(name: str) -> RunDirName:
    """Parse a run directory name (a path's last part is used).

    Raises:
        PffError: the name does not follow `obs_<site>.start_<UTC>.runtype_<type>.pffd`.
    """
    base = name.rstrip("/").rsplit("/", 1)[-1]
    match = _RUN_DIR.match(base)
    if match is None:
        raise PffError(
            f"{base!r} is not a run directory name (expected obs_<site>.start_<UTC>.runtype_<type>.pffd)"
        )
    return RunDirName(site=match["site"], start=_parse_time(match["start"]), runtype=match["runtype"])


def format_data_file_name(start: datetime, dp: str, module_id: int, seqno: int) -> str:
    """Return the name Hashpipe gives a data file (colon time separators, as Hashpipe writes)."""
    product = data_product(dp)
    return (
        f"start_{_format_time(start)}.dp_{dp}.bpp_{product.bytes_per_pixel}"
        f".module_{module_id}.seqno_{seqno}.pff"
    )


def format_run_dir_name(site: str, start: datetime, runtype: str) -> str:
    """Return the name of a run directory as the PANOSETI control software makes it."""
    return f"obs_{site}.start_{_format_time(start)}.runtype_{runtype}.pffd"
