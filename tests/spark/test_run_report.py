"""The run report: its value distributions agree with a count made in Python over the same rows, and its
figures are read again exactly when what they come from changed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from micdm.report import cached_figures, read_figures, value_distributions
from micdm.tables import append


def test_each_columns_most_common_values_come_from_one_scan(spark: Any) -> None:
    rows = [("CT", "ACME", "CHEST"), ("CT", "ACME", None), ("MR", "Imaging Co", "HEAD"), ("CT", None, "CHEST"),
            ("MR", "ACME", None), ("US", "ACME", None), ("PT", "Imaging Co", "CHEST")]
    columns = ("modality", "manufacturer", "body_part_examined")
    frame = spark.createDataFrame(rows, "modality string, manufacturer string, body_part_examined string")
    found = value_distributions(frame, columns, top=2)
    for index, column in enumerate(columns):
        counts = Counter("(none)" if row[index] is None else row[index] for row in rows)
        expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:2]
        assert found[column] == expected, column
    assert found["modality"] == [("CT", 3), ("MR", 2)]
    assert found["body_part_examined"] == [("(none)", 3), ("CHEST", 3)]


def test_figures_are_kept_until_their_state_changes(spark: Any, empty: Any, tmp_path: Path) -> None:
    _, locator = empty
    cache = tmp_path / "reports" / "figures.json"
    first = cached_figures(spark, locator, cache, {"tables": {"dicom_quarantine": "v0"}})
    assert first.quarantine == [] and cache.is_file()
    append(locator, "dicom_quarantine", spark.sql(
        "SELECT '/data/a.dcm' AS path, 'not_dicom' AS reason, current_timestamp() AS quarantined_at, 'r1' AS run_id"))
    assert cached_figures(spark, locator, cache, {"tables": {"dicom_quarantine": "v0"}}) == first, \
        "the same state: the kept figures, whatever the tables hold now"
    changed = cached_figures(spark, locator, cache, {"tables": {"dicom_quarantine": "v1"}})
    assert changed.quarantine == [("not_dicom", 1)] and changed == read_figures(spark, locator)
    cache.write_text("{not json", encoding="utf-8")
    assert cached_figures(spark, locator, cache, {"tables": {"dicom_quarantine": "v1"}}) == changed
    unwritable = cache / "figures.json"  # under a file: the figures are returned, only not kept
    assert cached_figures(spark, locator, unwritable, {"tables": {"dicom_quarantine": "v1"}}) == changed


def test_figures_leave_out_the_files_the_last_listing_no_longer_found(spark: Any, empty: Any) -> None:
    """A vanished file's rows stay in micdm's tables, marked missing in file_inventory: the report counts the
    archive as it is, without them."""
    _, locator = empty

    def rows(*values: tuple[str, str], extra: str) -> Any:
        listed = ", ".join(f"('{path}', '{value}')" for path, value in values)
        return spark.sql(f"SELECT *, {extra}, 'r1' AS run_id FROM VALUES {listed} AS t(path, value)")

    append(locator, "dicom_instance", rows(("/a/ct.dcm", "CT"), ("/a/mr.dcm", "MR"), ("/a/gone.dcm", "MR"),
                                           extra="current_timestamp() AS extracted_at").withColumnRenamed(
        "value", "modality"))
    append(locator, "dicom_quarantine", rows(("/a/bad.dcm", "not_dicom"), ("/a/gone_bad.dcm", "not_dicom"),
                                             ("/a/gone_short.dcm", "truncated"),
                                             extra="current_timestamp() AS quarantined_at").withColumnRenamed(
        "value", "reason"))
    inventory = [(path, "gone" if "gone" in path else "") for path in
                 ("/a/ct.dcm", "/a/mr.dcm", "/a/gone.dcm", "/a/bad.dcm", "/a/gone_bad.dcm", "/a/gone_short.dcm")]
    append(locator, "file_inventory", rows(*inventory, extra=(
        "current_timestamp() AS first_seen, current_timestamp() AS changed_at, "
        "IF(value = 'gone', current_timestamp(), NULL) AS missing_since")).drop("value"))
    figures = read_figures(spark, locator)
    assert figures.quarantine == [("not_dicom", 1)]
    assert figures.distributions["modality"] == [("CT", 1), ("MR", 1)]
