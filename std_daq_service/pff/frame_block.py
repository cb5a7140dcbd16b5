"""A block of consecutive fixed-size PFF frames, decoded lazily and in bulk."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from std_daq_service.pff.data_products import HEADER_END, DataProduct
from std_daq_service.pff.errors import PffError
from std_daq_service.pff.header import QUABO_FIELDS, SMALL_BLOCK_ROWS, HeaderLayout, parse_header
from std_daq_service.pff.timestamps import WR_INVALID, host_unix_ns, wr_unix_ns


@dataclass(frozen=True)
class Frame:
    """One frame: its index in the file, parsed header, image, and the exact bytes."""

    frame_number: int
    header: dict
    image: np.ndarray
    raw: bytes


@dataclass(eq=False)
class FrameBlock:
    """N consecutive frames of one file held as one (N, frame_size) uint8 array.

    Attributes:
        dp: the data product.
        raw: the frames' bytes, one row per frame.
        first_frame_number: index in its file of the first frame.
        layout: header layout shared by the file's frames; built from the first row if not given.
    """

    dp: DataProduct
    raw: np.ndarray
    first_frame_number: int = 0
    layout: HeaderLayout | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.layout is None and len(self.raw):
            self.layout = HeaderLayout(self.raw[0, : self.header_size].tobytes())

    def __len__(self) -> int:
        return self.raw.shape[0]

    @property
    def header_layout(self) -> HeaderLayout:
        """The frames' header layout (an empty block has none)."""
        if self.layout is None:
            raise PffError(f"an empty {self.dp.name} block has no header layout")
        return self.layout

    @property
    def frame_size(self) -> int:
        return self.raw.shape[1]

    @property
    def header_size(self) -> int:
        return self.frame_size - self.dp.image_size

    @property
    def frame_numbers(self) -> np.ndarray:
        return np.arange(self.first_frame_number, self.first_frame_number + len(self), dtype=np.int64)

    @property
    def headers_raw(self) -> np.ndarray:
        """Header bytes including `\\n\\n*`, shape (N, header_size)."""
        return self.raw[:, : self.header_size]

    @property
    def image_bytes(self) -> bytes:
        """All images back to back, exactly as in the file."""
        return self.raw[:, self.header_size :].tobytes()

    def images(self) -> np.ndarray:
        """Images as an (N, H, W) array of the data product's pixel type (a copy)."""
        pixels = np.ascontiguousarray(self.raw[:, self.header_size :])
        return pixels.view(self.dp.dtype).reshape(len(self), *self.dp.shape)

    def valid_rows(self) -> np.ndarray:
        """Bool per frame: the header closes with `\\n\\n*` and matches the file's header layout."""
        if not len(self):
            return np.zeros(0, dtype=bool)
        end = self.raw[:, self.header_size - len(HEADER_END) : self.header_size]
        if len(self) <= SMALL_BLOCK_ROWS:
            ends, n = end.tobytes(), len(HEADER_END)
            marker_ok = np.array([ends[i : i + n] == HEADER_END for i in range(0, len(ends), n)], dtype=bool)
        else:
            marker_ok = (end == np.frombuffer(HEADER_END, dtype=np.uint8)).all(axis=1)
        return marker_ok & self.header_layout.matches_text(self.headers_raw) & self._decoded[1]

    @cached_property
    def _decoded(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return self.header_layout.decode(self.headers_raw)

    @property
    def fields(self) -> dict[str, np.ndarray]:
        """Header numbers as int64 arrays: (N,) for pulse height, (N, 4) per quabo for images."""
        return self._decoded[0] if len(self) else {}

    @cached_property
    def timing_fields(self) -> dict[str, np.ndarray]:
        """The five quabo fields of the quabo that times each frame, shape (N,) each.

        Module images are timed by quabo_0, or by the first quabo with data where quabo_0 is
        missing (zeroed).
        """
        f = self.fields
        return {name: f[name][self._timing_quabo] if name in f else np.zeros(len(self), dtype=np.int64)
                for name in QUABO_FIELDS}

    @cached_property
    def _timing_quabo(self) -> tuple:
        """The index into a quabo field that picks each frame's timing quabo (all of a pulse-height field)."""
        if not self.header_layout.is_module_image:
            return (Ellipsis,)
        tv_sec = self.fields["tv_sec"]
        if len(self) <= SMALL_BLOCK_ROWS:
            timing = {next((q for q, sec in enumerate(row) if sec), 0) for row in tv_sec.tolist()}
            if len(timing) == 1:  # one quabo times all frames (as good as always): its column
                return slice(None), timing.pop()
        present = tv_sec != 0
        return np.arange(len(self)), np.where(present.any(axis=1), present.argmax(axis=1), 0)

    @cached_property
    def wr_timestamp_ns(self) -> np.ndarray:
        """White Rabbit time in Unix ns; `WR_INVALID` (-1) where WR and host clocks disagree.

        Early Hashpipe headers carry `pkt_utc` instead of `pkt_tai`: no WR time can be derived there.
        """
        t = self.timing_fields
        if "pkt_tai" not in self.fields:
            return np.full(len(self), WR_INVALID, dtype=np.int64)
        return wr_unix_ns(t["tv_sec"], t["pkt_tai"], t["pkt_nsec"])

    @cached_property
    def host_timestamp_ns(self) -> np.ndarray:
        """Host receive time in Unix ns."""
        t = self.timing_fields
        return host_unix_ns(t["tv_sec"], t["tv_usec"])

    def header(self, i: int) -> dict:
        """The parsed JSON header of frame `i` of the block."""
        return parse_header(self.headers_raw[i].tobytes())

    def frame(self, i: int) -> Frame:
        """Frame `i` of the block as a `Frame`."""
        image = self.raw[i, self.header_size :].tobytes()
        return Frame(
            frame_number=self.first_frame_number + i,
            header=self.header(i),
            image=np.frombuffer(image, dtype=self.dp.dtype).reshape(self.dp.shape),
            raw=self.raw[i].tobytes(),
        )

    def __getitem__(self, index: slice) -> FrameBlock:
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("FrameBlock slices must be contiguous")
        return FrameBlock(self.dp, self.raw[start:stop], self.first_frame_number + start, self.layout)
