"""Acquisition parameters on Spark: rules over a series' values, and headers read once per change."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pyspark.sql import functions as F

from micdm.acquisition import refresh_instance_attributes, series_values
from micdm.config import load_settings
from micdm.dicom.attributes import select_attributes
from micdm.extract import extract
from micdm.series import present_instances
from micdm.tables import TableLocator, read_table

from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]
CT_SERIES, MR_SERIES = "1.2.826.0.1.3680043.8.498.17001", "1.2.826.0.1.3680043.8.498.17002"
TUBE_CURRENTS = [110, 145, 230, 310, 260, 175, 120, 98]
ECHO_TIMES = ["12.5", "95.0"]


def _write_series(root: Path) -> None:
    """A CT series under dose modulation (tube current per slice) and a dual-echo MR series."""
    for number, current in enumerate(TUBE_CURRENTS, start=1):
        ct = dcmread(get_testdata_file("CT_small.dcm"))
        ct.SeriesInstanceUID, ct.InstanceNumber = CT_SERIES, number
        ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = f"{CT_SERIES}.{number}"
        ct.XRayTubeCurrent, ct.CTDIvol = current, current / 20
        ct.save_as(root / f"ct{number}.dcm")
    for number in range(1, 7):
        mr = dcmread(get_testdata_file("MR_small.dcm"))
        mr.SeriesInstanceUID, mr.InstanceNumber = MR_SERIES, number
        mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = f"{MR_SERIES}.{number}"
        mr.EchoTime = ECHO_TIMES[number % 2]
        mr.save_as(root / f"mr{number}.dcm")


@pytest.fixture
def extracted(spark, tmp_path: Path):
    root = tmp_path / "export"
    root.mkdir()
    _write_series(root)
    settings = load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={tmp_path / 'warehouse'}",
                                                           f"sources.roots=[{root}]"])
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    extract(spark, locator, settings)
    return root, settings, locator


def _refreshed(spark, locator, attributes, series=None) -> int:
    """Headers read by a refresh of the present instances."""
    return refresh_instance_attributes(spark, locator, present_instances(spark, locator), attributes, series)[0]


def _stored(spark, locator):
    return read_table(spark, locator, "instance_attribute")


def _rows(spark, locator, attributes) -> dict[tuple[str, str], list[tuple[str, float | None, str]]]:
    found: dict[tuple[str, str], list] = {}
    for row in series_values(spark, _stored(spark, locator), attributes, cap=16).collect():
        found.setdefault((row.series_instance_uid, row.source), []).append((row.label, row.number, row.text))
    return {key: sorted(values, key=lambda v: (v[0], v[1] or 0, v[2])) for key, values in found.items()}


def test_dose_modulation_keeps_min_and_max_and_both_echo_times(spark, extracted) -> None:
    _, _, locator = extracted
    attributes = select_attributes(["default"])
    assert _refreshed(spark, locator, attributes) == 14
    rows = _rows(spark, locator, attributes)
    assert rows[(CT_SERIES, "00181151")] == [("max", 310.0, "310"), ("min", 98.0, "98")], "XRayTubeCurrent:min_max"
    assert rows[(CT_SERIES, "00189345")] == [("max", 15.5, "15.5")], "CTDIvol:max"
    assert rows[(CT_SERIES, "00180060")] == [("distinct", 120.0, "120")], "a constant kVp is one row"
    assert rows[(MR_SERIES, "00180081")] == [("distinct", 12.5, "12.5"), ("distinct", 95.0, "95.0")]
    ct = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    assert rows[(CT_SERIES, "00185100")] == [("first", None, ct.PatientPosition)], "a coded value keeps its code"
    assert rows[(CT_SERIES, "00080070")] == [("first", None, ct.Manufacturer)]


def test_past_the_cap_distinct_numbers_keep_their_min_and_max(spark, extracted) -> None:
    _, _, locator = extracted
    attributes = select_attributes(["XRayTubeCurrent:distinct"])
    _refreshed(spark, locator, attributes)
    all_values = [r for r in series_values(spark, _stored(spark, locator), attributes, cap=16).collect()]
    assert sorted(r.number for r in all_values) == sorted(TUBE_CURRENTS)
    capped = series_values(spark, _stored(spark, locator), attributes, cap=4).collect()
    assert sorted((r.label, r.number) for r in capped) == [("max", 310.0), ("min", 98.0)]


def test_headers_are_read_again_only_where_a_file_changed_or_the_selection_did(spark, extracted) -> None:
    root, settings, locator = extracted
    attributes = select_attributes(["default"])
    assert _refreshed(spark, locator, attributes) == 14
    assert _refreshed(spark, locator, attributes) == 0
    changed = dcmread(root / "ct3.dcm")
    changed.XRayTubeCurrent = 400
    changed.save_as(root / "ct3.dcm")
    (root / "mr6.dcm").unlink()
    extract(spark, locator, settings)
    ct_only = spark.createDataFrame([(CT_SERIES,)], "series_instance_uid string")
    read, held = refresh_instance_attributes(spark, locator, present_instances(spark, locator), attributes, ct_only)
    assert read == 1
    ct_rows = _stored(spark, locator).where(F.col("series_instance_uid") == CT_SERIES)
    assert held.count() == ct_rows.count() > 0 and held.select(*ct_rows.columns).exceptAll(ct_rows).isEmpty(), \
        "the series' rows come back as the table holds them: the changed file's old values gone, its new ones in"
    assert held.where(F.col("path").endswith("ct3.dcm") & (F.col("value_number") == 400)).count() == 1
    assert read_table(spark, locator, "instance_attribute").where(F.col("path").endswith("mr6.dcm")).count() > 0, \
        "a series out of the changed ones is not compared"
    assert _refreshed(spark, locator, attributes) == 0
    stored = read_table(spark, locator, "instance_attribute")
    assert stored.select("path").distinct().count() == 13, "the deleted file's values went"
    assert _rows(spark, locator, attributes)[(CT_SERIES, "00181151")] == [("max", 400.0, "400"), ("min", 98.0, "98")]
    assert stored.where(F.col("path").endswith("ct3.dcm")).select("header_digest").distinct().count() == 1
    wider = select_attributes(["default", "SliceLocation"])
    assert _refreshed(spark, locator, wider) == 13
