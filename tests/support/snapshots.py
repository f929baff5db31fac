"""Comparing micdm's tables between two warehouses, or two moments of one, row for row."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import MapType

#: Tables a run rewrites to the same content; link_report and dq_result gain rows per run by design.
COMPARED = ("dicom_instance", "dicom_quarantine", "file_inventory", "dicom_series", "series_link", "link_exception",
            "procedure_occurrence", "image_occurrence", "measurement", "observation", "image_feature",
            "feature_quarantine", "id_map", "sr_content_item", "sr_measurement_group", "sr_quantitative",
            "sr_qualitative", "dq_tally")
#: Each compared table's key, which no row may repeat (exceptAll below also compares row multiplicity).
KEYS = {"dicom_instance": ["path"], "dicom_quarantine": ["path"], "file_inventory": ["path"],
        "dicom_series": ["series_instance_uid"], "series_link": ["image_series_uid"],
        "link_exception": ["image_series_uid"], "procedure_occurrence": ["procedure_occurrence_id"],
        "image_occurrence": ["image_occurrence_id"], "measurement": ["measurement_id"],
        "observation": ["observation_id"], "image_feature": ["image_feature_id"],
        "id_map": ["namespace", "natural_key"], "sr_content_item": ["path", "position"],
        "sr_measurement_group": ["sop_instance_uid", "finding_group"],
        "sr_quantitative": ["sop_instance_uid", "position"], "sr_qualitative": ["sop_instance_uid", "position"],
        "dq_tally": ["tally_key"]}


def comparable(df: DataFrame) -> DataFrame:
    """The table without what depends on when or in which run a row was written; a map as its sorted
    entries (Spark compares no maps)."""
    volatile = [c for c in df.columns if c == "run_id" or c.endswith("_at") or c == "first_seen"]
    maps = [f.name for f in df.schema.fields if isinstance(f.dataType, MapType)]
    return df.drop(*volatile).withColumns({name: F.array_sort(F.map_entries(name)) for name in maps})


def difference(expected: DataFrame, actual: DataFrame, name: str) -> tuple[int, int, int]:
    """(rows missing from ``actual``, rows only in it, rows repeating a key of table ``name``), in one query.

    Each distinct row's count in ``expected`` less its count in ``actual``: above zero, that many copies
    are missing; below, that many are extra (so a row held twice where once is expected is one extra)."""
    expected, actual = comparable(expected), comparable(actual)
    balance = expected.withColumn("_held", F.lit(1)).unionByName(actual.withColumn("_held", F.lit(-1))).groupBy(
        *expected.columns).agg(F.sum("_held").alias("_balance"))
    counts = balance.agg(F.coalesce(F.sum(F.greatest("_balance", F.lit(0))), F.lit(0)).alias("missing"),
                         F.coalesce(F.sum(F.greatest(-F.col("_balance"), F.lit(0))), F.lit(0)).alias("extra"))
    if name in KEYS:
        counts = counts.crossJoin(actual.groupBy(*KEYS[name]).count().agg(
            F.coalesce(F.sum(F.col("count") - 1), F.lit(0)).alias("duplicated")))
    found = counts.first()
    return found.missing, found.extra, found["duplicated"] if name in KEYS else 0
