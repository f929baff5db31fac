"""DICOM Segmentations as algorithm results: one coded feature per segment (no Spark here).

Each segment says what it delineates (segmented property category and type), where (anatomic region)
and, for automatic and semi-automatic segments, which algorithm made it. The rows have the shape of
structured-report items (see dicom/sr.py), so the features stage stores both the same way.
"""

from __future__ import annotations

import json
from typing import Any

from micdm.dicom.sr import Code, algorithm_uri, parse_code
from micdm.dicom.sr_content import first_value
from micdm.reasons import FeatureReason

__all__ = ["segment_items"]

_SEGMENTS = "00620002"
_SEGMENT_NUMBER = "00620004"
_CATEGORY = "00620003"
_TYPE = "0062000F"
_ALGORITHM_TYPE = "00620008"
_ALGORITHM_NAME = "00620009"
_ANATOMIC_REGION = "00082218"
_SOFTWARE_VERSIONS = "00181020"
_CODE_VALUE, _SCHEME, _MEANING = "00080100", "00080102", "00080104"


def _code(item: Any) -> Code | None:
    if not isinstance(item, dict):
        return None
    return parse_code(first_value(item, _SCHEME), first_value(item, _CODE_VALUE), first_value(item, _MEANING))


def _segment_row(segment: dict[str, Any], index: int, software: str | None) -> dict[str, Any] | None:
    category, kind = _code(first_value(segment, _CATEGORY)), _code(first_value(segment, _TYPE))
    if category is None or kind is None:
        return None
    site = _code(first_value(segment, _ANATOMIC_REGION))
    automatic = first_value(segment, _ALGORITHM_TYPE) in ("AUTOMATIC", "SEMIAUTOMATIC")
    number = int(first_value(segment, _SEGMENT_NUMBER) or index)
    return {
        "position": f"segment.{number}", "value_type": "CODE", "concept_scheme": category.scheme,
        "concept_code": category.value, "concept_meaning": category.meaning, "derivation": None,
        "laterality": None, "method": None, "modifier": None, "finding_group": number, "finding_scheme": kind.scheme,
        "finding_code": kind.value, "site_scheme": site.scheme if site else None,
        "site_code": site.value if site else None, "site_meaning": site.meaning if site else None,
        "tracking_id": None, "number": None, "unit_code": None, "unit_meaning": None,
        "value_scheme": kind.scheme, "value_code": kind.value, "value_meaning": kind.meaning,
        "algorithm": algorithm_uri(first_value(segment, _ALGORITHM_NAME), software) if automatic else None,
    }


def segment_items(header_json: str | None) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """One row per segment (value_type 'CODE'), or the quarantine reason and message."""
    if not header_json:
        return [], FeatureReason.SEG_NO_HEADER, "no DICOM JSON stored for this segmentation"
    try:
        header = json.loads(header_json)
        segments = (header.get(_SEGMENTS) or {}).get("Value") or []
    except (ValueError, TypeError, AttributeError) as error:
        return [], FeatureReason.SEG_MALFORMED, f"{type(error).__name__}: {error}"[:500]
    if not segments:
        return [], FeatureReason.SEG_NO_SEGMENTS, "SegmentSequence is empty or missing"
    software = first_value(header, _SOFTWARE_VERSIONS)
    rows = []
    for index, segment in enumerate(segments, start=1):
        row = _segment_row(segment, index, software) if isinstance(segment, dict) else None
        if row is None:
            return [], FeatureReason.SEG_MALFORMED, f"segment {index} is not an item with a property category and type"
        rows.append(row)
    return rows, None, None
