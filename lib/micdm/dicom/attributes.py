"""Acquisition attributes: which header elements a site stores, where each sits, and how a series folds them.

A selection (``features.acquisition_attributes``) lists keywords or tags, nested ones as a path through
sequences (``PerFrameFunctionalGroupsSequence.MREchoSequence.EffectiveEchoTime``), each with an optional
rule (``EchoTime:distinct``), and the presets ``default`` (the curated table shipped in
resources/acquisition_attributes.csv) and ``all`` (every attribute of the DICOM vocabulary whose VR is
numeric or coded, less DENIED). Values are read from the stored DICOM JSON header; every item of a
sequence on the path counts, so a per-frame value of every frame is seen.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from micdm.resources import rows as resource_rows

__all__ = ["CODED_VRS", "DENIED", "NUMERIC_VRS", "PRESETS", "Attribute", "AttributeValue", "Rule",
           "parse_attribute", "select_attributes", "values_of"]

NUMERIC_VRS = frozenset({"DS", "IS", "FL", "FD", "SS", "US", "SL", "UL", "SV", "UV"})
CODED_VRS = frozenset({"CS"})
PRESETS = ("default", "all")


class Rule(StrEnum):
    """How the values of one attribute across a series' instances (and sequence items) become rows."""

    FIRST = "first"
    """One row: the first instance's value (lowest InstanceNumber, then path; first item of a sequence)."""
    MIN = "min"
    MAX = "max"
    MIN_MAX = "min_max"
    """Two rows, the lowest and the highest value: what tube current under dose modulation spans."""
    DISTINCT = "distinct"
    """One row per distinct value (each echo time of a multi-echo series); past the cap, min and max."""


