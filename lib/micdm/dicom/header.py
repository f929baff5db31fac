"""DICOM header -> typed record. Pure Python (pydicom only): tested without Spark.

Real headers are messy: legacy dotted dates, multi-valued numbers where one is expected, values that
fail to decode lazily. Every attribute is read on its own, and a value that cannot be read becomes
NULL with a note in ``parse_warnings`` instead of failing the file.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from micdm.dicom.sr_content import referenced_series
from micdm.dicom.walker import dictionary_vr

__all__ = [
    "HEADER_ATTRIBUTES",
    "READ_KEYS",
    "REQUIRED_UIDS",
    "EncodedHeader",
    "encode_header",
    "header_json",
    "header_record",
    "invalid_uids",
    "missing_uids",
    "parse_dicom_date",
]

_DATE_FORMS = (
    re.compile(r"(\d{4})(\d{2})(\d{2})"),  # DA: YYYYMMDD
    re.compile(r"(\d{4})\.(\d{2})\.(\d{2})"),  # ACR-NEMA: YYYY.MM.DD
    re.compile(r"(\d{4})-(\d{2})-(\d{2})"),  # seen in the wild
)

#: UIDs without which a file cannot become an image_occurrence row.
REQUIRED_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


def parse_dicom_date(value: object) -> tuple[dt.date | None, str | None]:
    """Parse a DA value (also the legacy ``YYYY.MM.DD`` form); returns (date, warning)."""
    if value is None:
        return None, None
    text = str(value).strip()
    if not text:
        return None, None
    for form in _DATE_FORMS:
        match = form.fullmatch(text)
        if match:
            year, month, day = (int(g) for g in match.groups())
            try:
                return dt.date(year, month, day), None
            except ValueError:
                break
    return None, f"invalid date {text[:32]!r}"


def _text(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip() if value is not None else ""
    return text.replace("\x00", "") or None


def _first_number(value: Any) -> float | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    number = _first_number(value)
    return None if number is None else int(number)


def _numbers(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    return [float(v) for v in values]


def _strings(value: Any) -> list[str] | None:
    if value is None or value == "":
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    return [str(v).strip() for v in values]


_Converter = Callable[[Any], Any]

#: DICOM keyword -> (column, converter) for the typed columns; dates are handled apart.
HEADER_ATTRIBUTES: dict[str, tuple[str, _Converter]] = {
    "SOPClassUID": ("sop_class_uid", _text),
    "SOPInstanceUID": ("sop_instance_uid", _text),
    "StudyInstanceUID": ("study_instance_uid", _text),
    "SeriesInstanceUID": ("series_instance_uid", _text),
    "PatientID": ("patient_id", _text),
    "IssuerOfPatientID": ("issuer_of_patient_id", _text),
    "AccessionNumber": ("accession_number", _text),
    "Modality": ("modality", _text),
    "StudyTime": ("study_time", _text),
    "SeriesTime": ("series_time", _text),
    "AcquisitionTime": ("acquisition_time", _text),
    "ContentTime": ("content_time", _text),
    "BodyPartExamined": ("body_part_examined", _text),
    "StudyDescription": ("study_description", _text),
    "SeriesDescription": ("series_description", _text),
    "Manufacturer": ("manufacturer", _text),
    "ManufacturerModelName": ("manufacturer_model_name", _text),
    "SeriesNumber": ("series_number", _integer),
    "InstanceNumber": ("instance_number", _integer),
    "ImageType": ("image_type", _strings),
    "Rows": ("rows", _integer),
    "Columns": ("columns", _integer),
    "NumberOfFrames": ("number_of_frames", _integer),
    "SliceThickness": ("slice_thickness", _first_number),
    "KVP": ("kvp", _first_number),
    "ExposureTime": ("exposure_time", _first_number),
    "XRayTubeCurrent": ("xray_tube_current", _first_number),
    "Exposure": ("exposure", _first_number),
    "PixelSpacing": ("pixel_spacing", _numbers),
    "SpacingBetweenSlices": ("spacing_between_slices", _first_number),
    "MagneticFieldStrength": ("magnetic_field_strength", _first_number),
    "RepetitionTime": ("repetition_time", _first_number),
    "EchoTime": ("echo_time", _first_number),
    "InversionTime": ("inversion_time", _first_number),
    "FlipAngle": ("flip_angle", _first_number),
    "ConvolutionKernel": ("convolution_kernel", _text),
    "ContrastBolusAgent": ("contrast_bolus_agent", _text),
}

_DATE_ATTRIBUTES = {
    "StudyDate": "study_date",
    "SeriesDate": "series_date",
    "AcquisitionDate": "acquisition_date",
    "ContentDate": "content_date",
}

#: DICOM JSON key ("GGGGEEEE") of each attribute read into a typed column.
_ATTRIBUTE_KEYS = {keyword: f"{tag_for_keyword(keyword):08X}"
                   for keyword in (*HEADER_ATTRIBUTES, *_DATE_ATTRIBUTES, "AnatomicRegionSequence")}
#: DICOM JSON keys of the elements micdm reads into columns: a file cut inside one of them is not an instance.
READ_KEYS = frozenset(_ATTRIBUTE_KEYS.values())
#: DICOM JSON key -> (keyword, column, converter) of every typed column; None converts a date.
_TYPED_COLUMNS: dict[str, tuple[str, str, _Converter | None]] = {
    **{_ATTRIBUTE_KEYS[keyword]: (keyword, column, convert)
       for keyword, (column, convert) in HEADER_ATTRIBUTES.items()},
    **{_ATTRIBUTE_KEYS[keyword]: (keyword, column, None) for keyword, column in _DATE_ATTRIBUTES.items()}}
#: VRs of the numbers whose text a header holds: that text is kept (acquisition_text), as written.
_DECIMAL_STRING_VRS = frozenset({"DS", "IS"})
#: The record of a header holding none of the typed attributes.
_EMPTY_RECORD = dict.fromkeys([*(column for _, column, _ in _TYPED_COLUMNS.values()), "acquisition_text",
                               "referenced_series"])
_CODE_VALUE, _CODING_SCHEME = "00080100", "00080102"
_CHARSET_TAG = 0x00080005


@dataclass(frozen=True)
class EncodedHeader:
    """Every element of one header as DICOM JSON, encoded once for both the typed columns and header_json."""

    elements: dict[str, dict[str, Any]]
    """DICOM JSON key -> element, in the data set's order; elements that could not be encoded are absent."""
    failures: dict[str, str]
    """DICOM JSON key -> the error that kept the element out."""
    texts: dict[str, str] = field(default_factory=dict)
    """DICOM JSON key -> the header's own text of each public DS / IS element, before parsing."""


