"""Structured reports as findings: measurement groups, their numbers and coded evaluations (no Spark here).

Works on a report's content items as extract keeps them (dicom/sr_content.py, table sr_content_item).
Understands TID 1500 measurement reports (groups of TID 1410 / 1411 / 1501 with their finding, site,
tracking identifiers, algorithm and the images, segmentation or source series they were measured on)
and radiation dose reports (TID 10011 / 10001: each irradiation event a group, the accumulated dose its
own), and takes every NUM of any other report. A group says which images it describes; dicom/sr.py
only collects those references, the features stage decides which image_occurrence they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import quote

from micdm.dicom.sr_content import MAX_DEPTH, ContentError
from micdm.reasons import FeatureReason

__all__ = ["Analysis", "Code", "algorithm_uri", "analyse_report", "parse_code", "snomed_ct"]

#: Containers whose content is one finding or one event: TID 1500's measurement groups, the irradiation
#: events and accumulated doses of CT (TID 10011) and projection X-ray (TID 10001) dose reports.
_GROUPS = {("DCM", "125007"), ("DCM", "113819"), ("DCM", "113706"), ("DCM", "113811"), ("DCM", "113702")}
_IMAGE_LIBRARY = ("DCM", "111028")  # descriptions of the source images, not findings
_FINDING = ("DCM", "121071")
_FINDING_CATEGORY = ("SCT", "276214006")
_FINDING_SITE = ("SCT", "363698007")
_LATERALITY = ("SCT", "272741003")
_DERIVATION = ("DCM", "121401")
_METHOD = ("SCT", "370129005")
_TRACKING_ID = ("DCM", "112039")
_TRACKING_UIDS = (("DCM", "112040"), ("DCM", "113769"))  # tracking UID; irradiation event UID
_SOURCE_SERIES = ("DCM", "121232")
_ALGORITHM_NAME = ("DCM", "111001")
_ALGORITHM_VERSION = ("DCM", "111003")
_SEGMENTATION_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
#: Relationships of CODE items that are qualitative evaluations; the rest (HAS CONCEPT MOD, HAS OBS
#: CONTEXT, ...) qualify another item and are not features of their own.
_EVALUATIONS = ("CONTAINS", "HAS PROPERTIES")
_CONTEXT = {_FINDING, _FINDING_SITE}


@dataclass(frozen=True)
class Code:
    scheme: str
    value: str
    meaning: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.scheme, self.value


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


def parse_code(scheme: str | None, value: str | None, meaning: str | None = None) -> Code | None:
    """A coded entry as a Code with SNOMED-RT translated; None when incomplete."""
    if not scheme or not value:
        return None
    return Code(*snomed_ct(scheme, value), meaning)


def algorithm_uri(name: str | None, version: str | None) -> str | None:
    """``urn:dicom:algorithm:<name>:<version>``, percent-encoded, for image_feature.alg_system."""
    if not name:
        return None
    return f"urn:dicom:algorithm:{quote(name, safe='')}:{quote(version or 'unknown', safe='')}"


@dataclass
class _Node:
    row: dict[str, Any]
    children: list[_Node] = field(default_factory=list)

    def code(self, role: str) -> Code | None:
        return parse_code(self.row.get(f"{role}_scheme"), self.row.get(f"{role}_code"),
                          self.row.get(f"{role}_meaning"))

    @property
    def concept(self) -> tuple[str, str] | None:
        code = self.code("concept")
        return code.key if code else None

    def is_(self, value_type: str, *concepts: tuple[str, str]) -> bool:
        return self.row.get("value_type") == value_type and (not concepts or self.concept in concepts)


def _key(position: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in position.split("."))
    except ValueError:
        raise ContentError(FeatureReason.SR_MALFORMED,
                           f"content item position {position!r} is not dotted numbers") from None


def _tree(rows: Iterable[dict[str, Any]]) -> tuple[_Node, dict[str, _Node]]:
    nodes: dict[str, _Node] = {}
    for row in sorted(rows, key=lambda r: _key(r["position"])):
        nodes[row["position"]] = _Node(row)
    root = nodes.get("1")
    if root is None:
        raise ContentError(FeatureReason.SR_MALFORMED, "the report has no root content item")
    for position, node in nodes.items():
        if position == "1":
            continue
        parent = nodes.get(position.rpartition(".")[0])
        if parent is None:
            raise ContentError(FeatureReason.SR_MALFORMED, f"content item {position} has no parent")
        parent.children.append(node)
    if max(len(_key(p)) for p in nodes) > MAX_DEPTH + 1:
        raise ContentError(FeatureReason.SR_TOO_DEEP, f"content tree deeper than {MAX_DEPTH} levels")
    return root, nodes


def _check_references(nodes: dict[str, _Node]) -> None:
    """By-reference relationships must name an existing item and must not lead back to where they start."""
    edges: dict[str, list[str]] = {p: [c.row["position"] for c in n.children] for p, n in nodes.items()}
    for position, node in nodes.items():
        target = node.row.get("referenced_content")
        if target is None:
            continue
        if target not in nodes:
            raise ContentError(FeatureReason.SR_MALFORMED,
                               f"content item {position} refers to {target}, which does not exist")
        edges[position].append(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in nodes:
        if state.get(start):
            continue
        path = [(start, iter(edges[start]))]
        state[start] = 1
        while path:
            position, following = path[-1]
            step = next(following, None)
            if step is None:
                state[position] = 2
                path.pop()
            elif state.get(step) == 1:
                raise ContentError(FeatureReason.SR_REFERENCE_CYCLE, f"by-reference relationships loop through {step}")
            elif not state.get(step):
                state[step] = 1
                path.append((step, iter(edges[step])))


@dataclass
class _Group:
    number: int
    node: _Node
    context: dict[str, Any] = field(default_factory=dict)
    image_sops: list[str] = field(default_factory=list)
    image_series: list[str | None] = field(default_factory=list)
    source_series: list[str] = field(default_factory=list)
    seg_sops: list[str] = field(default_factory=list)
    segment_numbers: list[int] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"finding_group": self.number, "position": self.node.row["position"],
                "concept_code": self.node.row.get("concept_code"),
                "concept_meaning": self.node.row.get("concept_meaning"),
                "template_id": self.node.row.get("template_id"), **self.context,
                "image_sops": self.image_sops, "image_series": self.image_series,
                "source_series": self.source_series, "seg_sops": self.seg_sops,
                "segment_numbers": self.segment_numbers}


def _code_columns(prefix: str, code: Code | None) -> dict[str, Any]:
    return {f"{prefix}_scheme": code.scheme if code else None, f"{prefix}_code": code.value if code else None,
            f"{prefix}_meaning": code.meaning if code else None}


def _modifier(node: _Node, *concepts: tuple[str, str]) -> Code | None:
    for child in node.children:
        if child.row.get("relationship") == "HAS CONCEPT MOD" and child.is_("CODE", *concepts):
            return child.code("value")
    return None


def _outside_groups(node: _Node) -> Iterator[_Node]:
    """The subtree of a group without the groups nested in it."""
    for child in node.children:
        if child.is_("CONTAINER", *_GROUPS):
            continue
        yield child
        yield from _outside_groups(child)


def _collect(group: _Group) -> None:
    """What a group says about all its items: finding, site, tracking, algorithm, and the images it describes."""
    context: dict[str, Any] = {**_code_columns("finding", None), **_code_columns("finding_category", None),
                               "tracking_id": None, "tracking_uid": None, "algorithm_name": None,
                               "algorithm_version": None, "frame_of_reference_uid": None}
    site: Code | None = None
    site_node: _Node | None = None
    for child in group.node.children:
        if child.is_("CODE", _FINDING):
            context.update(_code_columns("finding", child.code("value")))
        elif child.is_("CODE", _FINDING_CATEGORY):
            context.update(_code_columns("finding_category", child.code("value")))
        elif child.is_("CODE", _FINDING_SITE) and site is None:
            site, site_node = child.code("value"), child
        elif child.is_("TEXT", _TRACKING_ID):
            context["tracking_id"] = child.row.get("text_value")
        elif child.is_("UIDREF", *_TRACKING_UIDS):
            context["tracking_uid"] = child.row.get("text_value")
        elif child.is_("TEXT", _ALGORITHM_NAME):
            context["algorithm_name"] = child.row.get("text_value")
        elif child.is_("TEXT", _ALGORITHM_VERSION):
            context["algorithm_version"] = child.row.get("text_value")
    context.update(_code_columns("site", site))
    method = _modifier(group.node, _METHOD)
    context["method"] = method.meaning or method.value if method else None
    laterality = _modifier(site_node, _LATERALITY) if site_node else None
    context["site_laterality"] = laterality.meaning or laterality.value if laterality else None
    context["algorithm"] = algorithm_uri(context["algorithm_name"], context["algorithm_version"])
    group.context = context
    _collect_references(group)


def _collect_references(group: _Group) -> None:
    """The images, source series and segmentation a group was measured on, wherever in it they are named."""
    for node in _outside_groups(group.node):
        row = node.row
        if node.is_("UIDREF", _SOURCE_SERIES) and row.get("text_value"):
            group.source_series.append(row["text_value"])
        elif row.get("value_type") == "SCOORD3D" and row.get("frame_of_reference_uid"):
            group.context["frame_of_reference_uid"] = (group.context["frame_of_reference_uid"]
                                                       or row["frame_of_reference_uid"])
        elif row.get("value_type") == "IMAGE" and row.get("referenced_sop_instance_uid"):
            if row.get("referenced_sop_class_uid") in _SEGMENTATION_CLASSES:
                group.seg_sops.append(row["referenced_sop_instance_uid"])
                group.segment_numbers += row.get("referenced_segments") or []
            elif row["referenced_sop_instance_uid"] not in group.image_sops:
                group.image_sops.append(row["referenced_sop_instance_uid"])
                group.image_series.append(row.get("referenced_series_uid"))


@dataclass
class Analysis:
    """A report as the features stage needs it: its values, its groups, and what was refused."""

    items: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)

    def as_row(self) -> dict[str, Any]:
        return {"items": self.items, "groups": self.groups, "problems": self.problems}


def _item(node: _Node, group: _Group | None, **values: Any) -> dict[str, Any]:
    own_site = _modifier(node, _FINDING_SITE)
    context = group.context if group else {}
    derivation, laterality, method = (_modifier(node, concept) for concept in (_DERIVATION, _LATERALITY, _METHOD))
    modifiers = [child.code("value") for child in node.children
                 if child.row.get("relationship") == "HAS CONCEPT MOD" and child.is_("CODE")]
    concept = node.code("concept")
    return {
        "position": node.row["position"], "value_type": node.row["value_type"],
        **_code_columns("concept", concept),
        "derivation": derivation.meaning or derivation.value if derivation else None,
        "laterality": laterality.meaning or laterality.value if laterality else None,
        "method": method.meaning or method.value if method else context.get("method"),
        "modifier": ", ".join(m.meaning or m.value for m in modifiers if m) or None,
        "finding_group": group.number if group else None,
        "finding_scheme": context.get("finding_scheme"), "finding_code": context.get("finding_code"),
        **(_code_columns("site", own_site) if own_site else {
            "site_scheme": context.get("site_scheme"), "site_code": context.get("site_code"),
            "site_meaning": context.get("site_meaning")}),
        "tracking_id": context.get("tracking_id") or context.get("tracking_uid"),
        "algorithm": context.get("algorithm"), **values,
    }


def _number(node: _Node, group: _Group | None, analysis: Analysis) -> None:
    row = node.row
    if row.get("number") is None and row.get("text_value") is None:
        return  # a NUM with no measured value (a qualifier says why): nothing was measured
    position = row["position"]
    if row.get("number") is None:
        analysis.problems.append({"position": position, "reason": FeatureReason.SR_BAD_VALUE,
                                  "message": f"NUM {position}: NumericValue {row['text_value']!r} is not a number"})
        return
    unit = parse_code(row.get("unit_scheme"), row.get("unit_code"), row.get("unit_meaning"))
    if unit is None:
        analysis.problems.append({"position": position, "reason": FeatureReason.SR_NO_UNITS,
                                  "message": f"NUM {position} has no measurement units"})
        return
    analysis.items.append(_item(node, group, number=row["number"], unit_code=unit.value,
                                unit_meaning=unit.meaning, **_code_columns("value", None)))


def _walk(root: _Node, analysis: Analysis) -> None:
    groups = 0
    pending: list[tuple[_Node, _Group | None]] = [(root, None)]
    while pending:
        node, group = pending.pop()
        if node.is_("CONTAINER", _IMAGE_LIBRARY):
            continue
        if node.is_("CONTAINER", *_GROUPS):
            groups += 1
            group = _Group(groups, node)
            _collect(group)
            analysis.groups.append(group.row())
        elif node.is_("NUM"):
            if node.concept is None:
                analysis.problems.append({"position": node.row["position"], "reason": FeatureReason.SR_MALFORMED,
                                          "message": f"NUM {node.row['position']} has no concept name"})
            else:
                _number(node, group, analysis)
        elif node.is_("CODE") and group is not None and node.concept is not None \
                and node.concept not in _CONTEXT and node.row.get("relationship") in _EVALUATIONS:
            value = node.code("value")
            analysis.items.append(_item(node, group, number=None, unit_code=None, unit_meaning=None,
                                        **_code_columns("value", value)))
        pending.extend((child, group) for child in reversed(node.children))


def analyse_report(rows: Iterable[dict[str, Any]]) -> Analysis:
    """Values, groups and refused items of one report from its content items (any order).

    A report whose tree cannot be read gives a single problem at position '1' and nothing else.
    """
    analysis = Analysis()
    try:
        root, nodes = _tree(rows)
        _check_references(nodes)
        _walk(root, analysis)
    except ContentError as error:
        return Analysis(problems=[{"position": "1", "reason": error.reason, "message": str(error)[:500]}])
    analysis.items.sort(key=lambda item: _key(item["position"]))
    return analysis
