"""DICOM Structured Reports as features: NUM and CODE content items, grouped by finding (no Spark here).

Works on the DICOM JSON (PS3.18 F.2) of an SR's header, which extract already stores in
dicom_instance.header_json, so reports are never read from storage twice. Understands TID 1500
measurement reports (measurement groups with their finding type, finding site, tracking identifiers and
algorithm identification) and any other SR with numeric content, such as radiation dose reports: every
NUM item becomes a measurement, every CODE item below a measurement group a qualitative evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import quote

__all__ = ["Code", "ReportItem", "SrError", "algorithm_uri", "content_datetime", "evidence_series", "first_value",
           "item_row", "parse_code", "parse_report", "report_items", "snomed_ct", "values"]

# DICOM JSON tags
_VALUE_TYPE = "0040A040"
_RELATIONSHIP = "0040A010"
_CONCEPT_NAME = "0040A043"
_CONTENT = "0040A730"
_MEASURED_VALUE = "0040A300"
_NUMERIC_VALUE = "0040A30A"
_UNITS = "004008EA"
_CONCEPT_CODE = "0040A168"
_TEXT_VALUE = "0040A160"
_UID_VALUE = "0040A124"
_REFERENCED_SOP = "00081199"
_REFERENCED_SOP_INSTANCE = "00081155"
_EVIDENCE = "0040A375"
_REFERENCED_SERIES = "00081115"
_SERIES_UID = "0020000E"
_CODE_VALUE, _SCHEME, _MEANING, _LONG_CODE_VALUE, _URN_CODE_VALUE = (
    "00080100", "00080102", "00080104", "00080119", "00080120")
_CONTENT_DATE, _CONTENT_TIME = "00080023", "00080033"

#: Concept names of TID 1500 (DCM and SCT codes) that give a group its meaning.
_MEASUREMENT_GROUP = ("DCM", "125007")
_FINDING = ("DCM", "121071")
_FINDING_SITES = (("SCT", "363698007"), ("SRT", "G-C0E3"))  # the SNOMED RT code of older reports
_IMAGE_LIBRARY = ("DCM", "111028")  # descriptions of the source images, not findings
_TRACKING_ID = ("DCM", "112039")
_TRACKING_UID = ("DCM", "112040")
_ALGORITHM_NAME = ("DCM", "111001")
_ALGORITHM_VERSION = ("DCM", "111003")
#: Deeper than any real report; a deeper tree is malformed (and would exhaust the stack).
MAX_DEPTH = 64


class SrError(ValueError):
    """A report micdm cannot read: the reason goes to the feature quarantine."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Code:
    scheme: str
    value: str
    meaning: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.scheme, self.value

    @property
    def source_value(self) -> str:
        """``SCHEME:CODE``, the form kept in *_source_value columns (varchar 50)."""
        return f"{self.scheme}:{self.value}"[:50]


@dataclass(frozen=True)
class ReportItem:
    """One NUM (value_type 'NUM') or CODE ('CODE') content item, with the context of its group."""

    position: str
    """Dotted path of the item in the content tree (1.3.2): its stable key within the report."""
    value_type: str
    concept: Code
    number: float | None = None
    unit: Code | None = None
    modifier: str | None = None
    """A NUM's concept modifiers (how it was derived), e.g. 'Mean'."""
    value_code: Code | None = None
    group: int | None = None
    """Index of its measurement group (items of one finding share it); None outside groups."""
    finding: Code | None = None
    finding_site: Code | None = None
    tracking_id: str | None = None
    algorithm: str | None = None
    """URI naming the algorithm and its version, when the group identifies one."""
    referenced_instances: tuple[str, ...] = ()


@dataclass
class _Context:
    group: int | None = None
    finding: Code | None = None
    finding_site: Code | None = None
    tracking_id: str | None = None
    algorithm_name: str | None = None
    algorithm_version: str | None = None
    referenced: list[str] = field(default_factory=list)


def values(element: dict[str, Any] | None) -> list[Any]:
    """The Value list of a DICOM JSON element (empty when absent)."""
    return (element or {}).get("Value") or []


