"""PFF frame headers: JSON parsing, Hashpipe's fixed-width formatting, and vectorised field decoding."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from operator import itemgetter
from typing import Literal

import numpy as np

from std_daq_service.pff.data_products import HEADER_END
from std_daq_service.pff.errors import PffError

QUABO_FIELDS = ("pkt_num", "pkt_tai", "pkt_nsec", "tv_sec", "tv_usec")
N_QUABOS = 4
_NSEC_MAX = 999_999_999
SMALL_BLOCK_ROWS = 8
"""Blocks of at most this many frames are handled row by row in plain Python, with results byte-identical to the
vectorised path, whose fixed cost per call dominates for a frame or a few (single-frame writes at 1 kHz)."""
_ALL_VALID = np.ones(SMALL_BLOCK_ROWS, dtype=bool)
_ALL_VALID.flags.writeable = False
_EXACT_DIGITS = 15
"""Widest number field the vectorised decoding (float64 sums) reads exactly; the row-by-row path reads no wider."""

# Hashpipe's printf formats; widths make every header of a data product the same length.
_QUABO_FORMAT = (
    '"pkt_num": {pkt_num:10d}, "pkt_tai": {pkt_tai:4d}, "pkt_nsec": {pkt_nsec:9d}, '
    '"tv_sec": {tv_sec:10d}, "tv_usec": {tv_usec:6d}'
)
_EARLY_FORMAT = (
    '"acq_mode": {acq_mode}, "mod_num": {mod_num}, "pkt_num": {pkt_num}, "pkt_utc": {pkt_utc}, '
    '"pkt_nsec": {pkt_nsec}, "tv_sec": {tv_sec}, "tv_usec": {tv_usec}'
)
_IMAGE_LAYOUT: dict[str, tuple[str, str]] = {
    "file": ("   ", ", \n"), "snapshot": (" ", ",\n"), "early": ("   ", ", \n"),
}  # per style: indent of a quabo line, separator between quabo lines
_FIELD = re.compile(rb'"(\w+)":\s*(-?\d+)')
_DIGITS = re.compile(rb"\d")
_QUABO_KEY = re.compile(rb'"quabo_(\d)":\s*\{')


_REQUIRED_FIELDS = frozenset({"pkt_num", "pkt_nsec", "tv_sec", "tv_usec"})
_KNOWN_FIELDS = frozenset({*QUABO_FIELDS, "pkt_utc", "acq_mode", "mod_num", "quabo_num"})
_QUABO_NAMES = frozenset(f"quabo_{i}" for i in range(N_QUABOS))


def _is_quabo(fields: object) -> bool:
    return (isinstance(fields, dict) and _REQUIRED_FIELDS <= fields.keys() <= _KNOWN_FIELDS
            and all(type(v) is int for v in fields.values()))


def header_kind(header: dict) -> str | None:
    """"pulse_height" or "image" for a header of a Hashpipe version we know (current or early), else None."""
    if "quabo_num" in header:
        return "pulse_height" if _is_quabo(header) else None
    if header and header.keys() <= _QUABO_NAMES and all(_is_quabo(v) for v in header.values()):
        return "image"
    return None


def layout_key(header: bytes) -> bytes:
    """The header with its digits blanked: equal for headers that share one `HeaderLayout`."""
    return _DIGITS.sub(b"0", header)


def parse_header(text: bytes | str) -> dict:
    """Parse one header's JSON text (with or without the closing `\\n\\n*`).

    Raises:
        PffError: the text is not a JSON object.
    """
    if isinstance(text, bytes):
        text = text.removesuffix(HEADER_END).decode("ascii", errors="replace")
    try:
        header = json.loads(text)
    except ValueError as exc:
        raise PffError(f"frame header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise PffError("frame header is not a JSON object")
    return header


HeaderStyle = Literal["file", "snapshot", "early"]
"""How a header is laid out: Hashpipe's current files, its socket snapshots, or its early files."""


def _quabo_text(fields: dict, style: HeaderStyle) -> str:
    values = {name: int(fields.get(name, 0)) for name in QUABO_FIELDS}
    if style == "early":
        extra = {name: int(fields.get(name, 0)) for name in ("acq_mode", "mod_num", "pkt_utc")}
        return _EARLY_FORMAT.format(**values, **extra)
    if style == "snapshot":  # the socket hook clamps; file headers do not always (a byte longer then)
        values["pkt_nsec"] = min(values["pkt_nsec"], _NSEC_MAX)
    return _QUABO_FORMAT.format(**values)


