"""Structured reports: content items of real TID 1500 reports, read from the DICOM JSON extract stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.sr._snomed_dict import mapping

from micdm.dicom.reader import ReadOptions, extract_file
from micdm.dicom.sr import MAX_DEPTH, algorithm_uri, report_items
from micdm.sources import opener

#: Legacy SNOMED-RT codes as SNOMED CT, by the DICOM standard's table that pydicom ships: reports read as SCT.
SCT = mapping["SRT"]


def _header_json(path: Path) -> str:
    row = extract_file(opener(str(path), {}), str(path), path.stat().st_size, ReadOptions())
    assert row["outcome"] == "instance" and not row["header_json_truncated"]
    return row["header_json"]


def test_highdicom_report_with_two_groups(shared: Path) -> None:
    rows, reason, _ = report_items(_header_json(
        shared / "data" / "dicom" / "highdicom" / "data" / "test_files" / "sr_document_with_multiple_groups.dcm"))
    assert reason is None
    numbers = [r for r in rows if r["value_type"] == "NUM"]
    diameter = next(r for r in numbers if r["concept_code"] == "81827009")
    assert (diameter["concept_scheme"], diameter["number"], diameter["unit_code"]) == ("SCT", 10.0, "mm")
    # the items of the lung-nodule group share its finding, site and tracking id
    nodule = [r for r in rows if r["finding_group"] == diameter["finding_group"]]
    assert {(r["finding_code"], r["site_code"], r["tracking_id"]) for r in nodule} == {
        ("27925004", "39607008", "LungNodule0001")}
    assert {(r["finding_group"], r["tracking_id"]) for r in rows} == {
        (1, "Image0001"), (2, "LungNodule0001"), (3, "Aorta0001"), (4, "Vertebra0001")}
    assert all(r["evidence_series"] == ["1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"] for r in rows)
    assert len({r["position"] for r in rows}) == len(rows), "positions key the items of a report"


#: dcmqi's TID 1500 example: its one measurement group's 22 numbers (concept, derivation, value, unit).
DCMQI_NUMBERS = [
    ("126401", "Mean", 6.01529, "{SUVbw}g/ml"), ("126401", "Minimum", 2.91136, "{SUVbw}g/ml"),
    ("126401", "Maximum", 10.3814, "{SUVbw}g/ml"), ("126401", "Peak Value Within ROI", 9.45534, "{SUVbw}g/ml"),
    (SCT["G-D705"], "Sum of segmented voxel volumes", 33.5824, "ml"), ("126033", None, 202.008, "g"),
    ("126401", "Standard Deviation", 1.62653, "{SUVbw}g/ml"), ("126401", "25th Percentile Value", 4.59051,
                                                               "{SUVbw}g/ml"),
    ("126401", "Median", 5.71824, "{SUVbw}g/ml"), ("126401", "75th Percentile Value", 7.28462, "{SUVbw}g/ml"),
    ("126401", "Upper Adjacent Value", 10.3814, "{SUVbw}g/ml"), ("126401", "RMS", 6.23131, "{SUVbw}g/ml"),
    ("250145", None, 41.9512, "g"), ("250146", None, 68.7033, "g"), ("250147", None, 65.0814, "g"),
    ("250148", None, 26.272, "g"), ("250140", None, 29.434, "%"), ("250141", None, 36.3522, "%"),
    ("250142", None, 25.6604, "%"), ("250143", None, 8.55346, "%"), ("126037", None, 107.283, "g"),
    ("126038", None, 2.82066, "{SUVbw}g/ml"),
]


def test_dcmqi_report_gives_exactly_its_22_measurements(shared: Path) -> None:
    rows, reason, _ = report_items(_header_json(shared / "data" / "dicom" / "dcmqi" / "data" / "sr-example" / "sr.dcm"))
    assert reason is None
    assert [(r["concept_code"], r["modifier"], r["number"], r["unit_code"]) for r in rows] == DCMQI_NUMBERS
    assert {r["value_type"] for r in rows} == {"NUM"} and {r["finding_group"] for r in rows} == {1}
    assert {(r["tracking_id"], r["site_code"]) for r in rows} == {("primary tumor", SCT["T-C5300"])}


def test_highdicom_report_row_by_row(shared: Path) -> None:
    rows, _, _ = report_items(_header_json(shared / "data" / "dicom" / "highdicom" / "data" / "test_files" /
                                           "sr_document.dcm"))
    assert [(r["position"], r["value_type"], r["concept_code"], r["number"], r["unit_code"], r["value_code"])
            for r in rows] == [
        ("8.1.6", "NUM", SCT["G-A16A"], 1.7, "cm2", None),
        ("8.1.6.2", "CODE", "121402", None, None, SCT["G-A460"]),
        ("8.1.6.3", "CODE", "121403", None, None, SCT["R-00345"]),  # Level of Significance: Not significant
    ]
    assert {(r["finding_code"], r["site_code"], r["finding_group"]) for r in rows} == {
        (SCT["T-A7010"], SCT["T-D00F7"], 1)}


def test_older_codes_and_image_library_are_understood(shared: Path) -> None:
    rows, reason, _ = report_items(_header_json(shared / "data" / "dicom" / "dcmqi" / "data" / "sr-example" / "sr.dcm"))
    assert reason is None
    assert not any(r["concept_code"] in ("110910", "110911") for r in rows), "image library rows are not findings"
    sites = {r["site_code"] for r in rows if r["finding_group"]}
    assert SCT["T-C5300"] in sites  # Finding Site coded as SRT G-C0E3
    assert all(r["concept_code"] != "G-C0E3" for r in rows), "the finding site is context, not an item"
    assert any(r["value_type"] == "NUM" and r["unit_code"] for r in rows)


def _item(value_type: str, code: str, children: list | None = None, **extra: dict) -> dict:
    item = {"0040A040": {"vr": "CS", "Value": [value_type]},
            "0040A043": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": [code]},
                                                "00080102": {"vr": "SH", "Value": ["DCM"]}}]}}
    if children:
        item["0040A730"] = {"vr": "SQ", "Value": children}
    item.update(extra)
    return item


def _num(code: str, value: object) -> dict:
    return _item("NUM", code, **{"0040A300": {"vr": "SQ", "Value": [{"0040A30A": {"vr": "DS", "Value": [value]}}]}})


@pytest.mark.parametrize(("report", "reason"), [
    ("not json", "sr_malformed"),
    (json.dumps({"0040A730": {"vr": "SQ", "Value": ["not an item"]}}), "sr_malformed"),
    (json.dumps({"0040A730": {"vr": "SQ", "Value": [_num("1", "abc")]}}), "sr_bad_value"),
    (None, "sr_no_header"),
])
def test_malformed_reports_give_a_reason(report: str | None, reason: str) -> None:
    rows, got, message = report_items(report)
    assert rows == [] and got == reason and message


def test_too_deep_a_tree_is_refused_not_a_crash() -> None:
    node = _num("1", 1)
    for _ in range(MAX_DEPTH + 5):
        node = _item("CONTAINER", "2", [node])
    rows, reason, _ = report_items(json.dumps({"0040A730": {"vr": "SQ", "Value": [node]}}))
    assert rows == [] and reason == "sr_too_deep"


def test_algorithm_identification_becomes_a_versioned_uri() -> None:
    group = _item("CONTAINER", "125007", [
        _item("TEXT", "111001", **{"0040A160": {"vr": "UT", "Value": ["Lung CAD/2"]}}),
        _item("TEXT", "111003", **{"0040A160": {"vr": "UT", "Value": ["1.4"]}}),
        _num("9", 3.5),
    ])
    rows, reason, _ = report_items(json.dumps({"0040A730": {"vr": "SQ", "Value": [group]},
                                               "00080023": {"vr": "DA", "Value": ["20240102"]},
                                               "00080033": {"vr": "TM", "Value": ["101500"]}}))
    assert reason is None and len(rows) == 1
    assert rows[0]["algorithm"] == algorithm_uri("Lung CAD/2", "1.4") == "urn:dicom:algorithm:Lung%20CAD%2F2:1.4"
    assert rows[0]["content_datetime"] == "20240102101500" and rows[0]["number"] == 3.5


def test_segments_are_coded_findings_with_their_algorithm(shared: Path) -> None:
    from micdm.dicom.seg import segment_items

    folder = shared / "data" / "dicom"
    rows, reason, _ = segment_items(_header_json(folder / "dcmqi" / "data" / "segmentations" / "liver.dcm"))
    assert reason is None and len(rows) == 1
    liver = rows[0]
    assert (liver["value_code"], liver["value_meaning"], liver["finding_group"]) == (SCT["T-62000"], "Liver", 1)
    assert liver["algorithm"] == "urn:dicom:algorithm:SlicerEditor:0d533f1"
    assert liver["evidence_series"] == ["1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"]
    rows, _, _ = segment_items(_header_json(folder / "dcmqi" / "data" / "sr-example" / "seg.dcm"))
    assert [(r["site_code"], r["algorithm"]) for r in rows] == [(SCT["T-C5300"], None)], \
        "a manual segment has no algorithm"
    assert segment_items(json.dumps({"00620002": {"vr": "SQ", "Value": []}}))[1] == "seg_no_segments"


def test_pydicom_report_gives_its_two_numbers_outside_any_group() -> None:
    from pydicom.data import get_testdata_file

    rows, reason, _ = report_items(_header_json(Path(get_testdata_file("test-SR.dcm"))))
    assert reason is None
    assert [(r["position"], r["concept_meaning"], r["number"], r["unit_code"], r["modifier"], r["finding_group"])
            for r in rows] == [("2.2", "Diameter", 3.0, "cm", "Sample Code", None),
                               ("2.4.2", "Diameter", 3.0, "cm", None, None)]