@functools.cache
def _keyword(key: str) -> str:
    """The keyword of a DICOM JSON key; '' for a private or unknown element."""
    return keyword_for_tag(int(key, 16)) or ""


def _number_text(element: Any) -> str | None:
    """The text a DS / IS element holds in the file (values joined by a backslash, padding trimmed)."""
    if isinstance(element, RawDataElement):
        return element.value.decode("latin-1").strip("\x00 ") if element.value else None
    value = element.value
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    texts = [getattr(v, "original_string", None) or str(v) for v in values if v is not None and v != ""]
    return "\\".join(texts) or None


def _charset(dataset: Dataset) -> str | None:
    """The Python codec of a single-byte or UTF-8 SpecificCharacterSet; None for anything else."""
    element = dataset._dict.get(BaseTag(_CHARSET_TAG))
    if element is None:
        return _SIMPLE_CHARSETS[None]
    if isinstance(element, RawDataElement):
        declared = element.value.decode("latin-1").strip("\x00 ") if element.value else ""
        return None if "\\" in declared else _SIMPLE_CHARSETS.get(declared)
    value = element.value
    return _SIMPLE_CHARSETS.get(value if isinstance(value, str) or value is None else "complex")


def encode_header(dataset: Dataset) -> EncodedHeader:
    """DICOM JSON of each element: common VRs straight from the raw bytes, the others through pydicom.

    pydicom's own ``suppress_invalid_tags`` flips a process-wide setting while it runs, which is not
    safe with the reader's threads, so elements that fail are recorded here instead.
    """
    elements: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    texts: dict[str, str] = {}
    charset = _charset(dataset)
    for tag, raw in dataset._dict.items():
        key = f"{int(tag):08X}"
        if (raw.VR or dictionary_vr(raw.tag)) in _DECIMAL_STRING_VRS and _keyword(key):
            text = _number_text(raw)
            if text:
                texts[key] = text
        try:
            elements[key] = _element_json(dataset, tag, raw, charset)
        except RecursionError:
            raise  # nested too deep for this thread: the reader tries again on a deeper stack
        except Exception as error:  # an element that cannot be encoded is left out, not the whole header
            failures[key] = type(error).__name__
    return EncodedHeader(elements, failures, texts)


