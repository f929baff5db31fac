"""DICOM header -> typed record. Pure Python (pydicom only): tested without Spark.

Real headers are messy: legacy dotted dates, multi-valued numbers where one is expected, values that
fail to decode lazily. Every attribute is read on its own, and a value that cannot be read becomes
NULL with a note in ``parse_warnings`` instead of failing the file.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

from pydicom.dataelem import DataElement
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
    if isinstance(value, MultiValue):
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


def _value(dataset: Dataset, keyword: str) -> Any:
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


def header_record(dataset: Dataset) -> dict[str, Any]:
    """Typed columns of one header; unreadable values become None and are noted in parse_warnings."""
    record: dict[str, Any] = {}
    warnings: list[str] = []
    for keyword, (column, convert) in HEADER_ATTRIBUTES.items():
        try:
            record[column] = convert(_value(dataset, keyword))
        except Exception as error:  # one bad value must not lose the file
            record[column] = None
            warnings.append(f"{keyword}: {type(error).__name__}")
    for keyword, column in _DATE_ATTRIBUTES.items():
        try:
            record[column], warning = parse_dicom_date(_value(dataset, keyword))
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


def _json_elements(dataset: Dataset) -> dict[str, Any]:
    """DICOM JSON of each element that can be encoded; the others are left out.

    pydicom's own ``suppress_invalid_tags`` flips a process-wide setting while it runs, which is not
    safe with the reader's threads, so invalid elements are skipped here instead.
    """
    encoded: dict[str, Any] = {}
    for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset yields elements, not tags)
        try:
            element = dataset[tag]
            encoded[f"{int(tag):08X}"] = element.to_json_dict(bulk_data_element_handler=_drop_bulk,
                                                               bulk_data_threshold=1024)
        except Exception:  # an element pydicom cannot encode is skipped, not the whole header
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
