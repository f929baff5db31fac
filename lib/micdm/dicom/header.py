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
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = [
    "HEADER_ATTRIBUTES",
    "REQUIRED_UIDS",
    "header_json",
    "header_record",
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
    if isinstance(value, (MultiValue, list, tuple)):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip() if value is not None else ""
    return text.replace("\x00", "") or None


def _first_number(value: Any) -> float | None:
    if isinstance(value, (MultiValue, list, tuple)):
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
    values = value if isinstance(value, (MultiValue, list, tuple)) else [value]
    return [float(v) for v in values]


def _strings(value: Any) -> list[str] | None:
    if value is None or value == "":
        return None
    values = value if isinstance(value, (MultiValue, list, tuple)) else [value]
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

_ATTRIBUTE_TAGS = {keyword: tag_for_keyword(keyword) for keyword in (*HEADER_ATTRIBUTES, *_DATE_ATTRIBUTES)}


def _value(dataset: Dataset, keyword: str, charset: str | None = "latin-1") -> Any:
    """An attribute's value: decoded straight from the raw bytes for common VRs, else by pydicom."""
    tag = _ATTRIBUTE_TAGS.get(keyword)
    raw = dataset._dict.get(tag) if tag is not None else None
    if isinstance(raw, RawDataElement):
        fast = _fast_json(raw, charset)
        if fast is not None:
            values = fast.get("Value")
            if not values:
                return None
            return values[0] if len(values) == 1 else values
    element = dataset.get(keyword)
    return element.value if isinstance(element, DataElement) else element


def _anatomic_region_code(dataset: Dataset) -> str | None:
    """``scheme:code`` of the first AnatomicRegionSequence item, for anatomy mapping downstream."""
    items = _value(dataset, "AnatomicRegionSequence")
    if not items:
        return None
    item = items[0]
    code = _text(item.get("CodeValue"))
    scheme = _text(item.get("CodingSchemeDesignator"))
    return f"{scheme}:{code}" if code else None


def _charset(dataset: Dataset) -> str | None:
    """The Python codec of a single-byte or UTF-8 SpecificCharacterSet; None for anything else."""
    declared = dataset.get("SpecificCharacterSet")
    return _SIMPLE_CHARSETS.get(declared if isinstance(declared, str) or declared is None else "complex")


def header_record(dataset: Dataset) -> dict[str, Any]:
    """Typed columns of one header; unreadable values become None and are noted in parse_warnings."""
    record: dict[str, Any] = {}
    warnings: list[str] = []
    charset = _charset(dataset)
    for keyword, (column, convert) in HEADER_ATTRIBUTES.items():
        try:
            record[column] = convert(_value(dataset, keyword, charset))
        except Exception as error:  # one bad value must not lose the file
            record[column] = None
            warnings.append(f"{keyword}: {type(error).__name__}")
    for keyword, column in _DATE_ATTRIBUTES.items():
        try:
            record[column], warning = parse_dicom_date(_text(_value(dataset, keyword, charset)))
        except Exception as error:
            record[column], warning = None, type(error).__name__
        if warning:
            warnings.append(f"{keyword}: {warning}")
    try:
        record["anatomic_region_code"] = _anatomic_region_code(dataset)
    except Exception as error:
        record["anatomic_region_code"] = None
        warnings.append(f"AnatomicRegionSequence: {type(error).__name__}")
    meta = getattr(dataset, "file_meta", None)
    record["transfer_syntax_uid"] = _text(meta.get("TransferSyntaxUID")) if meta is not None else None
    record["parse_warnings"] = warnings or None
    return record


def missing_uids(record: dict[str, Any]) -> list[str]:
    """Required UIDs the record lacks (absent or empty)."""
    return [keyword for keyword in REQUIRED_UIDS if not record.get(HEADER_ATTRIBUTES[keyword][0])]


def _drop_bulk(element: DataElement) -> str:
    return ""


# Raw values of these VRs are encoded here straight from the bytes (pydicom's per-element conversion
# costs about ten times more); every other VR goes through pydicom.
_TEXT_VRS = frozenset({"UI", "CS", "DA", "TM", "DT", "AS", "SH", "LO"})
_CHARSET_VRS = frozenset({"SH", "LO"})
_NUMBER_TEXT_VRS = {"IS": int, "DS": float}
_BINARY_VRS = {"US": "H", "UL": "I", "SS": "h", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_BULK_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV"})  # not UN: pydicom may know its real VR
_BULK_THRESHOLD = 1024
_FAST_VRS = _TEXT_VRS | _NUMBER_TEXT_VRS.keys() | _BINARY_VRS.keys() | _BULK_VRS
_SIMPLE_CHARSETS = {None: "latin-1", "": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
                    "ISO_IR 192": "utf-8"}


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    """The VR of a public tag read with implicit VR; None for private or ambiguous ones."""
    if tag >> 16 & 1:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if len(vr) == 2 else None


def _fast_json(raw: RawDataElement, charset: str | None) -> dict[str, Any] | None:
    """DICOM JSON of a raw element of a common VR, or None when pydicom should do it."""
    vr, value = raw.VR or _dictionary_vr(raw.tag), raw.value
    if vr not in _FAST_VRS or value is None:
        return None
    if not value:
        return {"vr": vr}
    if vr in _TEXT_VRS or vr in _NUMBER_TEXT_VRS:
        if vr in _CHARSET_VRS and charset is None:
            return None
        text = value.decode(charset or "latin-1").rstrip("\x00 ")
        items = [item.strip("\x00 ") for item in text.split("\\")]
        if vr in _NUMBER_TEXT_VRS:
            convert = _NUMBER_TEXT_VRS[vr]
            return {"vr": vr, "Value": [convert(float(i)) if vr == "IS" else convert(i) for i in items if i]}
        return {"vr": vr, "Value": items} if text else {"vr": vr}
    if vr in _BINARY_VRS:
        order = "<" if raw.is_little_endian else ">"
        width = struct.calcsize(order + _BINARY_VRS[vr])
        count = len(value) // width
        return {"vr": vr, "Value": list(struct.unpack(f"{order}{count}{_BINARY_VRS[vr]}", value[: count * width]))}
    if vr in _BULK_VRS:
        if len(value) > (_BULK_THRESHOLD // 4) * 3:
            return {"vr": vr, "BulkDataURI": ""}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    return None


def _json_elements(dataset: Dataset) -> dict[str, Any]:
    """DICOM JSON of each element that can be encoded; the others are left out.

    pydicom's own ``suppress_invalid_tags`` flips a process-wide setting while it runs, which is not
    safe with the reader's threads, so invalid elements are skipped here instead.
    """
    encoded: dict[str, Any] = {}
    charset = _charset(dataset)
    for tag, raw in dataset._dict.items():
        try:
            fast = _fast_json(raw, charset) if isinstance(raw, RawDataElement) else None
            encoded[f"{int(tag):08X}"] = fast if fast is not None else dataset[tag].to_json_dict(
                bulk_data_element_handler=_drop_bulk, bulk_data_threshold=_BULK_THRESHOLD)
        except Exception:  # an element that cannot be encoded is skipped, not the whole header
            continue
    return encoded


def header_json(dataset: Dataset, max_bytes: int) -> tuple[str | None, bool]:
    """The header as DICOM JSON (PS3.18 F.2) without bulk data, within ``max_bytes``.

    When the whole header is too large, private elements are left out first; when it still does not
    fit, None is returned. The flag says whether anything was left out.
    """
    def encode(source: Dataset) -> str:
        return json.dumps(_json_elements(source), separators=(",", ":"), ensure_ascii=False)

    text = encode(dataset)
    if len(text.encode("utf-8")) <= max_bytes:
        return text, False
    public = Dataset()
    for element in dataset:
        if not element.tag.is_private:
            public.add(element)
    text = encode(public)
    return (text, True) if len(text.encode("utf-8")) <= max_bytes else (None, True)
