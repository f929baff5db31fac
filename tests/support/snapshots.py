"""Comparing micdm's tables between two warehouses, or two moments of one, row for row."""

from __future__ import annotations

from pyspark.sql import DataFrame

#: Tables a run rewrites to the same content; link_report and dq_result gain rows per run by design.
COMPARED = ("dicom_instance", "dicom_quarantine", "file_inventory", "dicom_series", "series_link", "link_exception",
            "procedure_occurrence", "image_occurrence", "measurement", "observation", "image_feature",
            "feature_quarantine", "id_map", "sr_content_item", "sr_measurement_group", "sr_quantitative",
            "sr_qualitative")
#: Each compared table's key, which no row may repeat (exceptAll below also compares row multiplicity).
KEYS = {"dicom_instance": ["path"], "dicom_quarantine": ["path"], "file_inventory": ["path"],
        "dicom_series": ["series_instance_uid"], "series_link": ["image_series_uid"],
        "link_exception": ["image_series_uid"], "procedure_occurrence": ["procedure_occurrence_id"],
        "image_occurrence": ["image_occurrence_id"], "measurement": ["measurement_id"],
        "observation": ["observation_id"], "image_feature": ["image_feature_id"],
        "id_map": ["namespace", "natural_key"], "sr_content_item": ["path", "position"],
        "sr_measurement_group": ["sop_instance_uid", "finding_group"],
        "sr_quantitative": ["sop_instance_uid", "position"], "sr_qualitative": ["sop_instance_uid", "position"]}


def comparable(df: DataFrame) -> DataFrame:
    """The table without what depends on when or in which run a row was written."""
    volatile = [c for c in df.columns if c == "run_id" or c.endswith("_at") or c == "first_seen"]
    return df.drop(*volatile)


def difference(expected: DataFrame, actual: DataFrame, name: str) -> tuple[int, int, int]:
    """(rows missing from ``actual``, rows only in it, rows repeating a key of table ``name``)."""
    expected, actual = comparable(expected), comparable(actual)
    duplicated = actual.count() - actual.select(*KEYS[name]).distinct().count() if name in KEYS else 0
    return expected.exceptAll(actual).count(), actual.exceptAll(expected).count(), duplicated
