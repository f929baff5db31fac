"""Acquisition attributes without Spark: selections checked against the DICOM dictionary and vocabulary,
and every value read from a stored header equal to pydicom's value of the same element."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from micdm.dicom.attributes import DENIED, Attribute, Rule, _number_text, select_attributes, values_of
from micdm.dicom.header import header_json, header_record
from micdm.dicom.reader import ReadOptions, extract_file
from micdm.resources import rows as resource_rows
from micdm.transport import opener

REPO = Path(__file__).resolve().parents[2]
DENIED_TAGS = {f"{tag_for_keyword(k):08X}" for k in DENIED if tag_for_keyword(k) is not None}


def test_a_selection_names_keywords_tags_and_paths_with_their_rules() -> None:
    chosen = {a.name: a for a in select_attributes([
        "(0018,0081)", "XRayTubeCurrent:max", "00180050:first",
        "PerFrameFunctionalGroupsSequence.MREchoSequence.EffectiveEchoTime"])}
    assert chosen["EchoTime"].rule == Rule.DISTINCT and chosen["EchoTime"].unit == "ms", "the curated rule and unit"
    assert chosen["XRayTubeCurrent"].rule == Rule.MAX and chosen["XRayTubeCurrent"].unit == "mA"
    assert chosen["SliceThickness"].rule == Rule.FIRST
    echo = chosen["PerFrameFunctionalGroupsSequence.MREchoSequence.EffectiveEchoTime"]
    assert echo.source == "52009230.00189114.00189082" and echo.tag == "00189082" and echo.kind == "number"


@pytest.mark.parametrize(("entry", "message"), [
    ("EchoTimes", "neither a DICOM keyword nor a tag"),
    ("KVP:average", "is not one of"),
    ("Manufacturer:max", "needs a number"),
    ("KVP.EchoTime", "KVP is not a sequence"),
    ("CTExposureSequence", "name an attribute inside it"),
    ("00091001", "not an attribute of the DICOM vocabulary"),
])
def test_a_selection_that_cannot_be_read_is_refused_with_the_reason(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        select_attributes([entry])


def test_the_all_preset_is_numbers_and_codes_without_the_deny_list() -> None:
    everything = select_attributes(["all"])
    assert len(everything) > 2000
    assert {a.vr for a in everything} <= {"DS", "IS", "FL", "FD", "SS", "US", "SL", "UL", "SV", "UV", "CS"}
    assert not {a.keywords[0] for a in everything} & DENIED
    assert not [a for a in everything if a.tag.startswith(("0002", "0004"))]
    assert {"KVP", "EchoTime", "PatientPosition", "ScanOptions", "CTDIvol"} <= {a.name for a in everything}
    kvp = next(a for a in everything if a.name == "KVP")
    assert (kvp.rule, kvp.unit) == (Rule.DISTINCT, "kV"), "a curated attribute keeps its rule and unit"


def test_the_readme_lists_every_default_attribute_with_its_unit_and_rule() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = {m[1]: (m[2], m[3]) for m in re.finditer(r"^\| `([A-Za-z.]+)` \| ([^|]*?) \| (\w+) \|", readme, re.M)}
    for row in resource_rows("acquisition_attributes.csv"):
        assert listed.get(row["attribute"]) == (row["unit"] or "-", row["rule"]), row["attribute"]


def _pydicom_values(dataset: Dataset, keywords: tuple[str, ...]) -> list[object]:
    """The values of one attribute under ``keywords`` (every item of every sequence on the way)."""
    if keywords[0] not in dataset:
        return []
    element = dataset[keywords[0]]
    if len(keywords) == 1:
        return [element.value]
    return [v for item in element.value for v in _pydicom_values(item, keywords[1:])]


def _as_list(value: object) -> list[object]:
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [v for v in items if v is not None and v != ""]


def _text(values: list[object], attribute: Attribute) -> str:
    """The text micdm writes for pydicom's values: numbers as the shortest text that reads back the same."""
    if attribute.kind == "number":
        return "\\".join(_number_text(v, attribute.vr) for v in values)
    return "\\".join(str(v) for v in values)


def _compare_with_pydicom(paths: list[Path]) -> tuple[int, int]:
    """Read each file as extract stores it (header_json, acquisition_text) and compare every value of
    ``all`` and the nested defaults with pydicom's; returns (files, values compared)."""
    attributes = select_attributes(["all", "default"])
    compared = files = 0
    for path in paths:
        row = extract_file(opener(str(path), {}), str(path), os.path.getsize(path), ReadOptions())
        if row["outcome"] != "instance" or row["header_json"] is None:
            continue
        dataset = dcmread(path, stop_before_pixels=True, force=True)
        found = values_of(json.loads(row["header_json"]), attributes, json.loads(row["acquisition_text"] or "{}"))
        assert not {v.source for v in found} & DENIED_TAGS, "an attribute of the deny-list"
        files += 1
        by_source: dict[str, list] = {}
        for value in found:
            by_source.setdefault(value.source, []).append(value)
        for attribute in attributes:
            expected = [v for v in map(_as_list, _pydicom_values(dataset, attribute.keywords)) if v]
            per_frame = attribute.keywords[0] == "PerFrameFunctionalGroupsSequence"
            if per_frame and row["header_json_dropped"] == "per_frame":
                expected = []  # a header over extract.header_json_max_bytes keeps its shared groups only
            got = by_source.get(attribute.source, [])
            if per_frame and row["header_json_dropped"] == "frame_placement":
                # one description per distinct frame: the same distinct values, fewer of each
                assert {v.text for v in got} == {_text(v, attribute) for v in expected}, (path.name, attribute.name)
                compared += len(got)
                continue
            assert len(got) == len(expected), (path.name, attribute.name)
            for value, values in zip(got, expected, strict=True):
                if attribute.kind == "number":
                    assert value.number == float(values[0]), (path.name, attribute.name)
                else:
                    assert value.text == _text(values, attribute), (path.name, attribute.name)
                compared += 1
    return files, compared


def test_every_value_of_the_real_corpus_equals_pydicoms(shared: Path) -> None:
    files, compared = _compare_with_pydicom(sorted((shared / "data" / "dicom").rglob("*.dcm")))
    assert files > 100 and compared > 2000


def test_every_value_of_a_synthetic_export_equals_pydicoms(tmp_path: Path) -> None:
    from micdm.synth import generate

    generate(tmp_path, patients=3, seed=17, pixels="none")
    files, compared = _compare_with_pydicom(sorted((tmp_path / "dicom").rglob("*.dcm")))
    assert files > 20 and compared > 10 * files


def test_numbers_keep_the_headers_own_text() -> None:
    ct = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    text, _ = header_json(ct, 10**7)
    own = json.loads(header_record(ct)["acquisition_text"])
    found = {v.source: v for v in values_of(json.loads(text), select_attributes(["default"]), own)}
    assert found["00180050"].text == ct.SliceThickness.original_string
    assert found["00280030"].text == "\\".join(v.original_string for v in ct.PixelSpacing)
    assert found["00280030"].number == float(ct.PixelSpacing[0])
