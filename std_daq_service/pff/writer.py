"""Writing PFF files byte for byte as Hashpipe does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from std_daq_service.pff.data_products import DataProduct
from std_daq_service.pff.header import format_header


class PffWriter:
    """Append frames to a PFF file in Hashpipe's exact format.

    Args:
        path: file to create or append to.
        dp: the data product of the frames.
        buffer_size: stdio-style buffer; Hashpipe uses 1 MiB for images, so readers see torn frames.
    """

    def __init__(self, path: str | os.PathLike, dp: DataProduct, buffer_size: int = -1):
        self.path = Path(path)
        self.dp = dp
        self.buffer_size = buffer_size
        self._file = None
        self.frames_written = 0

    def open(self) -> PffWriter:
        if self._file is None:
            self._file = open(self.path, "ab", buffering=self.buffer_size)
        return self

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PffWriter:
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def write_frame(self, header: dict, image: np.ndarray | bytes) -> None:
        """Write one frame: the fixed-width header, then the image's little-endian bytes."""
        pixels = image if isinstance(image, bytes) else np.asarray(image, self.dp.dtype).tobytes()
        if len(pixels) != self.dp.image_size:
            raise ValueError(f"{self.dp.name} image must be {self.dp.image_size} bytes, got {len(pixels)}")
        self.write_raw(format_header(header) + pixels)

    def write_raw(self, frames: bytes) -> None:
        """Write already formatted frames (for example, copied from another file)."""
        self.open()._file.write(frames)
        self.frames_written += len(frames) // self.dp.frame_size

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
