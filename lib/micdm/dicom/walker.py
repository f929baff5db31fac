"""A strict, fast walk over the elements of a Part-10 header held in memory.

pydicom's ``dcmread`` costs more per file than the whole of what micdm needs from a clean header, so
the common case (preamble, explicit or implicit VR little endian, well-formed lengths) is walked here
with ``struct`` over one bytes buffer. The result is a pydicom ``Dataset`` of raw elements, exactly
what ``dcmread(..., stop_before_pixels=True)`` would hold, so every later step is shared with the
pydicom path. Anything unusual raises :class:`NotWalkable` and the caller reads the file with pydicom,
which knows every corner of the standard; :class:`NeedMoreBytes` asks for a longer prefix.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

__all__ = ["NeedMoreBytes", "NotWalkable", "ParsedHeader", "dictionary_vr", "walk_header"]

_PREAMBLE = 128
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
#: Transfer syntaxes whose data set is not plain little endian: deflated, explicit big endian.
_NOT_WALKED_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_KNOWN_VRS = _LONG_VRS | frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
    b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
#: Explicit VR bytes -> (VR name, whether its length takes 4 bytes): one lookup per element.
_VR_FORMS = {vr: (vr.decode(), vr in _LONG_VRS) for vr in _KNOWN_VRS}

_explicit_head = struct.Struct("<HH2sH").unpack_from
_implicit_head = struct.Struct("<HHL").unpack_from
_long_length = struct.Struct("<L").unpack_from


class NotWalkable(Exception):
    """The header needs pydicom: no preamble, an unusual encoding, a malformed or truncated element."""


class NeedMoreBytes(Exception):
    """The buffer ends inside the header while the file goes on; ``end`` is the offset needed at least."""

    def __init__(self, end: int) -> None:
        super().__init__(end)
        self.end = end


@dataclass(frozen=True)
class ParsedHeader:
    """A header read up to its pixel data, by the walk here or by pydicom."""

    dataset: Dataset
    transfer_syntax_uid: str | None
    media_storage_sop_class_uid: str | None
    header_end: int
    """Offset where the data set stops: the pixel data element, or the end of the file."""
    pixel_data_end: int | None
    """Where the pixel data value would end by its declared length (None when absent or undefined)."""


@functools.lru_cache(maxsize=4096)
def dictionary_vr(tag: int) -> str | None:
    """The dictionary VR of a public tag; None for private tags and ambiguous VRs (pydicom decides those)."""
    if tag >> 16 & 1:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if len(vr) == 2 else None


class _Walk:
    """One pass over a buffer that holds the first ``len(buffer)`` bytes of a ``file_size``-byte file."""

    def __init__(self, buffer: bytes, file_size: int) -> None:
        self.buffer = buffer
        self.limit = len(buffer)
        self.more = file_size > len(buffer)

    def need(self, end: int) -> None:
        if end > self.limit:
            if self.more:
                raise NeedMoreBytes(end)
            raise NotWalkable("data set ends inside an element")

    def element_head(self, pos: int, implicit: bool) -> tuple[int, str | None, int, int]:
        """(tag, VR, length, value offset) of the element at ``pos``; VR is None with implicit VR, as in pydicom."""
        if pos + 12 > self.limit:
            self.need(pos + 8)
        if implicit:
            group, element, length = _implicit_head(self.buffer, pos)
            return group << 16 | element, None, length, pos + 8
        group, element, vr, length = _explicit_head(self.buffer, pos)
        if group == 0xFFFE:  # item and delimitation tags carry no VR in either encoding
            group, element, length = _implicit_head(self.buffer, pos)
            return group << 16 | element, None, length, pos + 8
        form = _VR_FORMS.get(vr)
        if form is None:
            raise NotWalkable(f"unknown VR {vr!r}")
        if form[1]:
            self.need(pos + 12)
            return group << 16 | element, form[0], _long_length(self.buffer, pos + 8)[0], pos + 12
        return group << 16 | element, form[0], length, pos + 8

    def elements(self, pos: int, implicit: bool, top: bool, into: dict[BaseTag, RawDataElement] | None) -> int:
        """Walk elements from ``pos``; returns the offset reached.

        At the top level the walk stops before the pixel data element or at the end of the file; inside an
        item of undefined length it stops after the item delimiter.
        """
        buffer, limit, head = self.buffer, self.limit, self.element_head
        while pos < limit or not top:
            tag, vr, length, value_at = head(pos, implicit)
            if tag == _ITEM_END:
                if top:  # pydicom ends the data set here; leave such a file to it
                    raise NotWalkable("item delimiter outside a sequence")
                return value_at
            if top and tag in _PIXEL_TAGS:
                return pos
            if length == _UNDEFINED:
                if not self._is_sequence(tag, vr, implicit, value_at):
                    raise NotWalkable(f"undefined length on ({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr}")
                value_end = self.sequence(value_at, implicit)
                next_pos = value_end + 8
                vr = "SQ"
            else:
                value_end = next_pos = value_at + length
                if value_end > limit:
                    self.need(value_end)
            if into is not None:
                key = BaseTag(tag)
                into[key] = RawDataElement(key, vr, length, buffer[value_at:value_end], value_at, implicit, True)
            pos = next_pos
        if self.more:
            raise NeedMoreBytes(pos + 8)
        return pos

    def _is_sequence(self, tag: int, vr: str | None, implicit: bool, value_at: int) -> bool:
        if not implicit:
            return vr == "SQ"
        known = dictionary_vr(tag)
        if known is not None:
            return known == "SQ"
        self.need(value_at + 4)  # a private element: a sequence when an item follows (as pydicom decides)
        group, element = struct.unpack_from("<HH", self.buffer, value_at)
        return group << 16 | element == _ITEM

    def sequence(self, pos: int, implicit: bool) -> int:
        """Skip the items of an undefined-length sequence; returns the offset of its delimiter."""
        while True:
            self.need(pos + 8)
            group, element, length = _implicit_head(self.buffer, pos)
            tag = group << 16 | element
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise NotWalkable("sequence holds something other than items")
            if length == _UNDEFINED:
                pos = self.elements(pos + 8, implicit, False, None)
            else:
                pos = pos + 8 + length
                self.need(pos)


def _text(raw: RawDataElement | None) -> str | None:
    return raw.value.decode("latin-1").strip("\x00 ") or None if raw is not None and raw.value else None


def walk_header(buffer: bytes, file_size: int) -> ParsedHeader:
    """Walk a Part-10 header held in ``buffer`` (the file's first bytes).

    Raises:
        NeedMoreBytes: the header goes on past the buffer.
        NotWalkable: anything pydicom should read instead.
    """
    walk = _Walk(buffer, file_size)
    walk.need(_PREAMBLE + 4)
    if buffer[_PREAMBLE:_PREAMBLE + 4] != b"DICM":
        raise NotWalkable("no Part-10 preamble")
    meta: dict[BaseTag, RawDataElement] = {}
    pos = _PREAMBLE + 4
    while True:
        walk.need(pos + 2)
        if struct.unpack_from("<H", buffer, pos)[0] != 0x0002:
            break
        tag, vr, length, value_at = walk.element_head(pos, implicit=False)
        if length == _UNDEFINED:
            raise NotWalkable("undefined length in the file meta information")
        walk.need(value_at + length)
        meta[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr, length, buffer[value_at:value_at + length], value_at,
                                            False, True)
        pos = value_at + length
    syntax = _text(meta.get(BaseTag(0x00020010)))
    if syntax is None or syntax in _NOT_WALKED_SYNTAXES:
        raise NotWalkable(f"transfer syntax {syntax!r}")
    implicit = syntax == _IMPLICIT_LITTLE
    if pos < walk.limit:
        walk.need(pos + 6)
        looks_explicit = buffer[pos + 4:pos + 6] in _KNOWN_VRS
        if looks_explicit == implicit:  # the data set is not encoded as its transfer syntax says (pydicom copes)
            raise NotWalkable("data set encoding differs from the transfer syntax")
    elements: dict[BaseTag, RawDataElement] = {}
    end = walk.elements(pos, implicit, True, elements)
    pixel_end = None
    if end < walk.limit:
        _, _, length, value_at = walk.element_head(end, implicit)
        pixel_end = None if length == _UNDEFINED else value_at + length
    dataset = Dataset(elements)  # type: ignore[arg-type]  # raw elements, as dcmread keeps them
    return ParsedHeader(dataset, syntax, _text(meta.get(BaseTag(0x00020002))), end, pixel_end)
