"""Header parsing without Spark: dates, typed values, warnings instead of crashes."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from micdm.dicom.header import header_json, header_record, missing_uids, parse_dicom_date


@pytest.mark.parametrize(("value", "expected", "warned"), [
    ("20240131", dt.date(2024, 1, 31), False),
    ("1994.11.05", dt.date(1994, 11, 5), False),
    (" 20240131 ", dt.date(2024, 1, 31), False),
    ("", None, False),
    (None, None, False),
    ("20241345", None, True),
    ("yesterday", None, True),
])
def test_parse_dicom_date(value: object, expected: dt.date | None, warned: bool) -> None:
    date, warning = parse_dicom_date(value)
    assert date == expected
    assert (warning is not None) == warned


def test_header_record_of_ct_small() -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    record = header_record(ds)
    assert record["modality"] == "CT"
    assert record["sop_instance_uid"] == ds.SOPInstanceUID
    assert record["study_date"] == dt.date(2004, 1, 19)
    assert record["slice_thickness"] == pytest.approx(5.0)
    assert record["kvp"] == pytest.approx(120.0)
    assert record["pixel_spacing"] == pytest.approx([0.661468, 0.661468])
    assert record["rows"] == 128 and record["columns"] == 128
    assert record["image_type"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert missing_uids(record) == []


def test_numeric_acquisition_attributes_keep_the_headers_own_text() -> None:
    """Source values are the file's text ('5.000000', '120'), never a number written out again ('5.0')."""
    import json

    from pydicom.valuerep import DSfloat

    ds = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    texts = json.loads(header_record(ds)["acquisition_text"])
    raw = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    assert texts["SliceThickness"] == raw.SliceThickness.original_string  # read through pydicom
    assert texts["KVP"] == raw.KVP.original_string == "120"
    assert texts["PixelSpacing"] == "\\".join(v.original_string for v in raw.PixelSpacing)
    assert "Manufacturer" not in texts, "only numeric attributes: text ones are their own text already"
    ds.KVP = DSfloat("80.50")  # an element set in memory keeps the text it was given
    assert json.loads(header_record(ds)["acquisition_text"])["KVP"] == "80.50"


def test_bad_value_becomes_null_with_warning() -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    # Values as a file would carry them: decoded only when read, as pydicom does lazily.
    for keyword, vr, raw in (("SeriesDate", "DA", b"20041345"), ("SliceThickness", "DS", b"thick ")):
        tag = Tag(keyword)
        ds._dict[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
    record = header_record(ds)
    assert record["series_date"] is None
    assert record["slice_thickness"] is None
    assert any(w.startswith("SeriesDate") for w in record["parse_warnings"])
    assert any(w.startswith("SliceThickness") for w in record["parse_warnings"])


def test_header_json_leaves_out_private_elements_over_the_cap() -> None:
    ds = dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    block = ds.private_block(0x0029, "TEST", create=True)
    block.add_new(0x10, "LO", "x" * 60)
    full, dropped = header_json(ds, max_bytes=10**6)
    assert dropped is None and '"00291010"' in full
    public, dropped = header_json(ds, max_bytes=len(full.encode()) - 1)
    assert dropped == "private" and '"00291010"' not in public and '"00080060"' in public
    nothing, dropped = header_json(ds, max_bytes=10)
    assert nothing is None and dropped == "all"


def _pydicom_json(dataset) -> dict:
    encoded = {}
    for tag in dataset.keys():  # noqa: SIM118
        try:
            encoded[f"{int(tag):08X}"] = dataset[tag].to_json_dict(
                bulk_data_element_handler=lambda element: "", bulk_data_threshold=1024)
        except Exception:
            continue
    return encoded


def test_fast_json_equals_pydicom_json_on_the_corpus(shared) -> None:
    """The fast encoder must give pydicom's DICOM JSON for every element pydicom can encode."""
    import json
    from pathlib import Path

    from micdm.dicom.reader import quiet_pydicom

    with quiet_pydicom():
        compared = 0
        for path in sorted((shared / "data" / "dicom").rglob("*")):
            if not path.is_file() or path.name == "MANIFEST.tsv":
                continue
            try:
                fast_source = dcmread(path, stop_before_pixels=True, force=True)
                slow_source = dcmread(path, stop_before_pixels=True, force=True)
            except Exception:
                continue
            text, _ = header_json(fast_source, 10**8)
            if text is None:
                continue
            fast = json.loads(text)
            slow = json.loads(json.dumps(_pydicom_json(slow_source)))
            for tag, expected in slow.items():
                assert fast.get(tag) == expected, (Path(path).name, tag)
            compared += len(slow)
        assert compared > 5000


def test_a_large_multi_frame_header_drops_its_per_frame_groups_before_everything(shared) -> None:
    """A segmentation of many frames: frames alike but for their position keep one description; frames
    that all differ go, and its segments survive a cap that its per-frame groups exceed."""
    import copy

    seg = shared / "data" / "dicom" / "dcmqi" / "data" / "sr-example" / "seg.dcm"
    ds = dcmread(seg, stop_before_pixels=True)
    frame = ds.PerFrameFunctionalGroupsSequence[0]
    ds.PerFrameFunctionalGroupsSequence = [copy.deepcopy(frame) for _ in range(600)]
    for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.FrameContentSequence[0].InStackPositionNumber = number + 1
    whole, dropped = header_json(ds, 10**8)
    assert dropped is None and '"52009230"' in whole
    alike, dropped = header_json(ds, len(whole.encode()) // 10)
    assert dropped == "frame_placement" and len(json.loads(alike)["52009230"]["Value"]) == 1
    assert "00209111" not in json.loads(alike)["52009230"]["Value"][0]
    for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.SegmentIdentificationSequence[0].ReferencedSegmentNumber = number + 1
    whole, _ = header_json(ds, 10**8)
    kept, dropped = header_json(ds, len(whole.encode()) // 10)
    assert dropped == "per_frame" and '"52009230"' not in kept and '"00620002"' in kept