def format_header(header: dict, style: HeaderStyle = "file") -> bytes:
    """Format a header exactly as Hashpipe writes it, including the closing `\\n\\n*`.

    A pulse-height header has `quabo_num` and the quabo fields at the top level; a module image
    header has `quabo_0`..`quabo_3` sub-objects (missing ones are written zeroed). `style` picks
    the layout: "file" (today's files: 489-byte image header text), "snapshot" (the socket hook:
    478 bytes), or "early" (early Hashpipe: no field widths, `pkt_utc` for `pkt_tai`, so the size
    changes from frame to frame).
    """
    if "quabo_num" in header:
        text = f'{{ "quabo_num": {int(header["quabo_num"]):1d}, {_quabo_text(header, style)}}}'
    else:
        indent, separator = _IMAGE_LAYOUT[style]
        quabos = separator.join(
            f'{indent}"quabo_{i}": {{ {_quabo_text(header.get(f"quabo_{i}", {}), style)}}}'
            for i in range(N_QUABOS)
        )
        text = f"{{\n{quabos}\n}}"
    return text.encode("ascii") + HEADER_END


def _as_slice(rows: list[int]) -> slice | np.ndarray:
    """Columns at equal steps as a slice (a view of them, no copy), else as an index array."""
    steps = {b - a for a, b in zip(rows, rows[1:], strict=False)}
    if len(steps) <= 1 and steps != {0}:
        return slice(rows[0], rows[-1] + 1, steps.pop() if steps else 1)
    return np.array(rows)


@dataclass(frozen=True)
class _Span:
    name: str
    quabo: int | None
    start: int
    stop: int


