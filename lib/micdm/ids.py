"""Stable 32-bit ids: allocated once per natural key and remembered in the id_map table.

The spec's ids are 32-bit integers, too small to hash UIDs into without collisions, so each natural key
(a series UID, a feature key) gets the next free id the first time it is seen and keeps it for good.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from micdm.errors import IdOverflowError
from micdm.tables import TableLocator, merge_into, read_table

__all__ = ["MAX_ID", "assign_ids"]

#: Largest value of the spec's integer type.
MAX_ID = 2**31 - 1


def assign_ids(
    spark: SparkSession,
    locator: TableLocator,
    namespace: str,
    keys: DataFrame,
    floor: int = 0,
) -> DataFrame:
    """Return ``keys`` (one string column, ``natural_key``) with a stable ``id`` column.

    Keys seen before keep their id; new keys get ids above both the namespace's highest id and
    ``floor`` (the highest id the site's own table already holds), in key order so that the result
    does not depend on partitioning. Triggers two Spark actions and one MERGE into id_map.

    Raises:
        IdOverflowError: when the new ids would pass 2**31 - 1.
    """
    wanted = keys.select("natural_key").where(F.col("natural_key").isNotNull()).distinct()
    known = read_table(spark, locator, "id_map").where(F.col("namespace") == namespace)
    fresh = wanted.join(known.select("natural_key"), "natural_key", "left_anti")
    fresh_count = fresh.count()
    if fresh_count:
        highest = known.agg(F.max("id")).first()[0] or 0
        start = max(highest, floor)
        if start + fresh_count > MAX_ID:
            raise IdOverflowError(
                f"namespace {namespace!r}: {fresh_count} new ids after {start} would pass {MAX_ID}"
            )
        numbered = fresh.select(
            F.lit(namespace).alias("namespace"),
            "natural_key",
            (F.lit(start) + F.row_number().over(Window.orderBy("natural_key"))).cast("int").alias("id"),
            F.current_timestamp().alias("assigned_at"),
        )
        merge_into(spark, locator, "id_map", numbered, ["namespace", "natural_key"], update_existing=False)
    ids = read_table(spark, locator, "id_map").where(F.col("namespace") == namespace)
    return wanted.join(ids.select("natural_key", "id"), "natural_key")
