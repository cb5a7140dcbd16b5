"""Writing PFF files byte for byte, and buffered, as Hashpipe does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from std_daq_service.pff.data_products import DataProduct
from std_daq_service.pff.header import HeaderStyle, format_header


class PffWriter:
    """Write frames to a PFF file in Hashpipe's exact format, with stdio's full-buffering.

    Like `fwrite` into a `setvbuf` buffer, bytes reach the file only in whole buffers (and the
    rest at `flush()`/`close()`), so a reader of the growing file sees it end in a torn frame.

    Args:
        path: file to write.
        dp: the data product of the frames.
        buffer_size: the stdio buffer: Hashpipe gives image files 1 MiB, ph256 files libc's default.
        truncate: open as `fopen(path, "w")` does (an existing file is emptied in place);
            otherwise append.
    """

    def __init__(self, path: str | os.PathLike, dp: DataProduct, buffer_size: int = 1 << 20,
                 truncate: bool = False):
        self.path = Path(path)
        self.dp = dp
        self.buffer_size = max(1, buffer_size)
        self.truncate = truncate
        self._fd: int | None = None
        self._buffer = bytearray()
        self.frames_written = 0
        self.bytes_written = 0

    def open(self) -> PffWriter:
        if self._fd is None:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if self.truncate else os.O_APPEND)
            self._fd = os.open(self.path, flags, 0o644)
        return self

    def close(self) -> None:
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PffWriter:
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def write_frame(self, header: dict, image: np.ndarray | bytes, style: HeaderStyle = "file") -> None:
        """Write one frame: the header as Hashpipe formats it, then the image's little-endian bytes."""
        pixels = image if isinstance(image, bytes) else np.asarray(image, self.dp.dtype).tobytes()
        if len(pixels) != self.dp.image_size:
            raise ValueError(f"{self.dp.name} image must be {self.dp.image_size} bytes, got {len(pixels)}")
        self.write_raw(format_header(header, style) + pixels, frames=1)

    def write_raw(self, data: bytes, frames: int | None = None) -> None:
        """Write already formatted frames (`frames` of them; by default counted at the usual frame size)."""
        self.open()
        self._buffer += data
        self.bytes_written += len(data)
        self.frames_written += len(data) // self.dp.frame_size if frames is None else frames
        full = len(self._buffer) // self.buffer_size * self.buffer_size
        if full:
            self._write(memoryview(bytes(self._buffer[:full])))
            del self._buffer[:full]

    def tell(self) -> int:
        """Bytes written so far, buffered or not (as `ftell`)."""
        return self.bytes_written

    def flush(self) -> None:
        if self._fd is not None and self._buffer:
            self._write(memoryview(bytes(self._buffer)))
            self._buffer.clear()

    def _write(self, data: memoryview) -> None:
        assert self._fd is not None, "written only while open"
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
