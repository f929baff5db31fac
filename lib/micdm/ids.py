"""Stable 32-bit ids: allocated once per natural key and remembered in the id_map table.

The spec's ids are 32-bit integers, too small to hash UIDs into without collisions, so each natural key
(a series UID, a feature key) gets the next free id the first time it is seen and keeps it for good.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import reduce

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from micdm.errors import IdOverflowError
from micdm.schema import KEY_SOURCE
from micdm.tables import TableLocator, listed, merge_into, narrowed, read_table

__all__ = ["MAX_ID", "allocated_ids", "assign_ids", "assign_ids_by_namespace"]

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
    does not depend on partitioning.

    Raises:
        IdOverflowError: when the new ids would pass 2**31 - 1.
    """
    return assign_ids_by_namespace(spark, locator, {namespace: (keys, floor)})[namespace]


def assign_ids_by_namespace(
    spark: SparkSession,
    locator: TableLocator,
    requests: Mapping[str, tuple[DataFrame, int]],
) -> dict[str, DataFrame]:
    """:func:`assign_ids` for several namespaces (namespace -> (keys, floor)) with one commit to id_map.

    One commit instead of one per namespace: the new ids of all namespaces land together or not at all.
    """
    wanted = {namespace: keys.select("natural_key").where(F.col("natural_key").isNotNull()).distinct()
              for namespace, (keys, _) in requests.items()}
    namespaces = list(requests)
    known = read_table(spark, locator, "id_map").where(F.col("namespace").isin(*namespaces))
    every_key = reduce(DataFrame.unionByName, (keys.select(F.lit(namespace).alias("namespace"), "natural_key")
                                               for namespace, keys in wanted.items()))
    # A night's few keys are looked up by their list: id_map's row groups whose bloom filter holds none of
    # them (every one written before those keys were first seen) are not read.
    stored = narrowed(known, "natural_key", listed(every_key.select("natural_key")))
    # One pass over the callers' keys and id_map: every key with its stored id, NULL for a key id_map lacks.
    # The counts, the new ids and the ids returned all come from it, not from id_map read again.
    held = every_key.join(stored.select("namespace", "natural_key", "id"), ["namespace", "natural_key"],
                          "left").localCheckpoint()
    fresh = held.where(F.col("id").isNull()).drop("id")
    counts = {row["namespace"]: row["count"] for row in fresh.groupBy("namespace").count().collect()}
    if not counts:
        ids = held
    else:
        highest = {row["namespace"]: row["highest"] for row in
                   known.groupBy("namespace").agg(F.max("id").alias("highest")).collect()}
        starts = {namespace: max(highest.get(namespace) or 0, requests[namespace][1]) for namespace in counts}
        for namespace, start in starts.items():
            if start + counts[namespace] > MAX_ID:
                raise IdOverflowError(
                    f"namespace {namespace!r}: {counts[namespace]} new ids after {start} would pass {MAX_ID}")
        start = F.create_map(*(F.lit(part) for item in starts.items() for part in item))[F.col("namespace")]
        numbered = fresh.select(
            "namespace",
            "natural_key",
            (start + F.row_number().over(Window.partitionBy("namespace").orderBy("natural_key"))).cast("int")
            .alias("id"),
            F.current_timestamp().alias("assigned_at"),
            F.expr(KEY_SOURCE).alias("source"),
        ).localCheckpoint()  # the rows written are the ids returned
        # ``fresh`` holds only keys id_map lacks: appended as they are, nothing to compare.
        merge_into(spark, locator, "id_map", numbered, ["namespace", "natural_key"], update_existing=False,
                   compared=True)
        ids = held.where(F.col("id").isNotNull()).unionByName(numbered.select("namespace", "natural_key", "id"))
    return {namespace: ids.where(F.col("namespace") == namespace).select("natural_key", "id") for namespace in wanted}


def allocated_ids(spark: SparkSession, locator: TableLocator, namespace: str, alias: str = "id") -> DataFrame:
    """The ids micdm allocated in ``namespace``, as one column ``alias``.

    In a site's own CDM table (procedure_occurrence, measurement, observation) these are the rows micdm wrote.
    """
    return read_table(spark, locator, "id_map").where(F.col("namespace") == namespace).select(F.col("id").alias(alias))