class HeaderLayout:
    """Byte positions of every number in a fixed-width header, for decoding many headers at once.

    Built from one example header. `matches_text` checks that other headers have the same text
    outside the number fields; `decode` reads the numbers without JSON (several times faster than
    `json.loads` per frame) and flags number fields that hold anything but digits and spaces.
    Both work on whole arrays of headers, and row by row (on bytes, cut by slices) for up to
    `SMALL_BLOCK_ROWS` headers, with the same results.
    """

    def __init__(self, example: bytes):
        self.size = len(example)
        self.spans: list[_Span] = []
        quabo_starts = [(m.end(), int(m[1])) for m in _QUABO_KEY.finditer(example)]
        for match in _FIELD.finditer(example):
            quabo = None
            for pos, index in quabo_starts:
                if pos <= match.start():
                    quabo = index
            colon = example.index(b":", match.start() + len(match[1]) + 2)
            self.spans.append(_Span(match[1].decode(), quabo, colon + 1, match.end()))
        if not self.spans:
            raise PffError("frame header holds no numeric fields")
        self.lead = example[: self.spans[0].start]
        """The fixed text before the first number: how a frame of this layout begins."""
        self.is_module_image = bool(quabo_starts)
        self.is_fixed_width = b'"pkt_tai"' in example
        """Hashpipe's current formats (files and snapshots) pad every number to its printf width, so headers of
        equal size share this layout; early Hashpipe (`pkt_utc`, no widths) does not."""
        # Fixed text is compared 4 bytes at a time: (header XOR template) AND mask, mask 0 on numbers.
        padded = -self.size % 4
        fixed = np.full(self.size + padded, 0xFF, dtype=np.uint8)
        for span in self.spans:
            fixed[span.start : span.stop] = 0
        fixed[self.size :] = 0
        self._mask32 = fixed.view(np.uint32)
        self._template32 = np.frombuffer(example + bytes(padded), dtype=np.uint8).view(np.uint32)
        # All number fields are gathered at once, right-aligned in rows of the widest field's width.
        width = max(span.stop - span.start for span in self.spans)
        self._index = np.empty((len(self.spans), width), dtype=np.intp)
        self._padding = np.zeros((len(self.spans), width), dtype=bool)
        for row, span in enumerate(self.spans):
            pad = width - (span.stop - span.start)
            self._index[row, :pad] = span.start
            self._index[row, pad:] = np.arange(span.start, span.stop)
            self._padding[row, :pad] = True
        self._weights = np.where(self._padding, 0.0, 10.0 ** np.arange(width - 1, -1, -1))
        columns: dict[str, tuple[list[int], list[int | None]]] = {}
        for row, span in enumerate(self.spans):
            rows, quabos = columns.setdefault(span.name, ([], []))
            rows.append(row)
            quabos.append(span.quabo)
        self._columns: dict[str, tuple[int | slice | np.ndarray, list[int] | None]] = {}
        """Field name to its columns among the numbers (an int: one column, shape (N,)), and the quabos they
        belong to where a header lacks some (None: all, or no quabos)."""
        for name, (rows, quabos) in columns.items():
            at: int | slice | np.ndarray = rows[0] if quabos[0] is None else _as_slice(rows)
            whole = quabos[0] is None or quabos == list(range(N_QUABOS))
            self._columns[name] = (at, None if whole else [q for q in quabos if q is not None])
        # Row by row: slices cut a header's bytes into the text between the numbers, and into the numbers.
        bounds = [0, *(bound for span in self.spans for bound in (span.start, span.stop)), self.size]
        self._cut_text = itemgetter(*(slice(a, b) for a, b in zip(bounds[::2], bounds[1::2], strict=True)))
        self._text = self._cut_text(example)
        self._cut_numbers = itemgetter(*(slice(span.start, span.stop) for span in self.spans))
        self._row_decoding = width <= _EXACT_DIGITS and len(self.spans) > 1  # (itemgetter of one: no tuple)

    def matches_text(self, headers: np.ndarray) -> np.ndarray:
        """Bool per row of `headers` (N, size): is all text outside the number fields as in the example."""
        if len(headers) <= SMALL_BLOCK_ROWS:
            data, size, cut, text = headers.tobytes(), self.size, self._cut_text, self._text
            return np.array([cut(data[i : i + size]) == text for i in range(0, len(data), size)], dtype=bool)
        if self.size % 4 == 0 and headers.strides[1] == 1 and headers.strides[0] % 4 == 0:
            words = headers.view(np.uint32)
        else:
            padded = np.zeros((headers.shape[0], self._mask32.size * 4), dtype=np.uint8)
            padded[:, : self.size] = headers
            words = padded.view(np.uint32)
        return np.asarray(~((words ^ self._template32) & self._mask32).any(axis=1))

    def decode(self, headers: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Decode the numbers of N headers (rows of uint8) into int64 arrays.

        Returns:
            Field name to array: shape (N,) for pulse-height headers (`quabo_num`, `pkt_num`, ...),
            shape (N, 4) per quabo field for module image headers; and a bool per row that is
            False where a number field holds anything but digits and padding spaces.
        """
        values = self._decode_rows(headers) if 0 < len(headers) <= SMALL_BLOCK_ROWS else None
        if values is not None:
            return self._split_columns(values), _ALL_VALID[: len(values)]
        gathered = headers[:, self._index]
        digits = gathered - np.uint8(48)
        digits[(gathered == 32) | self._padding] = 0
        ok = np.asarray((digits < 10).all(axis=(1, 2)))
        # float64 holds every integer up to 2**53 exactly: 10-digit fields are safe
        values = np.einsum("nsw,sw->ns", digits, self._weights).astype(np.int64)
        return self._split_columns(values), ok

    def _decode_rows(self, headers: np.ndarray) -> np.ndarray | None:
        """The numbers of a few headers, (N, fields) int64, read row by row; None unless every number field
        holds only digits and spaces (the vectorised path decides then). A space counts as a 0 in both."""
        if not self._row_decoding:
            return None
        data, size, cut = headers.tobytes(), self.size, self._cut_numbers
        numbers = b",".join(b",".join(cut(data[i : i + size])) for i in range(0, len(data), size)).replace(b" ", b"0")
        if numbers.translate(None, b"0123456789,"):
            return None
        return np.fromstring(numbers, dtype=np.int64, sep=",").reshape(len(headers), len(self.spans))

    def _split_columns(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Field name to its column(s) of the decoded numbers (N, fields)."""
        out = {}
        for name, (index, quabos) in self._columns.items():
            if quabos is None:
                out[name] = values[:, index]
            else:  # a header without some quabos: those columns stay zero
                out[name] = np.zeros((len(values), N_QUABOS), dtype=np.int64)
                out[name][:, quabos] = values[:, index]
        return out