#: Attributes ``all`` leaves out: sizes and encoding of the pixel data, identifiers and counters of an
#: instance, its position in the series, display settings, and who the patient is. A selection may still
#: name any of them.
DENIED = frozenset({
    # pixel data: sizes and encoding
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PlanarConfiguration", "NumberOfFrames", "PhotometricInterpretation", "SmallestImagePixelValue",
    "LargestImagePixelValue", "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "PixelPaddingValue",
    "PixelPaddingRangeLimit", "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "LUTDescriptor", "PixelDataProviderURL", "ExtendedOffsetTable",
    # identifiers and counters of an instance
    "InstanceNumber", "SeriesNumber", "AcquisitionNumber", "ImagesInAcquisition", "TemporalPositionIdentifier",
    "TemporalPositionIndex", "InStackPositionNumber", "InConcatenationNumber", "InConcatenationTotalNumber",
    "ConcatenationFrameOffsetNumber", "StackID", "ReferencedFrameNumber", "SegmentNumber",
    "ReferencedSegmentNumber", "ImageIndex",
    # where the instance sits in the series, how it is displayed
    "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "WindowCenter", "WindowWidth",
    "RescaleIntercept", "RescaleSlope", "VOILUTFunction",
    # the file, the text encoding, the patient
    "SpecificCharacterSet", "PatientSex", "PatientSexNeutered", "QualityControlSubject", "TimezoneOffsetFromUTC",
})
#: Groups ``all`` leaves out whole: file meta information, directory records, sequence delimiters.
_DENIED_GROUPS = frozenset({0x0002, 0x0004, 0xFFFE})
_HEX_KEY = re.compile(r"[0-9A-F]{8}")
_HEX_TAG = re.compile(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")


@dataclass(frozen=True)
class Attribute:
    """One selected attribute: where it sits (DICOM JSON keys, outermost first) and its rule and unit."""

    keys: tuple[str, ...]
    keywords: tuple[str, ...]
    vr: str
    rule: Rule
    unit: str | None = None

    @property
    def tag(self) -> str:
        """The attribute's own tag: the code of its DICOM vocabulary concept."""
        return self.keys[-1]

    @property
    def source(self) -> str:
        """The path as tags (``52009230.00189114.00189082``), the start of every row's source value."""
        return ".".join(self.keys)

    @property
    def name(self) -> str:
        return ".".join(self.keywords)

    @property
    def kind(self) -> str:
        """``number``, ``code`` (a CS defined term) or ``text``."""
        return "number" if self.vr in NUMERIC_VRS else "code" if self.vr in CODED_VRS else "text"


@dataclass(frozen=True)
class AttributeValue:
    """One value found in one header: the attribute's source, its order in the header, text and number."""

    source: str
    ordinal: int
    text: str
    number: float | None


@cache
def _vocabulary_tags() -> frozenset[str]:
    """Tags of the DICOM vocabulary's attribute concepts that micdm ships (repeating groups such as
    ``60xx0010`` left out: a header holds them under a concrete group)."""
    return frozenset(row["concept_code"] for row in resource_rows("concept.csv")
                     if row["concept_class_id"] == "DICOM Attributes" and _HEX_KEY.fullmatch(row["concept_code"]))


def _key(part: str) -> tuple[str, str]:
    """(DICOM JSON key, keyword) of one step of a path, given as a keyword or a tag."""
    match = _HEX_TAG.fullmatch(part)
    tag = int(match[1] + match[2], 16) if match else tag_for_keyword(part)
    if tag is None:
        raise ValueError(f"{part!r} is neither a DICOM keyword nor a tag")
    return f"{tag:08X}", keyword_for_tag(tag) or f"{tag:08X}"


def _vr(key: str) -> str:
    try:
        return str(dictionary_VR(int(key, 16)))
    except KeyError:
        return "UN"


def parse_attribute(entry: str) -> Attribute:
    """One entry of a selection (``path[:rule]``) checked against the DICOM dictionary and vocabulary."""
    path, _, rule_text = entry.strip().partition(":")
    try:
        rule = Rule(rule_text) if rule_text else Rule.FIRST
    except ValueError:
        raise ValueError(f"{entry!r}: rule {rule_text!r} is not one of {[r.value for r in Rule]}") from None
    steps = [_key(part) for part in path.split(".")]
    keys, keywords = tuple(k for k, _ in steps), tuple(w for _, w in steps)
    for key, keyword in steps[:-1]:
        if _vr(key) != "SQ":
            raise ValueError(f"{entry!r}: {keyword} is not a sequence, so nothing is nested in it")
    vr = _vr(keys[-1])
    if vr == "SQ" or keys[-1] not in _vocabulary_tags():
        raise ValueError(f"{entry!r}: {keywords[-1]} is not an attribute of the DICOM vocabulary micdm ships"
                         + (" (it is a sequence: name an attribute inside it)" if vr == "SQ" else ""))
    attribute = Attribute(keys, keywords, vr, rule)
    if rule in (Rule.MIN, Rule.MAX, Rule.MIN_MAX) and attribute.kind != "number":
        raise ValueError(f"{entry!r}: rule {rule} needs a number, and {attribute.name} is {vr}")
    return attribute


@cache
def _curated() -> tuple[Attribute, ...]:
    """The ``default`` preset: the shipped table of attributes with their unit and rule."""
    table = resource_rows("acquisition_attributes.csv")
    return tuple(dataclasses.replace(parse_attribute(f"{row['attribute']}:{row['rule']}"), unit=row["unit"] or None)
                 for row in table)


@cache
def _everything() -> tuple[Attribute, ...]:
    """The ``all`` preset: every top-level numeric or coded attribute of the vocabulary, less DENIED."""
    curated = {a.source: a for a in _curated()}
    chosen = []
    for key in sorted(_vocabulary_tags()):
        vr, keyword = _vr(key), keyword_for_tag(int(key, 16))
        if (vr in NUMERIC_VRS | CODED_VRS and keyword and keyword not in DENIED
                and int(key[:4], 16) not in _DENIED_GROUPS):
            chosen.append(curated.get(key) or Attribute((key,), (keyword,), vr, Rule.DISTINCT))
    return tuple(chosen)


def select_attributes(entries: Iterable[str]) -> tuple[Attribute, ...]:
    """The attributes a selection names, in order, one per path: a later entry replaces an earlier one's
    rule. A path without a rule keeps the curated rule and unit where the shipped table has it."""
    curated = {a.source: a for a in _curated()}
    chosen: dict[str, Attribute] = {}
    for entry in entries:
        if entry in PRESETS:
            chosen.update((a.source, a) for a in (_curated() if entry == "default" else _everything()))
            continue
        attribute = parse_attribute(entry)
        known = curated.get(attribute.source)
        if ":" not in entry and known is not None:
            attribute = known
        elif known is not None:
            attribute = dataclasses.replace(attribute, unit=known.unit)
        chosen[attribute.source] = attribute
    return tuple(chosen.values())


def _float32_text(value: float) -> str:
    """The shortest text of a 32-bit float (FL) that reads back as the same float."""
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == value:
            return text
    return repr(value)


def _number_text(value: Any, vr: str) -> str:
    if isinstance(value, float):
        if vr == "FL":
            return _float32_text(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def _value(element: dict[str, Any], attribute: Attribute, own_text: str | None) -> tuple[str, float | None] | None:
    """(text, number) of one element: every value joined by a backslash, the number being the first."""
    values = [v for v in element.get("Value") or () if v is not None and v != ""]
    if not values:
        return None
    if attribute.kind == "number":
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not numbers:
            return None
        text = own_text or "\\".join(_number_text(v, attribute.vr) for v in numbers)
        return text, float(numbers[0])
    return "\\".join(v if isinstance(v, str) else str(v) for v in values), None


def _elements(items: list[Any], keys: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """The elements at ``keys`` below a list of sequence items, item order kept."""
    for item in items:
        if not isinstance(item, dict) or keys[0] not in item:
            continue
        if len(keys) == 1:
            yield item[keys[0]]
        else:
            yield from _elements(item[keys[0]].get("Value") or [], keys[1:])


def values_of(header: dict[str, Any], attributes: tuple[Attribute, ...],
              own_texts: dict[str, str] | None = None) -> list[AttributeValue]:
    """Every value of the selected attributes in one DICOM JSON header.

    ``own_texts`` (keyword -> the header's own text, as extract keeps it for top-level DS / IS) gives a
    number its text as written ('5.000000'), else the number is written out.
    """
    found: list[AttributeValue] = []
    for attribute in attributes:
        if attribute.keys[0] not in header:
            continue
        own = (own_texts or {}).get(attribute.keywords[0]) if len(attribute.keys) == 1 else None
        for ordinal, element in enumerate(_elements([header], attribute.keys)):
            value = _value(element, attribute, own)
            if value is not None:
                found.append(AttributeValue(attribute.source, ordinal, *value))
    return found