def _item_json(item: Dataset, charset: str | None) -> dict[str, Any]:
    """A sequence item; one that declares its own SpecificCharacterSet (a DICOMDIR record) decodes by it."""
    own = _charset(item) if _CHARSET_TAG in item._dict else charset
    return {f"{int(tag):08X}": _element_json(item, tag, raw, own) for tag, raw in item._dict.items()}


def _element_json(dataset: Dataset, tag: Any, raw: Any, charset: str | None) -> dict[str, Any]:
    """One element as DICOM JSON. A sequence's items are encoded here element by element, through the fast
    path where it applies: pydicom's own encoder converts every nested element first, and a dose report's
    thousands of content items took seconds."""
    fast = _fast_json(raw, charset) if isinstance(raw, RawDataElement) else None
    if fast is not None:
        return fast
    element = dataset[tag]
    if element.VR == "SQ":
        return {"vr": "SQ", "Value": [_item_json(item, charset) for item in element.value]}
    return element.to_json_dict(bulk_data_element_handler=_drop_bulk, bulk_data_threshold=_BULK_THRESHOLD)


def _first_or_all(element: dict[str, Any] | None) -> Any:
    values = element.get("Value") if element else None
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _anatomic_region_code(encoded: EncodedHeader) -> str | None:
    """``scheme:code`` of the first AnatomicRegionSequence item, for anatomy mapping downstream."""
    items = (encoded.elements.get(_ATTRIBUTE_KEYS["AnatomicRegionSequence"]) or {}).get("Value")
    if not items:
        return None
    code = _text(_first_or_all(items[0].get(_CODE_VALUE)))
    scheme = _text(_first_or_all(items[0].get(_CODING_SCHEME)))
    return f"{scheme}:{code}" if code else None


def _encoded(header: Dataset | EncodedHeader) -> EncodedHeader:
    return header if isinstance(header, EncodedHeader) else encode_header(header)


def header_record(header: Dataset | EncodedHeader) -> dict[str, Any]:
    """Typed columns of one header; unreadable values become None and are noted in parse_warnings."""
    encoded = _encoded(header)
    record = dict(_EMPTY_RECORD)
    warnings = [f"{_TYPED_COLUMNS[key][0]}: {failure}" for key, failure in encoded.failures.items()
                if key in _TYPED_COLUMNS]
    # Only the attributes present are visited: most typed attributes are absent from most headers.
    for key, element in encoded.elements.items():
        typed = _TYPED_COLUMNS.get(key)
        if typed is None:
            continue
        keyword, column, convert = typed
        value, warning = _first_or_all(element), None
        try:
            if convert is None:
                record[column], warning = parse_dicom_date(_text(value))
            else:
                record[column] = convert(value)
        except Exception as error:  # one bad value must not lose the file
            warning = type(error).__name__
        if warning:
            warnings.append(f"{keyword}: {warning}")
    try:
        record["anatomic_region_code"] = _anatomic_region_code(encoded)
    except Exception as error:
        record["anatomic_region_code"] = None
        warnings.append(f"AnatomicRegionSequence: {type(error).__name__}")
    if encoded.texts:
        record["acquisition_text"] = orjson.dumps(
            {_keyword(key): text for key, text in encoded.texts.items()}).decode("utf-8")
    try:
        record["referenced_series"] = referenced_series(encoded.elements)
    except Exception as error:
        warnings.append(f"ReferencedSeriesSequence: {type(error).__name__}")
    record["parse_warnings"] = warnings or None
    return record