def first_value(item: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object, or None."""
    found = values(item.get(tag))
    return found[0] if found else None


def parse_code(item: dict[str, Any] | None) -> Code | None:
    """A code sequence item as a Code (code value, long or URN code value), None when incomplete."""
    if not isinstance(item, dict):
        return None
    value = first_value(item, _CODE_VALUE) or first_value(item, _LONG_CODE_VALUE) or first_value(item, _URN_CODE_VALUE)
    scheme = first_value(item, _SCHEME)
    if value is None or scheme is None:
        return None
    return Code(*snomed_ct(str(scheme), str(value)), first_value(item, _MEANING))


@cache
def _srt_to_sct() -> dict[str, str]:
    from pydicom.sr._snomed_dict import mapping

    return dict(mapping["SRT"])


def snomed_ct(scheme: str, value: str) -> tuple[str, str]:
    """A legacy SNOMED-RT code (SRT 'T-C5300', 'M-80003') as its SNOMED CT code (SCT '55940004'), by the
    DICOM standard's translation table that pydicom ships; any other code as it is."""
    if scheme in ("SRT", "SNM3"):
        translated = _srt_to_sct().get(value)
        if translated is not None:
            return "SCT", translated
    return scheme, value


def _number(measured: dict[str, Any]) -> float | None:
    value = first_value(measured, _NUMERIC_VALUE)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SrError("sr_bad_value", f"NumericValue {value!r} is not a number") from None


def algorithm_uri(name: str | None, version: str | None) -> str | None:
    """``urn:dicom:algorithm:<name>:<version>``, percent-encoded, for image_feature.alg_system."""
    if not name:
        return None
    return f"urn:dicom:algorithm:{quote(name, safe='')}:{quote(version or 'unknown', safe='')}"


def _children(item: dict[str, Any]) -> list[dict[str, Any]]:
    children = values(item.get(_CONTENT))
    if not all(isinstance(child, dict) for child in children):
        raise SrError("sr_malformed", "ContentSequence holds something other than items")
    return children


def _group_context(group: dict[str, Any], index: int) -> _Context:
    """What a measurement group says about all its items: finding, site, tracking id, algorithm."""
    context = _Context(group=index)
    for child in _children(group):
        concept = parse_code(first_value(child, _CONCEPT_NAME))
        if concept is None:
            continue
        value_type = first_value(child, _VALUE_TYPE)
        if value_type == "CODE" and concept.key == _FINDING:
            context.finding = parse_code(first_value(child, _CONCEPT_CODE))
        elif value_type == "CODE" and concept.key in _FINDING_SITES:
            context.finding_site = parse_code(first_value(child, _CONCEPT_CODE))
        elif concept.key in (_TRACKING_ID, _TRACKING_UID) and context.tracking_id is None:
            context.tracking_id = first_value(child, _TEXT_VALUE) or first_value(child, _UID_VALUE)
        elif concept.key == _ALGORITHM_NAME:
            context.algorithm_name = first_value(child, _TEXT_VALUE)
        elif concept.key == _ALGORITHM_VERSION:
            context.algorithm_version = first_value(child, _TEXT_VALUE)
        elif value_type == "IMAGE":
            sops = [first_value(sop, _REFERENCED_SOP_INSTANCE) for sop in values(child.get(_REFERENCED_SOP))]
            context.referenced += [str(uid) for uid in sops if uid]
    return context


_CONTEXT_CONCEPTS = (_FINDING, *_FINDING_SITES)
#: Relationships of CODE items that are qualitative evaluations; the rest (HAS CONCEPT MOD, HAS OBS
#: CONTEXT, ...) qualify another item and are not features of their own.
_EVALUATIONS = ("CONTAINS", "HAS PROPERTIES")


def _modifiers(item: dict[str, Any]) -> str | None:
    """Meanings of a NUM's concept modifiers (Derivation: Mean, Maximum; Measurement Method: ...)."""
    meanings = []
    for child in _children(item):
        if first_value(child, _RELATIONSHIP) == "HAS CONCEPT MOD" and first_value(child, _VALUE_TYPE) == "CODE":
            code = parse_code(first_value(child, _CONCEPT_CODE))
            if code is not None:
                meanings.append(code.meaning or code.value)
    return ", ".join(meanings) or None


def _walk(items: list[dict[str, Any]], prefix: str, context: _Context, depth: int,
          groups: list[int]) -> Iterator[ReportItem]:
    if depth > MAX_DEPTH:
        raise SrError("sr_too_deep", f"content tree deeper than {MAX_DEPTH} levels")
    for number, item in enumerate(items, start=1):
        position = f"{prefix}.{number}" if prefix else str(number)
        value_type = first_value(item, _VALUE_TYPE)
        concept = parse_code(first_value(item, _CONCEPT_NAME))
        inner = context
        if value_type == "CONTAINER" and concept is not None and concept.key == _IMAGE_LIBRARY:
            continue
        if value_type == "CONTAINER" and concept is not None and concept.key == _MEASUREMENT_GROUP:
            groups.append(len(groups) + 1)
            inner = _group_context(item, groups[-1])
        elif value_type == "NUM":
            if concept is None:
                raise SrError("sr_malformed", f"NUM item {position} has no concept name")
            measured = first_value(item, _MEASURED_VALUE)
            number_value = _number(measured) if isinstance(measured, dict) else None
            unit = parse_code(first_value(measured, _UNITS)) if isinstance(measured, dict) else None
            yield _item(position, "NUM", concept, context, number=number_value, unit=unit,
                        modifier=_modifiers(item))
        elif value_type == "CODE" and context.group is not None and concept is not None \
                and concept.key not in _CONTEXT_CONCEPTS and first_value(item, _RELATIONSHIP) in _EVALUATIONS:
            yield _item(position, "CODE", concept, context, value_code=parse_code(first_value(item, _CONCEPT_CODE)))
        yield from _walk(_children(item), position, inner, depth + 1, groups)


def _item(position: str, value_type: str, concept: Code, context: _Context, **values: Any) -> ReportItem:
    return ReportItem(
        position=position, value_type=value_type, concept=concept, group=context.group, finding=context.finding,
        finding_site=context.finding_site, tracking_id=context.tracking_id,
        algorithm=algorithm_uri(context.algorithm_name, context.algorithm_version),
        referenced_instances=tuple(context.referenced), **values,
    )


def parse_report(header: dict[str, Any]) -> list[ReportItem]:
    """Every NUM item, and every CODE item of a measurement group, of one report (DICOM JSON dataset).

    Raises SrError (with a reason code) for a report whose content tree cannot be read.
    """
    if not isinstance(header, dict):
        raise SrError("sr_malformed", "the header is not a DICOM JSON object")
    try:
        return list(_walk(_children(header), "", _Context(), 0, []))
    except RecursionError:
        raise SrError("sr_too_deep", "content tree too deep to walk") from None


def evidence_series(header: dict[str, Any]) -> list[str]:
    """Series UIDs the report lists as its evidence (CurrentRequestedProcedureEvidenceSequence)."""
    series = []
    for study in values(header.get(_EVIDENCE)):
        for item in values(study.get(_REFERENCED_SERIES)) if isinstance(study, dict) else []:
            uid = first_value(item, _SERIES_UID) if isinstance(item, dict) else None
            if uid:
                series.append(str(uid))
    return series


def report_items(header_json: str | None) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """Items of one report as plain rows, plus the quarantine reason and message when it cannot be read.

    The form Spark needs: a row per item (see ReportItem), every report giving either rows or a reason.
    """
    if not header_json:
        return [], "sr_no_header", "no DICOM JSON stored for this report"
    try:
        header = json.loads(header_json)
        items = parse_report(header)
    except SrError as error:
        return [], error.reason, str(error)
    except (ValueError, TypeError, AttributeError) as error:
        return [], "sr_malformed", f"{type(error).__name__}: {error}"[:500]
    evidence, created = evidence_series(header), content_datetime(header)
    return [item_row(item, evidence, created) for item in items], None, None


def item_row(item: ReportItem, evidence: list[str], created: str | None) -> dict[str, Any]:
    """One item as the flat row Spark stores (schema.REPORT_ITEM), with its document's evidence and date."""

    def part(code: Code | None, attribute: str) -> str | None:
        return getattr(code, attribute) if code else None

    return {
        "position": item.position, "value_type": item.value_type,
        "concept_scheme": item.concept.scheme, "concept_code": item.concept.value,
        "concept_meaning": item.concept.meaning, "number": item.number,
        "unit_code": part(item.unit, "value"), "modifier": item.modifier,
        "value_scheme": part(item.value_code, "scheme"), "value_code": part(item.value_code, "value"),
        "value_meaning": part(item.value_code, "meaning"), "finding_group": item.group,
        "finding_scheme": part(item.finding, "scheme"), "finding_code": part(item.finding, "value"),
        "site_scheme": part(item.finding_site, "scheme"), "site_code": part(item.finding_site, "value"),
        "tracking_id": item.tracking_id, "algorithm": item.algorithm,
        "referenced_instances": list(item.referenced_instances), "evidence_series": evidence,
        "content_datetime": created,
    }


def content_datetime(header: dict[str, Any]) -> str | None:
    """ContentDate + ContentTime as one DICOM DT string (YYYYMMDDhhmmss...)."""
    date, time = first_value(header, _CONTENT_DATE), first_value(header, _CONTENT_TIME)
    if not date:
        return None
    return f"{date}{time or ''}"
