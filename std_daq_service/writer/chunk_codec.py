"""Whole chunks of `data` compressed outside HDF5, in threads, for `write_direct_chunk`.

HDF5 runs its filters one chunk at a time under h5py's lock. The bitshuffle/LZ4 filter's own library, shipped by
hdf5plugin (`libh5bshuf`), also exports bitshuffle's C API; calling its `bshuf_compress_lz4` through ctypes (which
releases the GIL) with the 12-byte header the filter writes (uncompressed bytes as big-endian uint64, block bytes as
big-endian uint32) yields the very bytes the filter would store, so a pool of threads compresses chunks in parallel
and the file is the same as one written through the filter. Where that library or its symbols are absent, there is
no codec and chunks go through the filter as before. Uncompressed chunks are written whole the same way (no copy of
the frames into one array, nor through HDF5's chunk cache); other filters (gzip, lzf, blosc) stay HDF5's.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import hdf5plugin
import numpy as np

from std_daq_service.lifecycle import Lifecycle

log = logging.getLogger(__name__)

COMPRESSION_THREADS = max(1, min(4, os.cpu_count() or 1))


class Bitshuffle:
    """bitshuffle/LZ4 with the HDF5 filter's default block size, as `hdf5plugin.Bitshuffle(cname="lz4")` writes."""

    def __init__(self, library: ctypes.CDLL):
        self._compress = library.bshuf_compress_lz4
        self._compress.restype = ctypes.c_int64
        self._compress.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                   ctypes.c_size_t]
        self._bound = library.bshuf_compress_lz4_bound
        self._bound.restype = ctypes.c_size_t
        self._bound.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
        self._block = library.bshuf_default_block_size
        self._block.restype = ctypes.c_size_t
        self._block.argtypes = [ctypes.c_size_t]

    def compress(self, chunk: np.ndarray) -> memoryview:
        """One whole chunk (C-contiguous) as the filter stores it."""
        size, item = chunk.size, chunk.dtype.itemsize
        out = np.empty(12 + self._bound(size, item, 0), np.uint8)
        struct.pack_into(">QI", out, 0, chunk.nbytes, self._block(item) * item)
        written = self._compress(chunk.ctypes.data, out.ctypes.data + 12, size, item, 0)
        if written < 0:
            raise OSError(f"bitshuffle/LZ4 compression failed (error {written})")
        return memoryview(out)[:12 + written]


class Uncompressed:
    """Chunks as they are (`compression: none`): written whole, without HDF5 copying them through its cache."""

    def compress(self, chunk: np.ndarray) -> memoryview:
        return memoryview(chunk).cast("B")


Codec = Bitshuffle | Uncompressed


@functools.cache
def bitshuffle_lz4() -> Bitshuffle | None:
    """The codec from hdf5plugin's filter library, or None (then the filter itself compresses)."""
    path = Path(hdf5plugin.PLUGIN_PATH) / "libh5bshuf.so"
    try:
        return Bitshuffle(ctypes.CDLL(str(path)))
    except (OSError, AttributeError) as exc:
        log.info("bitshuffle/LZ4 chunks go through the HDF5 filter (%s: %s)", path, exc)
        return None


def codec_of(compression: str) -> Codec | None:
    """The codec that writes chunks of a compression name of the protocol; None: HDF5 writes them (gzip, ...)."""
    if compression == "none":
        return Uncompressed()
    return bitshuffle_lz4() if compression == "bitshuffle_lz4" else None


class ChunkCompressor(Lifecycle):
    """A codec and the threads that run it (none for `Uncompressed`), from `start()` to `close()`."""

    def __init__(self, codec: Codec, threads: int = COMPRESSION_THREADS):
        self.codec = codec
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def _open(self) -> None:
        if not isinstance(self.codec, Uncompressed):
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="compress")

    def _release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, parts: list[np.ndarray], frames: int) -> Future[memoryview]:
        """Start compressing a chunk made of `parts` (rows that follow each other, joined in the thread); one of
        fewer than `frames` rows is padded with zeros (the fill value) to a whole chunk, as HDF5 stores edge
        chunks."""
        if self._pool is None:  # nothing to do in a thread
            done: Future[memoryview] = Future()
            done.set_result(self._compress(parts, frames))
            return done
        return self._pool.submit(self._compress, parts, frames)

    def _compress(self, parts: list[np.ndarray], frames: int) -> memoryview:
        rows = sum(len(part) for part in parts)
        if rows < frames:
            first = parts[0]
            parts = [*parts, np.zeros((frames - rows, *first.shape[1:]), first.dtype)]
        return self.codec.compress(np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts)))


def chunk_rows(pieces: list[np.ndarray], frames: int) -> Iterator[list[np.ndarray]]:
    """Chunks of `frames` rows over arrays whose rows follow each other (the last may be partial), each as the views
    of the arrays it spans (not copied)."""
    held: list[np.ndarray] = []
    count = 0
    for piece in pieces:
        while len(piece):
            part, piece = piece[:frames - count], piece[frames - count:]
            held.append(part)
            count += len(part)
            if count == frames:
                yield held
                held, count = [], 0
    if held:
        yield held

