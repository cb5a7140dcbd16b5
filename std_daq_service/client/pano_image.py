"""Frames as panoseti_grpc's parsed image dicts (`PanoImage`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np

from std_daq_service.pff import DATA_PRODUCTS
from std_daq_service.protocol import FrameBatch

try:
    import pandas
except ImportError:  # the client stays light: without pandas the same instant is a numpy datetime64[ns]
    pandas = None


def pano_images(batch: FrameBatch, host: str, parse: bool = True) -> list[dict[str, Any]]:
    """One dict per frame of a batch.

    With `parse` (panoseti_grpc's `parse_pano_images`): `type` (MOVIE or PULSE_HEIGHT), `header` (the PFF
    header, plus `wr_unix_timestamp` as a Decimal of seconds and `pandas_unix_timestamp`, the frame's time as
    a `pandas.Timestamp`, or as a `numpy.datetime64[ns]` where pandas is not installed), `shape`,
    `bytes_per_pixel`, `image_array`, `file`, `frame_number`, `module_id`; and ours: `dp`, `seq`, `source` (the
    agent), `origin`, `run`, `wr_timestamp_ns`, `host_timestamp_ns`. Without it: the per-frame stream header and
    `image_bytes`.
    """
    images = []
    for i in range(len(batch)):
        fields = batch.frame_fields(i)
        if not parse:
            images.append({**fields, "image_bytes": batch.images[i].tobytes(), "host": host})
            continue
        pff = fields["pff_header"]
        wr = fields["wr_timestamp_ns"]
        pff["wr_unix_timestamp"] = Decimal(wr) / Decimal(1_000_000_000) if wr is not None else None
        time_ns = int(batch.frame_times_ns[i])
        pff["pandas_unix_timestamp"] = (pandas.Timestamp(time_ns, unit="ns") if pandas is not None
                                        else np.datetime64(time_ns, "ns"))
        images.append({
            "type": DATA_PRODUCTS[batch.dp].kind,
            "header": pff,
            "shape": fields["shape"],
            "bytes_per_pixel": batch.bytes_per_pixel,
            "image_array": batch.images[i],
            "file": batch.file,
            "frame_number": fields["frame_number"],
            "module_id": batch.module_id,
            "dp": batch.dp,
            "seq": fields["seq"],
            "source": batch.source,
            "host": host,
            "origin": batch.origin,
            "run": batch.run,
            "wr_timestamp_ns": wr,
            "host_timestamp_ns": fields["host_timestamp_ns"],
        })
    return images
