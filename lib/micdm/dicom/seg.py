"""DICOM Segmentations as algorithm results: one coded feature per segment (no Spark here).

Each segment says what it delineates (segmented property category and type), where (anatomic region)
and, for automatic and semi-automatic segments, which algorithm made it. The rows have the shape of
structured-report items (see dicom/sr.py), so the features stage stores both the same way.
"""

from __future__ import annotations

import json
from typing import Any

from micdm.dicom.sr import (
    ReportItem,
    algorithm_uri,
    content_datetime,
    evidence_series,
    first_value,
    item_row,
    parse_code,
    values,
)

__all__ = ["segment_items"]

_SEGMENTS = "00620002"
_SEGMENT_NUMBER = "00620004"
_CATEGORY = "00620003"
_TYPE = "0062000F"
_ALGORITHM_TYPE = "00620008"
_ALGORITHM_NAME = "00620009"
_ANATOMIC_REGION = "00082218"
_SOFTWARE_VERSIONS = "00181020"
_REFERENCED_SERIES = "00081115"
_SERIES_UID = "0020000E"


def _referenced_series(header: dict[str, Any]) -> list[str]:
    """The source images' series: ReferencedSeriesSequence, else the common evidence sequence."""
    direct = [str(first_value(item, _SERIES_UID)) for item in values(header.get(_REFERENCED_SERIES))
              if isinstance(item, dict) and first_value(item, _SERIES_UID)]
    return direct or evidence_series(header)


def segment_items(header_json: str | None) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """One row per segment (value_type 'CODE'), or the quarantine reason and message."""
    if not header_json:
        return [], "seg_no_header", "no DICOM JSON stored for this segmentation"
    try:
        header = json.loads(header_json)
        segments = values(header.get(_SEGMENTS))
    except (ValueError, TypeError, AttributeError) as error:
        return [], "seg_malformed", f"{type(error).__name__}: {error}"[:500]
    if not segments:
        return [], "seg_no_segments", "SegmentSequence is empty or missing"
    software = first_value(header, _SOFTWARE_VERSIONS)
    series, created = _referenced_series(header), content_datetime(header)
    rows = []
    for index, segment in enumerate(segments, start=1):
        if not isinstance(segment, dict):
            return [], "seg_malformed", "SegmentSequence holds something other than items"
        category = parse_code(first_value(segment, _CATEGORY))
        kind = parse_code(first_value(segment, _TYPE))
        if category is None or kind is None:
            return [], "seg_malformed", f"segment {index} lacks its property category or type code"
        automatic = first_value(segment, _ALGORITHM_TYPE) in ("AUTOMATIC", "SEMIAUTOMATIC")
        number = int(first_value(segment, _SEGMENT_NUMBER) or index)
        item = ReportItem(
            position=f"segment.{number}", value_type="CODE", concept=category, value_code=kind, group=number,
            finding=kind, finding_site=parse_code(first_value(segment, _ANATOMIC_REGION)),
            algorithm=algorithm_uri(first_value(segment, _ALGORITHM_NAME), software) if automatic else None,
        )
        rows.append(item_row(item, series, created))
    return rows, None, None
