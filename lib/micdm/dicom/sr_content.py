"""A structured report's content tree as flat rows, one per content item (no Spark here).

The extract stage calls this on the header it has just decoded, so a report's content is kept whole
whatever the size of its header (radiation-dose reports run to megabytes) and whatever
``header_json_max_bytes`` leaves in dicom_instance. Rows keep the file's codes as they are; meaning is
given later (dicom/sr.py, in the features stage). Positions follow PS3.3 C.17.3.2.5: the root is ``1``,
its second child ``1.2``, which is also how by-reference relationships name their target.
"""

from __future__ import annotations

from typing import Any

from micdm.reasons import FeatureReason

__all__ = ["MAX_DEPTH", "SR_CLASS_PREFIX", "ContentError", "content_rows", "first_value", "is_report",
           "referenced_series"]

#: SOP classes of structured reports (Basic, Enhanced, Comprehensive, 3D, dose, key object selection...).
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Deeper than any real report (templates nest fewer than ten levels): a deeper tree is refused.
MAX_DEPTH = 64

_VALUE_TYPE, _RELATIONSHIP, _CONCEPT_NAME, _CONTENT = "0040A040", "0040A010", "0040A043", "0040A730"
_MEASURED_VALUE, _NUMERIC_VALUE, _UNITS, _CONCEPT_CODE = "0040A300", "0040A30A", "004008EA", "0040A168"
_TEXT_VALUES = {"TEXT": "0040A160", "DATETIME": "0040A120", "DATE": "0040A121", "TIME": "0040A122",
                "UIDREF": "0040A124", "PNAME": "0040A123"}
_REFERENCED_SOP, _SOP_CLASS, _SOP_INSTANCE = "00081199", "00081150", "00081155"
_FRAMES, _SEGMENTS = "00081160", "0062000B"
_GRAPHIC_TYPE, _GRAPHIC_DATA, _FRAME_OF_REFERENCE = "00700023", "00700022", "30060024"
_BY_REFERENCE = "0040DB73"
_TEMPLATE, _TEMPLATE_ID = "0040A504", "0040DB00"
_EVIDENCE = ("0040A375", "0040A385")  # current requested procedure evidence, pertinent other evidence
_REFERENCED_SERIES, _SERIES_UID = "00081115", "0020000E"
_CODE_VALUE, _SCHEME, _MEANING, _LONG_CODE_VALUE, _URN_CODE_VALUE = (
    "00080100", "00080102", "00080104", "00080119", "00080120")