def missing_uids(record: dict[str, Any]) -> list[str]:
    """Required UIDs the record lacks (absent or empty)."""
    return [keyword for keyword in REQUIRED_UIDS if not record.get(HEADER_ATTRIBUTES[keyword][0])]


#: PS3.5 9.1: numeric components separated by dots, none with a leading zero (a lone 0 is one).
_UID_FORM = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_UID_MAX_LENGTH = 64


_UID_TAGS = {keyword: tag_for_keyword(keyword) for keyword in REQUIRED_UIDS}


def _padding_problems(dataset: Dataset | None) -> dict[str, str]:
    """Required UIDs whose bytes hold a NUL inside or more than one NUL of padding: a value that damage
    shortened or split, which removing the padding would turn into another valid-looking UID."""
    problems: dict[str, str] = {}
    for keyword, tag in _UID_TAGS.items():
        raw = dataset._dict.get(BaseTag(tag)) if dataset is not None and tag is not None else None
        value = raw.value if isinstance(raw, RawDataElement) else None
        if not isinstance(value, bytes) or not value:
            continue
        body = value[:-1] if value[-1:] in (b"\x00", b" ") else value
        if b"\x00" in body:
            problems[keyword] = f"{keyword} {value.decode('latin-1')[:80]!r}: a NUL inside the value or more than " \
                                "one padding byte"
    return problems


def invalid_uids(record: dict[str, Any], dataset: Dataset | None = None) -> list[str]:
    """What is wrong with each required UID of the record that is present but not a valid UID (padding
    already removed; with the ``dataset`` read, its raw bytes too), as ``Keyword 'value': why``."""
    padding = _padding_problems(dataset)
    problems = list(padding.values())
    for keyword in (k for k in REQUIRED_UIDS if k not in padding):
        value = record.get(HEADER_ATTRIBUTES[keyword][0])
        if not value:
            continue
        if len(value) > _UID_MAX_LENGTH:
            problems.append(f"{keyword} {value[:80]!r}: {len(value)} characters, more than {_UID_MAX_LENGTH}")
        elif not _UID_FORM.fullmatch(value):
            problems.append(f"{keyword} {value!r}: not numeric components separated by dots without leading zeros")
    return problems


def _drop_bulk(element: DataElement) -> str:
    return ""


