"""The index file of a recording in parts: per stream, virtual datasets stacking the rows of every part.

`h5py.File(index)["module_1/img16/data"]` is the whole stack; the parts are found by name beside the index
(relative paths, so the folder can be moved as a whole). Reading through the index needs every part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from std_daq_service.writer.h5_part import (
    COUNTS_DTYPE,
    FORMAT,
    FORMAT_VERSION,
    create_pixel_scales,
    mark_up,
    mark_up_entry,
    set_attrs,
    utc_now,
)
from std_daq_service.writer.output_paths import move_into_place, part_path


@dataclass
class _Stacked:
    """One dataset of a stream over the parts: per part holding the stream, its name and rows."""

    shape: tuple[int, ...]
    dtype: np.dtype
    parts: list[tuple[str, int]] = field(default_factory=list)


def _datasets(group: h5py.Group) -> list[str]:
    names = [name for name, item in group.items() if isinstance(item, h5py.Dataset)
             and item.ndim and item.maxshape[0] is None]
    return names + [f"pff_header/{name}" for name in group["pff_header"]]


def write_index(path: Path, parts: list[Path], overwrite: bool, attrs: dict[str, Any],
                stream_attrs: dict[str, dict]) -> Path:
    """Write the index at `path` (as `<path>.part`, then renamed) over the closed `parts`.

    Args:
        attrs: the recording's root attributes.
        stream_attrs: per stream group (`module_<id>/<dp>`), its attributes over the whole recording.
    """
    stacks: dict[str, dict[str, _Stacked]] = {}
    group_attrs: dict[str, dict[str, Any]] = {}
    image_shapes: dict[str, tuple[int, int]] = {}
    for part in parts:
        with h5py.File(part, "r") as f:
            for module in f:
                for dp, group in f[module].items():
                    name, rows = f"{module}/{dp}", group["data"].shape[0]
                    group_attrs.setdefault(name, dict(group.attrs))
                    image_shapes[name] = group["data"].shape[1:]
                    for dataset in _datasets(group):
                        d = group[dataset]
                        stacked = stacks.setdefault(name, {}).setdefault(dataset, _Stacked(d.shape[1:], d.dtype))
                        if rows:
                            stacked.parts.append((part.name, rows))
    live = part_path(path)
    live.unlink(missing_ok=True)
    with h5py.File(live, "w-", libver="latest") as f:
        f.attrs.update({"NX_class": "NXroot", "format": FORMAT, "format_version": FORMAT_VERSION,
                        "created_utc": utc_now(), "closed_utc": utc_now()})
        set_attrs(f, attrs)
        for name in sorted(stacks):
            group = f.create_group(name)
            for dataset, stacked in stacks[name].items():
                total = sum(rows for _, rows in stacked.parts)
                layout = h5py.VirtualLayout(shape=(total, *stacked.shape), dtype=stacked.dtype)
                offset = 0
                for part_file, rows in stacked.parts:
                    layout[offset:offset + rows] = h5py.VirtualSource(part_file, f"{name}/{dataset}",
                                                                      shape=(rows, *stacked.shape))
                    offset += rows
                group.create_virtual_dataset(dataset, layout, fillvalue=-1 if dataset != "data" else 0)
            create_pixel_scales(group, image_shapes[name])
            mark_up(group)
            module, dp = name.split("/")
            mark_up_entry(f, int(module.removeprefix("module_")), dp)
            kept = {k: v for k, v in group_attrs[name].items()
                    if k in ("module_id", "dp", "source", "origin", "compression")}
            set_attrs(group, {**kept, **stream_attrs.get(name, {})})
            totals = {**{k: -1 for k in COUNTS_DTYPE.names}, **stream_attrs.get(name, {})}
            group.create_dataset("counts", data=np.array(tuple(totals[k] for k in COUNTS_DTYPE.names),
                                                         dtype=COUNTS_DTYPE))
    move_into_place(live, path, overwrite)
    return path
