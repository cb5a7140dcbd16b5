"""White Rabbit and host time of PFF frames as exact integer nanoseconds since the Unix epoch."""

from __future__ import annotations

import numpy as np

TAI_MINUS_UTC_S = 37
WR_INVALID = -1
"""Value of a WR timestamp whose clocks disagree by more than one second."""

_SECOND_NS = 1_000_000_000


def wr_unix_ns(tv_sec, pkt_tai, pkt_nsec):
    """Convert White Rabbit time to Unix nanoseconds.

    `pkt_tai` holds only the 10 low bits of TAI seconds, so the full second comes from the host
    clock `tv_sec`, which must agree within one second.

    Args:
        tv_sec: host receive time, seconds (scalar or array).
        pkt_tai: low 10 bits of WR TAI seconds.
        pkt_nsec: WR nanoseconds.

    Returns:
        Integer nanoseconds (int64 array, or int for scalar input); `WR_INVALID` where host and WR
        clocks disagree by more than one second.
    """
    scalar = np.ndim(tv_sec) == 0 and np.ndim(pkt_tai) == 0 and np.ndim(pkt_nsec) == 0
    tv_sec = np.asarray(tv_sec, dtype=np.int64)
    pkt_tai = np.asarray(pkt_tai, dtype=np.int64)
    pkt_nsec = np.asarray(pkt_nsec, dtype=np.int64)
    d = (tv_sec - pkt_tai + TAI_MINUS_UTC_S) % 1024
    # d == 1: the host clock already ticked to the next second; d == 1023: WR did.
    shift = np.select([d == 0, d == 1, d == 1023], [0, -1, 1], default=0)
    valid = (d == 0) | (d == 1) | (d == 1023)
    ns = np.where(valid, (tv_sec + shift) * _SECOND_NS + pkt_nsec, WR_INVALID)
    return int(ns) if scalar else ns


def pkt_tai(tv_sec: int) -> int:
    """The `pkt_tai` of a WR clock in step with a host clock at `tv_sec`: the 10 low bits of TAI seconds."""
    return (tv_sec + TAI_MINUS_UTC_S) % 1024


def host_unix_ns(tv_sec, tv_usec):
    """Convert the DAQ host's receive time (`tv_sec`, `tv_usec`) to integer nanoseconds."""
    scalar = np.ndim(tv_sec) == 0 and np.ndim(tv_usec) == 0
    ns = np.asarray(tv_sec, dtype=np.int64) * _SECOND_NS + np.asarray(tv_usec, np.int64) * 1000
    return int(ns) if scalar else ns
