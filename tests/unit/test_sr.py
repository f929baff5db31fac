"""Structured reports: content items of real reports as extract keeps them, and the groups and values they give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.sr._snomed_dict import mapping

from micdm.dicom.reader import ReadOptions, extract_file
from micdm.dicom.sr import Analysis, algorithm_uri, analyse_report
from micdm.dicom.sr_content import MAX_DEPTH, ContentError, content_rows
from micdm.transport import opener

#: Legacy SNOMED-RT codes as SNOMED CT, by the DICOM standard's table that pydicom ships: reports read as SCT.
SCT = mapping["SRT"]


def _extracted(path: Path) -> dict:
    row = extract_file(opener(str(path), {}), str(path), path.stat().st_size, ReadOptions())
    assert row["outcome"] == "instance" and not row["header_json_truncated"]
    return row


def _analysed(path: Path) -> Analysis:
    row = _extracted(path)
    assert row.get("sr_content_reason") is None
    return analyse_report(json.loads(row["sr_content"]))


def _items(header: dict) -> Analysis:
    return analyse_report(content_rows(header, 10_000))


HIGHDICOM = ("highdicom", "data", "test_files")
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_IMAGE = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def _corpus(shared: Path, *parts: str) -> Path:
    return shared.joinpath("data", "dicom", *parts)


def test_highdicom_report_with_four_groups(shared: Path) -> None:
    report = _analysed(_corpus(shared, *HIGHDICOM, "sr_document_with_multiple_groups.dcm"))
    assert report.problems == []
    numbers = [r for r in report.items if r["value_type"] == "NUM"]
    diameter = next(r for r in numbers if r["concept_code"] == "81827009")
    assert (diameter["concept_scheme"], diameter["number"], diameter["unit_code"]) == ("SCT", 10.0, "mm")
    nodule = [r for r in report.items if r["finding_group"] == diameter["finding_group"]]
    assert {(r["finding_code"], r["site_code"], r["tracking_id"]) for r in nodule} == {
        ("27925004", "39607008", "LungNodule0001")}
    assert [(g["finding_group"], g["tracking_id"], g["template_id"]) for g in report.groups] == [
        (1, "Image0001", "1501"), (2, "LungNodule0001", "1410"), (3, "Aorta0001", "1410"),
        (4, "Vertebra0001", "1411")]
    # every group names its own image: directly (1, 4) or as the image a SCOORD was selected from (2, 3)
    assert all(g["image_sops"] == [CT_IMAGE] and g["image_series"] == [CT_SERIES] for g in report.groups)
    assert report.groups[3]["frame_of_reference_uid"] == "1.3.6.1.4.1.5962.1.4.1.1.20040119072730.12322"
    assert len({r["position"] for r in report.items}) == len(report.items), "positions key the items of a report"


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
DCMQI_PET_SERIES = "1.3.6.1.4.1.14519.5.2.1.2744.7002.261560220703676715130542397405"
DCMQI_SEG = "1.2.276.0.7230010.3.1.4.8323329.18591.1440001312.777033"


def test_dcmqi_report_gives_exactly_its_22_measurements(shared: Path) -> None:
    report = _analysed(_corpus(shared, "dcmqi", "data", "sr-example", "sr.dcm"))
    assert report.problems == []
    assert [(r["concept_code"], r["modifier"], r["number"], r["unit_code"]) for r in report.items] == DCMQI_NUMBERS
    assert {r["value_type"] for r in report.items} == {"NUM"} and {r["finding_group"] for r in report.items} == {1}
    assert {(r["tracking_id"], r["site_code"]) for r in report.items} == {("primary tumor", SCT["T-C5300"])}
    (group,) = report.groups
    # the group names its PET source series (121232) and the SEG it was measured with, but no image of its own
    assert (group["source_series"], group["seg_sops"], group["segment_numbers"], group["image_sops"]) == (
        [DCMQI_PET_SERIES], [DCMQI_SEG], [1], [])


def test_derivation_tells_apart_two_values_of_one_concept(shared: Path) -> None:
    report = _analysed(_corpus(shared, "dcmqi", "data", "sr-example", "sr.dcm"))
    suv = [r for r in report.items if r["concept_code"] == "126401"]
    assert len(suv) == 10 and len({r["derivation"] for r in suv}) == 10


def test_a_measurement_method_of_the_group_holds_unless_the_value_names_its_own(shared: Path) -> None:
    report = _analysed(_corpus(shared, "dcmqi", "data", "sr-example", "sr.dcm"))
    assert report.groups[0]["method"] == "SUV body weight calculation method"
    methods = {r["concept_meaning"]: r["method"] for r in report.items}
    assert methods["Volume"] == "Sum of segmented voxel volumes"
    assert methods["SUVbw"] == methods["Total Lesion Glycolysis"] == "SUV body weight calculation method"


def test_highdicom_report_row_by_row(shared: Path) -> None:
    report = _analysed(_corpus(shared, *HIGHDICOM, "sr_document.dcm"))
    assert [(r["position"], r["value_type"], r["concept_code"], r["number"], r["unit_code"], r["value_code"])
            for r in report.items] == [
        ("1.8.1.6", "NUM", SCT["G-A16A"], 1.7, "cm2", None),
        ("1.8.1.6.2", "CODE", "121402", None, None, SCT["G-A460"]),
        ("1.8.1.6.3", "CODE", "121403", None, None, SCT["R-00345"]),  # Level of Significance: Not significant
    ]
    assert {(r["finding_code"], r["site_code"], r["finding_group"]) for r in report.items} == {
        (SCT["T-A7010"], SCT["T-D00F7"], 1)}


def test_older_codes_and_image_library_are_understood(shared: Path) -> None:
    report = _analysed(_corpus(shared, "dcmqi", "data", "sr-example", "sr.dcm"))
    assert not any(r["concept_code"] in ("110910", "110911") for r in report.items), "image library: no findings"
    assert report.groups[0]["site_code"] == SCT["T-C5300"]  # Finding Site coded as SRT G-C0E3
    assert all(r["concept_code"] != "G-C0E3" for r in report.items), "the finding site is context, not an item"


def _item(value_type: str, code: str, children: list | None = None, **extra: dict) -> dict:
    item = {"0040A040": {"vr": "CS", "Value": [value_type]},
            "0040A010": {"vr": "CS", "Value": ["CONTAINS"]},
            "0040A043": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": [code]},
                                                "00080102": {"vr": "SH", "Value": ["DCM"]}}]}}
    if children:
        item["0040A730"] = {"vr": "SQ", "Value": children}
    item.update(extra)
    return item


def _num(code: str, value: object, units: bool = True) -> dict:
    measured = {"0040A30A": {"vr": "DS", "Value": [value]}}
    if units:
        measured["004008EA"] = {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["mm"]},
                                                      "00080102": {"vr": "SH", "Value": ["UCUM"]}}]}
    return _item("NUM", code, **{"0040A300": {"vr": "SQ", "Value": [measured]}})


def _report(*children: dict, **extra: dict) -> dict:
    return {**_item("CONTAINER", "126000", list(children)), **extra}


def test_bad_values_are_refused_one_by_one() -> None:
    report = _items(_report(_item("CONTAINER", "125007", [_num("1", "abc"), _num("2", 4, units=False),
                                                          _num("3", 2.5)])))
    assert [(p["position"], p["reason"]) for p in report.problems] == [("1.1.1", "sr_bad_value"),
                                                                       ("1.1.2", "sr_no_units")]
    assert [(r["position"], r["number"]) for r in report.items] == [("1.1.3", 2.5)]


def test_malformed_trees_give_a_reason() -> None:
    assert analyse_report([{"position": "1.2", "value_type": "NUM"}]).problems[0]["reason"] == "sr_malformed"
    orphan = [{"position": "1", "value_type": "CONTAINER"}, {"position": "1.2.1", "value_type": "NUM"}]
    assert analyse_report(orphan).problems[0]["reason"] == "sr_malformed"
    with pytest.raises(ContentError) as refused:
        content_rows({"0040A730": {"vr": "SQ", "Value": ["not an item"]}}, 100)
    assert refused.value.reason == "sr_malformed"


def test_a_by_reference_loop_is_refused() -> None:
    loop = _item("CONTAINER", "125007", [_item("CONTAINER", "2", **{"0040DB73": {"vr": "UL", "Value": [1, 1]}})])
    report = _items(_report(loop, _num("9", 1)))
    assert [p["reason"] for p in report.problems] == ["sr_reference_cycle"] and report.items == []
    dangling = _items(_report(_item("CODE", "2", **{"0040DB73": {"vr": "UL", "Value": [1, 7]}})))
    assert dangling.problems[0]["reason"] == "sr_malformed"


def test_too_deep_or_too_large_a_tree_is_refused_not_a_crash() -> None:
    node = _num("1", 1)
    for _ in range(MAX_DEPTH + 5):
        node = _item("CONTAINER", "2", [node])
    with pytest.raises(ContentError) as deep:
        content_rows(_report(node), 10_000)
    assert deep.value.reason == "sr_too_deep"
    with pytest.raises(ContentError) as large:
        content_rows(_report(*[_num(str(n), n) for n in range(50)]), 20)
    assert large.value.reason == "sr_too_many_items"


def test_algorithm_identification_becomes_a_versioned_uri() -> None:
    group = _item("CONTAINER", "125007", [
        _item("TEXT", "111001", **{"0040A160": {"vr": "UT", "Value": ["Lung CAD/2"]}}),
        _item("TEXT", "111003", **{"0040A160": {"vr": "UT", "Value": ["1.4"]}}),
        _num("9", 3.5),
    ])
    report = _items(_report(group))
    assert report.problems == [] and len(report.items) == 1
    assert report.items[0]["algorithm"] == algorithm_uri("Lung CAD/2", "1.4") \
        == "urn:dicom:algorithm:Lung%20CAD%2F2:1.4"
    assert report.items[0]["number"] == 3.5


def test_segments_are_coded_findings_with_their_algorithm(shared: Path) -> None:
    from micdm.dicom.seg import segment_items

    liver_file = _extracted(_corpus(shared, "dcmqi", "data", "segmentations", "liver.dcm"))
    rows, reason, _ = segment_items(liver_file["header_json"])
    assert reason is None and len(rows) == 1
    liver = rows[0]
    assert (liver["value_code"], liver["value_meaning"], liver["finding_group"]) == (SCT["T-62000"], "Liver", 1)
    assert liver["algorithm"] == "urn:dicom:algorithm:SlicerEditor:0d533f1"
    assert liver_file["referenced_series"] == ["1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"]
    rows, _, _ = segment_items(_extracted(_corpus(shared, "dcmqi", "data", "sr-example", "seg.dcm"))["header_json"])
    assert [(r["site_code"], r["algorithm"]) for r in rows] == [(SCT["T-C5300"], None)], \
        "a manual segment has no algorithm"
    assert segment_items(json.dumps({"00620002": {"vr": "SQ", "Value": []}}))[1] == "seg_no_segments"


def test_pydicom_report_gives_its_two_numbers_outside_any_group() -> None:
    from pydicom.data import get_testdata_file

    report = _analysed(Path(get_testdata_file("test-SR.dcm")))
    assert report.problems == []
    assert [(r["position"], r["concept_meaning"], r["number"], r["unit_code"], r["modifier"], r["finding_group"])
            for r in report.items] == [("1.2.2", "Diameter", 3.0, "cm", "Sample Code", None),
                                       ("1.2.4.2", "Diameter", 3.0, "cm", None, None)]