# Raw values of these VRs are encoded here straight from the bytes (pydicom's per-element conversion
# costs about ten times more); every other VR goes through pydicom.
_MULTI_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_TEXT_VRS = {"IS": int, "DS": float}
_BINARY_VRS = {"US": "H", "UL": "I", "SS": "h", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_BULK_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV"})  # not UN: pydicom may know its real VR
_BULK_THRESHOLD = 1024
_SIMPLE_CHARSETS = {None: "latin-1", "": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
                    "ISO_IR 192": "utf-8"}


def _text_values(vr: str, text: str) -> list[Any]:
    if vr in _SINGLE_TEXT_VRS:
        return [text]
    items = [item.strip("\x00 ") for item in text.split("\\")] if "\\" in text else [text.lstrip("\x00 ")]
    if vr in _NUMBER_TEXT_VRS:
        return [int(float(i)) if vr == "IS" else float(i) for i in items if i]
    if vr == "PN":
        return [_person_name(item) for item in items]
    return items


def _person_name(value: str) -> dict[str, str]:
    """One PN value as its DICOM JSON components; like pydicom, a value with no component fails."""
    components = value.split("=")
    while components and not components[-1]:
        components.pop()
    if not components:
        raise ValueError("person name without components")
    return dict(zip(("Alphabetic", "Ideographic", "Phonetic"), components, strict=False))


_TEXT_VRS = _MULTI_TEXT_VRS | _SINGLE_TEXT_VRS | _NUMBER_TEXT_VRS.keys() | {"PN"}


def _fast_json(raw: RawDataElement, charset: str | None) -> dict[str, Any] | None:
    """DICOM JSON of a raw element of a common VR, or None when pydicom should do it."""
    vr, value = raw.VR or dictionary_vr(raw.tag), raw.value
    if value is None or vr is None:
        return None
    if vr in _TEXT_VRS:  # the most common by far: tested first
        codec = charset if vr in _CHARSET_VRS else "latin-1"
        if codec is None:
            return None
        text = value.decode(codec).rstrip("\x00 ")
        return {"vr": vr, "Value": _text_values(vr, text)} if text else {"vr": vr}
    if vr in _BINARY_VRS:
        if not value:
            return {"vr": vr}
        order = "<" if raw.is_little_endian else ">"
        width = struct.calcsize(order + _BINARY_VRS[vr])
        count = len(value) // width
        return {"vr": vr, "Value": list(struct.unpack(f"{order}{count}{_BINARY_VRS[vr]}", value[: count * width]))}
    if vr in _BULK_VRS:
        if not value:
            return {"vr": vr}
        if len(value) > (_BULK_THRESHOLD // 4) * 3:
            return {"vr": vr, "BulkDataURI": ""}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    return None


#: PerFrameFunctionalGroupsSequence: a description of every frame, the bulk of a large multi-frame header.
_PER_FRAME = "52009230"
#: The macros of a frame's description that place it or set how it is shown (FrameContentSequence,
#: PlanePositionSequence, FrameVOILUTSequence, PixelValueTransformationSequence): what makes every
#: frame's description differ when the acquisition parameters do not.
_FRAME_PLACEMENT = frozenset({"00209111", "00209113", "00289132", "00289145"})


def _distinct_frames(element: dict[str, Any]) -> dict[str, Any]:
    """The per-frame groups without the macros that place or show each frame (and private ones), one item
    per distinct description: what an enhanced MR's echo times or b-values need, in a few items instead of
    thousands."""
    items: dict[bytes, dict[str, Any]] = {}
    for item in element.get("Value") or ():
        kept = {key: value for key, value in item.items()
                if key not in _FRAME_PLACEMENT and not int(key[:4], 16) & 1}
        items.setdefault(_dumps(kept), kept)
    return {"vr": "SQ", "Value": list(items.values())}


def header_json(header: Dataset | EncodedHeader, max_bytes: int) -> tuple[str | None, str | None]:
    """The header as DICOM JSON (PS3.18 F.2) without bulk data, within ``max_bytes``, and what was dropped.

    When the whole header is too large, private elements are left out first ('private'), then the
    macros that place or show each frame, keeping one per-frame item per distinct description
    ('frame_placement'),
    then the per-frame functional groups ('per_frame': a multi-frame object keeps its shared groups and,
    for a segmentation, its segments); when it still does not fit, None is returned ('all').
    """
    elements = _encoded(header).elements
    text = _dumps(elements)
    if len(text) <= max_bytes:
        return text.decode("utf-8"), None
    public = {key: element for key, element in elements.items() if not int(key[:4], 16) & 1}
    distinct = {key: _distinct_frames(e) if key == _PER_FRAME else e for key, e in public.items()}
    for dropped, kept in (("private", public), ("frame_placement", distinct),
                          ("per_frame", {key: e for key, e in public.items() if key != _PER_FRAME})):
        text = _dumps(kept)
        if len(text) <= max_bytes:
            return text.decode("utf-8"), dropped
    return None, "all"


def _dumps(elements: dict[str, dict[str, Any]]) -> bytes:
    """Compact JSON in UTF-8: orjson, much faster than json, and json for what orjson refuses (integers
    beyond 64 bits). orjson writes NaN as null where json would write invalid JSON.
    """
    try:
        return orjson.dumps(elements)
    except TypeError:
        return json.dumps(elements, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
