"""White Rabbit and host time of PFF frames as exact integer nanoseconds since the Unix epoch."""

from __future__ import annotations

import numpy as np

from std_daq_service.pff.header import SMALL_BLOCK_ROWS

TAI_MINUS_UTC_S = 37
WR_INVALID = -1
"""Value of a WR timestamp whose clocks disagree by more than one second."""

_SECOND_NS = 1_000_000_000
_SHIFT_S = {0: 0, 1: -1, 1023: 1}
"""(host seconds - WR seconds + TAI-UTC) mod 1024 -> seconds to add to the host's: 1, the host clock already
ticked to the next second; 1023, WR did. Any other difference: the clocks disagree, WR time is invalid."""
_INT64 = np.dtype(np.int64)


def _few_int64(first, *others) -> bool:
    """Are these equally long int64 vectors of a small block (computed row by row in plain Python)?"""
    return (type(first) is np.ndarray and first.dtype is _INT64 and first.ndim == 1
            and len(first) <= SMALL_BLOCK_ROWS
            and all(type(v) is np.ndarray and v.dtype is _INT64 and v.shape == first.shape for v in others))


def _int64_or_none(values: list[int]) -> np.ndarray | None:
    """The row-by-row results as int64, or None where one overflows (the vectorised path wraps as int64 does)."""
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return None


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
    if _few_int64(tv_sec, pkt_tai, pkt_nsec):
        rows = []
        for sec, tai, nsec in zip(tv_sec.tolist(), pkt_tai.tolist(), pkt_nsec.tolist(), strict=True):
            shift = _SHIFT_S.get((sec - tai + TAI_MINUS_UTC_S) % 1024)
            rows.append(WR_INVALID if shift is None else (sec + shift) * _SECOND_NS + nsec)
        ns = _int64_or_none(rows)
        if ns is not None:
            return ns
    scalar = np.ndim(tv_sec) == 0 and np.ndim(pkt_tai) == 0 and np.ndim(pkt_nsec) == 0
    tv_sec = np.asarray(tv_sec, dtype=np.int64)
    pkt_tai = np.asarray(pkt_tai, dtype=np.int64)
    pkt_nsec = np.asarray(pkt_nsec, dtype=np.int64)
    d = (tv_sec - pkt_tai + TAI_MINUS_UTC_S) % 1024
    shift = np.select([d == diff for diff in _SHIFT_S], list(_SHIFT_S.values()), default=0)
    valid = np.isin(d, list(_SHIFT_S))
    ns = np.where(valid, (tv_sec + shift) * _SECOND_NS + pkt_nsec, WR_INVALID)
    return int(ns) if scalar else ns


def pkt_tai(tv_sec: int) -> int:
    """The `pkt_tai` of a WR clock in step with a host clock at `tv_sec`: the 10 low bits of TAI seconds."""
    return (tv_sec + TAI_MINUS_UTC_S) % 1024


def host_unix_ns(tv_sec, tv_usec):
    """Convert the DAQ host's receive time (`tv_sec`, `tv_usec`) to integer nanoseconds."""
    if _few_int64(tv_sec, tv_usec):
        ns = _int64_or_none([sec * _SECOND_NS + usec * 1000 for sec, usec in zip(tv_sec.tolist(), tv_usec.tolist(),
                                                                                  strict=True)])
        if ns is not None:
            return ns
    scalar = np.ndim(tv_sec) == 0 and np.ndim(tv_usec) == 0
    ns = np.asarray(tv_sec, dtype=np.int64) * _SECOND_NS + np.asarray(tv_usec, np.int64) * 1000
    return int(ns) if scalar else ns
