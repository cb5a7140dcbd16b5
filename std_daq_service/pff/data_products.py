"""PANOSETI data products: image shape, pixel type and fixed header size of each."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from std_daq_service.pff.errors import PffError

HEADER_END = b"\n\n*"
"""Bytes that close every PFF header: a blank line, then the image marker."""


@dataclass(frozen=True)
class DataProduct:
    """One Hashpipe data product and the fixed geometry of its frames."""

    name: str
    shape: tuple[int, int]
    dtype: np.dtype
    header_size: int
    """Header length including the closing blank line and the `*` marker."""
    is_movie: bool

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize

    @cached_property
    def image_size(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    @cached_property
    def frame_size(self) -> int:
        return self.header_size + self.image_size

    @property
    def kind(self) -> str:
        """panoseti_grpc's image type: MOVIE or PULSE_HEIGHT."""
        return "MOVIE" if self.is_movie else "PULSE_HEIGHT"


DATA_PRODUCTS: dict[str, DataProduct] = {
    dp.name: dp
    for dp in (
        DataProduct("ph256", (16, 16), np.dtype("<i2"), 124, is_movie=False),
        DataProduct("ph1024", (32, 32), np.dtype("<i2"), 492, is_movie=False),
        DataProduct("img16", (32, 32), np.dtype("<u2"), 492, is_movie=True),
        DataProduct("img8", (32, 32), np.dtype("u1"), 492, is_movie=True),
    )
}


def data_product(name: str) -> DataProduct:
    """Return the data product called `name`.

    Raises:
        PffError: the name is not one of img16, img8, ph256, ph1024.
    """
    try:
        return DATA_PRODUCTS[name]
    except KeyError:
        known = ", ".join(DATA_PRODUCTS)
        raise PffError(f"unknown data product {name!r}; known: {known}") from None
