"""Split a byte stream into whole PFF frames: the one rule for files, growing files and sockets.

A frame is a header (JSON text closed by `\\n\\n*`) and an image of the data product's size. The
header size is learnt from the data: the first header fixes a `HeaderLayout`, and while the
frames keep it (Hashpipe's fixed-width printf) whole blocks are validated at once (the fast
path). A frame whose header has another size (a `pkt_nsec` one digit wider, an early Hashpipe
file without field widths) is found by scanning for `\\n\\n*` (the slow path) and gets a layout
of its own.

A row is a frame only if it is whole: its header is valid and the bytes after it begin another
frame, or, at the end of the data, no frame begins inside its image. A torn frame (a partial
socket write, a crashed writer) followed by whole frames is therefore dropped, counted as one
lost frame, and reading goes on at the frame that begins inside it. Bytes that are no frame at
all are skipped up to the next frame and counted. A row whose end could be the start of a frame
that has not arrived yet is left undecided until more bytes come or the caller says `final`.

Records may carry a fixed prefix before each frame (the socket hook's 2-byte module id). There
partial writes can tear records one after another, so that their pieces add up to exactly one
row: a row is torn as soon as a record of this stream (one of its prefixes, then `{`) begins in
its image or just past it, even one cut off after its `{` by the row end, the data end or the next
record (so a whole frame whose image ends in `<module id>{` is dropped and counted too). What cannot
be told from image bytes: a record cut within its prefix (1 or 2 bytes sent), or within its first
four header bytes when its module has not been seen on the stream; if the torn record before it
and it add up to exactly one row, that row is taken for a frame.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from std_daq_service.pff.data_products import HEADER_END, DataProduct
from std_daq_service.pff.errors import PffError
from std_daq_service.pff.frame_block import FrameBlock
from std_daq_service.pff.header import HeaderLayout, header_kind, layout_key, parse_header

MAX_HEADER = 4096
"""Longest header text searched for its `\\n\\n*` (Hashpipe's are under 1 KiB)."""

_BRACE = ord("{")
_AFTER_BRACE = (ord("\n"), ord(" "))
"""Every Hashpipe header opens with `{` and a newline (images) or a space (pulse height)."""
_QUABO_KEY = b'"quabo_'
_OPENING_SEARCH = 32
_STRONG_MATCH = 4
"""Bytes of a frame's opening text that must be seen to call a complete last row torn."""
_SURE_MATCH = 8
"""Bytes of a frame's opening text, cut off by the end of a row, that make a tear certain."""
_LAYOUT_CACHE = 64


def _offsets(data: bytes, needle: bytes, stop: int) -> Iterator[int]:
    """Offsets of `needle` within `data[:stop]`, in order (a row's image: cheaper on bytes than as an array)."""
    at = data.find(needle, 0, stop)
    while at >= 0:
        yield at
        at = data.find(needle, at + 1, stop)


@dataclass
class ScanStep:
    """What one `FrameScanner.step` decided, from the start of the buffer it was given.

    Attributes:
        skipped: bytes before `start` that are no whole frame (torn or corrupt).
        lost_frames: frames those bytes stood for (a torn frame is one; other bytes at least one).
        torn_prefixes: the record prefixes of the torn frames among them (sockets: their module ids).
        start: offset of the first frame of `block`.
        block: whole frames of one header layout (prefixes cut off), or None.
        prefixes: per frame of `block`, its record prefix as bytes (empty without prefixes).
        end: everything before this offset is decided; the caller goes on from here.
    """

    skipped: int = 0
    lost_frames: int = 0
    torn_prefixes: list[bytes] = field(default_factory=list)
    start: int = 0
    block: FrameBlock | None = None
    prefixes: np.ndarray | None = None
    end: int = 0


class FrameScanner:
    """Find the whole frames of one data product in successive buffers of one stream.

    Args:
        dp: the data product (image size and pixel type; the header size is learnt).
        prefix: bytes before each frame (2 for the socket hook's module id).
        max_rows: most frames in one step's block.
        check_every_row: look for a frame beginning inside every row's image, not only the last one's:
            where torn records can follow each other (partial socket writes), pieces of them can add
            up to exactly one row. A file has one writer appending whole frames, so there only
            the last row of a block (and a row before a bad one) can be torn.
        known_prefixes: record prefixes of this stream seen before (a set shared by the scanners of
            one stream's successive connections); the prefixes of whole frames are added to it.
    """

    def __init__(self, dp: DataProduct, prefix: int = 0, max_rows: int = 65536, check_every_row: bool = False,
                 known_prefixes: set[bytes] | None = None):
        self.dp = dp
        self.prefix = prefix
        self.check_every_row = check_every_row
        self.max_rows = max_rows
        self.layout: HeaderLayout | None = None
        self.known_prefixes: set[bytes] = set() if known_prefixes is None else known_prefixes
        self._layouts: OrderedDict[bytes, HeaderLayout] = OrderedDict()

    def reset(self) -> None:
        """Forget the learnt layout (the stream starts over, e.g. a file rewritten in place)."""
        self.layout = None

    @property
    def frame_size(self) -> int:
        """Size of a frame of the current layout (the data product's usual size before one is learnt)."""
        return (self.layout.size if self.layout else self.dp.header_size) + self.dp.image_size

    def step(self, buf: np.ndarray, final: bool = False) -> ScanStep:
        """Decide what the start of `buf` (uint8) holds: skipped bytes, then one block of whole frames.

        `final` says no more bytes will follow: an undecided last row is settled. A partial frame
        at the end is never consumed; the caller keeps it (and counts it as a torn tail when done).
        """
        out = ScanStep()
        pos, n, learnt_at = 0, len(buf), -1
        while pos < n:
            layout = self.layout
            if layout is not None:
                row = self.prefix + layout.size + self.dp.image_size
                k = min((n - pos) // row, self.max_rows)
                if k:
                    rows = buf[pos : pos + k * row].reshape(k, row)
                    block = FrameBlock(self.dp, rows[:, self.prefix :], 0, layout)
                    ok = block.valid_rows()
                    good = k if ok.all() else int(ok.argmin())
                    if self.check_every_row and good > 1:
                        embedded = self._embedded_starts(buf, pos, good - 1, row, layout)
                        if embedded.any():
                            good = int(embedded.argmax()) + 1  # _verdict finds where the next frame begins
                    if good:
                        self._remember(rows[:good, : self.prefix])  # module ids: each row has a valid header
                        last = pos + (good - 1) * row
                        verdict, torn_at = self._verdict(buf, last, row, layout, final)
                        accepted = good if verdict == "whole" else good - 1
                        if accepted:
                            out.start = pos
                            out.block = block if accepted == k else block[:accepted]
                            out.prefixes = rows[:accepted, : self.prefix]
                            out.end = pos + accepted * row
                            return out
                        if verdict == "undecided":
                            break
                        torn = self.torn_prefixes(buf[last:torn_at])  # this one, and any torn right after it
                        out.skipped += torn_at - last
                        out.lost_frames += max(1, len(torn))
                        out.torn_prefixes += torn
                        pos = torn_at
                        continue
            found = self._frame_at(buf, pos)  # a frame of another header size, or one still arriving
            if found == "more":
                break
            if isinstance(found, HeaderLayout) and learnt_at != pos:
                self.layout, learnt_at = found, pos
                continue
            resume = self._next_start(buf, pos + 1, final)
            gap = resume - pos
            torn = self.torn_prefixes(buf[pos:resume])
            out.skipped += gap
            out.lost_frames += max(len(torn), round(gap / (self.prefix + self.frame_size)), 1)
            out.torn_prefixes += torn
            pos = resume
            if resume >= n or self._frame_at(buf, pos) == "more":
                break
        out.start = out.end = pos
        return out

    def _remember(self, prefixes: np.ndarray) -> None:
        if self.prefix:
            values, n = prefixes.tobytes(), self.prefix
            self.known_prefixes.update({values[i : i + n] for i in range(0, len(values), n)})

    def _known_prefix_start(self, tail: bytes) -> bool:
        """Are these last bytes the start of a prefix seen before (a module id of this connection)?"""
        return any(known.startswith(tail) for known in self.known_prefixes)

    def _verdict(self, buf: np.ndarray, start: int, row: int, layout: HeaderLayout, final: bool) -> tuple[str, int]:
        """Is the row at `start` (valid header) whole, torn (and where the next frame begins), or undecided?"""
        end = start + row
        image_start = start + self.prefix + layout.size
        lead = layout.lead
        # a frame beginning inside the row: its `{` lies in the image, or (prefixed records) just past the row
        window = buf[image_start : end + self.prefix + len(lead)].tobytes()
        for offset in self._candidates(window, end + self.prefix - image_start, lead):
            candidate, begin = image_start + offset, image_start + offset - self.prefix
            visible = window[offset : offset + len(lead)]
            if (candidate < end - 1 and visible[1:2] != lead[1:2]
                    and window[offset + 1 + self.prefix : offset + 2 + self.prefix] != b"{"):
                continue  # image data: no opening text follows, nor a record cut after this `{`
            if visible == lead:
                return "torn", begin
            # a torn record may end exactly where the row does (the next record, if any, right after it)
            inside = window[offset : end - image_start] if candidate < end else b""
            if inside and lead.startswith(inside) and self._sure_start(buf, begin, len(inside), start, end):
                return "torn", begin
            if lead.startswith(visible):  # the data ends inside its opening text
                if not final:
                    return "undecided", 0
                if len(visible) >= _STRONG_MATCH or self._sure_start(buf, begin, len(visible), start, end):
                    return "torn", begin
            elif self._cut_by_record(buf, candidate, visible, lead, start, end):
                return "torn", begin
        if self.prefix and not final and end < len(buf) <= end + self.prefix:
            return "undecided", 0  # the next record's `{` tells where it begins
        if end == len(buf) and self.prefix and not final:
            own = buf[start : start + self.prefix].tobytes()
            for cut in range(1, self.prefix + 1):
                tail = buf[end - cut : end].tobytes()
                if own.startswith(tail) or self._known_prefix_start(tail):
                    return "undecided", 0
        return "whole", 0

    def _candidates(self, window: bytes, stop: int, lead: bytes) -> Iterator[int]:
        """Offsets in `window[:stop]` of the `{` that `_verdict` must look at.

        Without record prefixes (a file: one writer appending whole frames) only a `{` followed by the layout's
        next opening byte can begin a frame, or a `{` that ends the data; any other `{` in an image decides nothing.
        """
        if self.prefix:
            yield from _offsets(window, b"{", stop)
            return
        yield from _offsets(window, lead[:2], stop + 1)
        if len(window) == stop and window.endswith(b"{"):
            yield stop - 1

    def _sure_start(self, buf: np.ndarray, begin: int, seen: int, start: int, end: int) -> bool:
        """Is a frame whose opening text is cut off after `seen` bytes (by the row or data end, or the next
        record) a real one?

        Eight bytes of it are sure. With record prefixes (partial writes can tear records one after
        another), four are, and its `{` alone is when its prefix is one of this stream's (`_stream_prefix`).
        Image data ending in such bytes is then taken for a tear: a lost frame, counted, rather than a
        torn record published as a frame.
        """
        if seen >= _SURE_MATCH:
            return True
        return bool(self.prefix) and (seen >= _STRONG_MATCH or self._stream_prefix(buf, begin, start, end))

    def _stream_prefix(self, buf: np.ndarray, at: int, start: int, end: int) -> bool:
        """Is the record prefix at `at` one of this stream's: known, or that of the row at `start` or the next?"""
        own = buf[at : at + self.prefix].tobytes()
        return own in self.known_prefixes or own in (buf[start : start + self.prefix].tobytes(),
                                                      buf[end : end + self.prefix].tobytes())

    def _cut_by_record(self, buf: np.ndarray, candidate: int, visible: bytes, lead: bytes, start: int,
                       end: int) -> bool:
        """Is the `{` at `candidate` a record cut off within its opening text where another record begins?

        (Partial writes: the rest of a record never comes, the next record follows directly.) The next
        record begins with a prefix of this stream and `{`, or with four bytes of the opening text.
        """
        if not self.prefix:
            return False
        seen = next(i for i, (a, b) in enumerate(zip(visible, lead, strict=False)) if a != b)
        cut = candidate + seen
        following = buf[cut + self.prefix : cut + self.prefix + _STRONG_MATCH].tobytes()
        begins = following == lead[:_STRONG_MATCH] or (
            following[:1] == b"{" and self._stream_prefix(buf, cut, start, end))
        return begins and self._sure_start(buf, candidate - self.prefix, seen, start, end)

    def _embedded_starts(self, buf: np.ndarray, pos: int, k: int, row: int, layout: HeaderLayout) -> np.ndarray:
        """Bool per row of the k rows at `pos`: may a frame (its `{` and opening text) begin inside its image?

        Opening text cut off by the row end counts as far as it goes; `_verdict` decides such rows. (A search
        for the opening's first two bytes, rare in image data, per row: a few calls, whatever the image.)
        """
        image = self.prefix + layout.size
        lead = layout.lead[:8]
        pair = lead[:2]
        data = buf[pos : pos + k * row].tobytes()
        out = np.zeros(k, dtype=bool)
        for i in range(k):
            begin, end = i * row + image, (i + 1) * row
            if data[end - 1] == _BRACE:  # only its `{` fits in the row
                out[i] = True
                continue
            at = data.find(pair, begin, end)
            while at >= 0 and not lead.startswith(data[at : min(at + len(lead), end)]):
                at = data.find(pair, at + 1, end)
            out[i] = at >= 0
        return out

    def _frame_at(self, buf: np.ndarray, pos: int) -> HeaderLayout | str | None:
        """The layout of a frame whose header begins at `pos + prefix`; "more" if it cannot be told yet."""
        begin = pos + self.prefix
        if begin >= len(buf):
            return "more"  # a bare prefix: the record's header has not arrived yet
        if buf[begin] != _BRACE:
            return None
        if begin + 1 < len(buf) and buf[begin + 1] not in _AFTER_BRACE:
            return None
        window = buf[begin : begin + MAX_HEADER].tobytes()
        stop = window.find(HEADER_END)
        if stop < 0:
            return "more" if len(window) < MAX_HEADER else None
        header = window[: stop + len(HEADER_END)]
        layout = self._layout_for(header)
        if layout is None:
            return None
        if begin + layout.size + self.dp.image_size > len(buf):
            return "more"
        return layout

    def _layout_for(self, header: bytes) -> HeaderLayout | None:
        """A (cached) layout for a header that parses and is of this data product's kind, else None."""
        key = layout_key(header)
        layout = self._layouts.get(key)
        if layout is not None:
            self._layouts.move_to_end(key)
            return layout
        try:
            kind = header_kind(parse_header(header))
            layout = HeaderLayout(header)
        except PffError:
            return None
        if kind is None or (kind == "image") != self.dp.is_movie and self.dp.name != "ph1024":
            return None
        self._layouts[key] = layout
        if len(self._layouts) > _LAYOUT_CACHE:
            self._layouts.popitem(last=False)
        return layout

    def torn_prefixes(self, buf: np.ndarray) -> list[bytes]:
        """The record prefixes of the (torn) frames that begin in bytes that hold no whole frame.

        A torn frame begins with `{` and the opening text of the known layout; for the socket hook
        its prefix names the module whose stream lost it.
        """
        braces = [int(b) for b in np.flatnonzero(buf[self.prefix :] == _BRACE) + self.prefix]
        starts: list[bytes] = []
        if not braces:
            return starts
        for begin, following in zip(braces, [*braces[1:], len(buf) + self.prefix], strict=True):
            # a torn header ends where the next record begins: compare only up to there
            visible = buf[begin : min(begin + _OPENING_SEARCH, following - self.prefix)].tobytes()
            if len(visible) >= 2 and self._opens_header(visible):
                starts.append(buf[begin - self.prefix : begin].tobytes())
        return starts

    def _opens_header(self, visible: bytes) -> bool:
        """Could a header begin with these bytes (as far as they go): the layout's opening text, else `{`,
        blanks, `"quabo_` (which no `{` inside a header is followed by)?"""
        if self.layout is not None:
            return self.layout.lead.startswith(visible[: len(self.layout.lead)])
        rest = visible[1:].lstrip(b"\n ")
        return len(visible) > 1 and visible[1] in _AFTER_BRACE and _QUABO_KEY.startswith(rest[: len(_QUABO_KEY)])

    def _next_start(self, buf: np.ndarray, pos: int, final: bool) -> int:
        """First offset >= `pos` where a frame begins, or where an undecided candidate begins, or the end."""
        for candidate in np.flatnonzero(buf[pos + self.prefix :] == _BRACE) + pos:
            found = self._frame_at(buf, int(candidate))
            if found is not None:
                return int(candidate)
        if final:
            return len(buf)
        return max(pos, len(buf) - self.prefix)