class ContentError(ValueError):
    """A content tree micdm does not keep: the reason goes to the feature quarantine."""

    def __init__(self, reason: FeatureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_report(sop_class_uid: str | None) -> bool:
    return bool(sop_class_uid) and str(sop_class_uid).startswith(SR_CLASS_PREFIX)


def _values(element: Any) -> list[Any]:
    return (element.get("Value") or []) if isinstance(element, dict) else []


def first_value(item: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object, or None."""
    found = _values(item.get(tag))
    return found[0] if found else None


def _items(item: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return [child for child in _values(item.get(tag)) if isinstance(child, dict)]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):  # a person name in DICOM JSON
        value = value.get("Alphabetic")
    text = str(value).strip()
    return text or None


def _code(item: dict[str, Any] | None, prefix: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        return {}
    value = first_value(item, _CODE_VALUE) or first_value(item, _LONG_CODE_VALUE) or first_value(item, _URN_CODE_VALUE)
    return {f"{prefix}_scheme": _text(first_value(item, _SCHEME)), f"{prefix}_code": _text(value),
            f"{prefix}_meaning": _text(first_value(item, _MEANING))}


def _evidence_series_of(header: dict[str, Any]) -> dict[str, str]:
    """SOP instance UID -> series UID of every instance the report lists as evidence."""
    series_of: dict[str, str] = {}
    for tag in _EVIDENCE:
        for study in _items(header, tag):
            for series in _items(study, _REFERENCED_SERIES):
                uid = _text(first_value(series, _SERIES_UID))
                for sop in _items(series, _REFERENCED_SOP):
                    instance = _text(first_value(sop, _SOP_INSTANCE))
                    if uid and instance:
                        series_of.setdefault(instance, uid)
    return series_of


def referenced_series(header: dict[str, Any]) -> list[str] | None:
    """Series an object says it derives from or reports on, in its own order: the ReferencedSeriesSequence
    (segmentations, parametric maps), then the SR evidence sequences."""
    found: list[str] = []
    sources = [header] + [study for tag in _EVIDENCE for study in _items(header, tag)]
    for source in sources:
        for series in _items(source, _REFERENCED_SERIES):
            uid = _text(first_value(series, _SERIES_UID))
            if uid and uid not in found:
                found.append(uid)
    return found or None


def _value(item: dict[str, Any], value_type: str | None, series_of: dict[str, str]) -> dict[str, Any]:
    """The value columns of one content item, by its value type."""
    row: dict[str, Any] = {}
    if value_type == "NUM":
        measured = _items(item, _MEASURED_VALUE)
        if measured:
            raw = first_value(measured[0], _NUMERIC_VALUE)
            row["text_value"] = _text(raw)
            try:
                row["number"] = None if raw is None else float(raw)
            except (TypeError, ValueError):
                row["number"] = None
            row.update(_code(next(iter(_items(measured[0], _UNITS)), None), "unit"))
    elif value_type == "CODE":
        row.update(_code(next(iter(_items(item, _CONCEPT_CODE)), None), "value"))
    elif value_type in _TEXT_VALUES:
        row["text_value"] = _text(first_value(item, _TEXT_VALUES[value_type]))
    elif value_type in ("IMAGE", "COMPOSITE", "WAVEFORM"):
        sops = _items(item, _REFERENCED_SOP)
        if sops:
            instance = _text(first_value(sops[0], _SOP_INSTANCE))
            row.update(referenced_sop_class_uid=_text(first_value(sops[0], _SOP_CLASS)),
                       referenced_sop_instance_uid=instance, referenced_series_uid=series_of.get(instance or ""),
                       referenced_frames=[int(f) for f in _values(sops[0].get(_FRAMES))] or None,
                       referenced_segments=[int(s) for s in _values(sops[0].get(_SEGMENTS))] or None)
    elif value_type in ("SCOORD", "SCOORD3D"):
        row.update(graphic_type=_text(first_value(item, _GRAPHIC_TYPE)),
                   graphic_data=[float(v) for v in _values(item.get(_GRAPHIC_DATA))] or None,
                   frame_of_reference_uid=_text(first_value(item, _FRAME_OF_REFERENCE)))
    return row


def _row(item: dict[str, Any], position: str, series_of: dict[str, str]) -> dict[str, Any]:
    value_type = _text(first_value(item, _VALUE_TYPE))
    target = _values(item.get(_BY_REFERENCE))
    templates = _items(item, _TEMPLATE)
    row = {"position": position, "relationship": _text(first_value(item, _RELATIONSHIP)), "value_type": value_type,
           **_code(next(iter(_items(item, _CONCEPT_NAME)), None), "concept"),
           "template_id": _text(first_value(templates[0], _TEMPLATE_ID)) if templates else None,
           "referenced_content": ".".join(str(int(n)) for n in target) if target else None}
    row.update(_value(item, value_type, series_of))
    return row


def content_rows(header: dict[str, Any], max_items: int) -> list[dict[str, Any]]:
    """Every content item of one report (DICOM JSON data set), root first, in document order.

    Raises ContentError when the tree is deeper than MAX_DEPTH or holds more than ``max_items`` items;
    values that cannot be read are kept as text (a NUM's number None) for the features stage to judge.
    """
    series_of = _evidence_series_of(header)
    rows: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], str, int]] = [(header, "1", 0)]
    while pending:  # iterative: a hostile tree must not exhaust the stack
        item, position, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise ContentError(FeatureReason.SR_TOO_DEEP, f"content tree deeper than {MAX_DEPTH} levels at {position}")
        if len(rows) >= max_items:
            raise ContentError(FeatureReason.SR_TOO_MANY_ITEMS, f"more than {max_items} content items "
                                                    "(extract.sr_max_items); raise it and re-extract")
        children = _values(item.get(_CONTENT))
        if not all(isinstance(child, dict) for child in children):
            raise ContentError(FeatureReason.SR_MALFORMED,
                               f"ContentSequence of {position} holds something other than items")
        rows.append(_row(item, position, series_of))
        pending.extend((child, f"{position}.{number}", depth + 1)
                       for number, child in reversed(list(enumerate(children, start=1))))
    return rows
