"""Rows micdm adds to the site's own CDM tables (procedure_occurrence, measurement, observation).

A site's ETL owns those tables and reloads them at will. So micdm takes the ids of its rows from a block
of its own (storage.site_id_blocks), far above the site's, and keeps a fingerprint of every row version it
writes (site_row). Before a write, each id micdm is about to use is checked: a row there that is none of
micdm's versions belongs to someone else, so its key is given a new id instead of being merged over. A
row of micdm's that a reload dropped is simply written again, with the same id, and counted as restored.
"""

from __future__ import annotations

import logging

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.schema import TABLES
from micdm.tables import (
    TableLocator,
    aggregate,
    append,
    as_stored,
    column_ceiling,
    conform,
    delta_table,
    has_rows,
    merge_into,
    read_table,
    row_digest,
)

__all__ = ["release_clashing_ids", "remove_site_rows", "site_floor", "write_site_rows"]

log = logging.getLogger(__name__)


def _fingerprint(table: str) -> Column:
    """One number for a row as stored: each of the table's CDM columns, in the stored types."""
    return row_digest(TABLES[table].schema.fieldNames())


def site_floor(spark: SparkSession, locator: TableLocator, table: str) -> int:
    """The id above which micdm allocates in ``table``: its block, or the table's highest id when the
    site's own ids have reached the block (from the table's statistics where they tell it, column_ceiling)."""
    highest = column_ceiling(spark, locator, table, f"{table}_id") or 0
    return max(locator.storage.site_id_block(table) - 1, highest)


def _recorded(spark: SparkSession, locator: TableLocator, table: str) -> DataFrame:
    return read_table(spark, locator, "site_row").where(F.col("table_name") == table).select("id", "fingerprint")


def _id_range(ids: DataFrame) -> tuple[int, int] | None:
    """The lowest and highest of ``ids`` (one column), None when there is none."""
    low, high = aggregate(ids, F.min(ids.columns[0]), F.max(ids.columns[0]))
    return None if low is None else (low, high)


def _in_range(table: str, bounds: tuple[int, int], alias: str = "") -> str:
    """A condition on the table's id alone (of the MERGE side ``alias``, when given). micdm's ids lie in a
    block of their own, so with it Delta skips the site's files by their statistics rather than reading
    every row of a table that may hold billions."""
    return f"{alias + '.' if alias else ''}`{table}_id` BETWEEN {bounds[0]} AND {bounds[1]}"


def _stored_at(spark: SparkSession, locator: TableLocator, table: str, ids: DataFrame,
               bounds: tuple[int, int]) -> DataFrame:
    """(id, fingerprint) of the rows ``table`` holds now at ``ids`` (one column ``id``, within ``bounds``)."""
    key = f"{table}_id"
    stored = read_table(spark, locator, table).where(_in_range(table, bounds)).join(
        ids.select(F.col("id").alias(key)).distinct(), key, "left_semi")
    return stored.select(F.col(key).alias("id"), _fingerprint(table).alias("fingerprint"))


def release_clashing_ids(spark: SparkSession, locator: TableLocator, table: str, ids: DataFrame) -> int:
    """Forget (in id_map) every id among ``ids`` (one column ``id``) whose row in ``table`` is none of the
    versions micdm wrote, so that the next allocation gives its key a new id. Returns how many.

    A table for which micdm has recorded nothing yet (a warehouse from before fingerprints) is trusted as is.
    """
    recorded = _recorded(spark, locator, table)
    if not has_rows(recorded):
        return 0
    bounds = _id_range(ids.select("id"))
    if bounds is None:
        return 0
    clashing = _stored_at(spark, locator, table, ids, bounds).join(recorded, ["id", "fingerprint"], "left_anti") \
        .select("id")
    count = clashing.count()
    if count:  # rare: only then are the ids kept, for the MERGE that changes what they were read from
        log.warning("%s: %d id(s) micdm had allocated now hold rows micdm did not write (the site reused them); "
                    "their rows get new ids", table, count)
        delta_table(spark, locator, "id_map").alias("t").merge(
            clashing.localCheckpoint().withColumn("namespace", F.lit(table)).alias("s"),
            "t.namespace = s.namespace AND t.id = s.id").whenMatchedDelete().execute()
    return count


def write_site_rows(spark: SparkSession, locator: TableLocator, table: str, rows: DataFrame) -> int:
    """MERGE micdm's rows into a site table by id, after recording their fingerprints; returns how many of
    them were missing although micdm had written them before (a reload dropped them) and are restored.

    The fingerprints are appended before the MERGE, so a crash between the two leaves rows that a re-run
    still recognises as micdm's. Each row is compared once with what site_row recorded and what the table
    holds; only rows the table lacks or holds otherwise are merged.
    """
    key = f"{table}_id"
    bounds = _id_range(rows.select(key))
    if bounds is None:
        return 0
    recorded = _recorded(spark, locator, table).groupBy(F.col("id").alias(key)).agg(
        F.collect_set("fingerprint").alias("_recorded"))
    # Fingerprints as sets per id: an id the site's table holds twice still gives one row to merge.
    stored = read_table(spark, locator, table).where(_in_range(table, bounds)).groupBy(key).agg(
        F.collect_set(_fingerprint(table)).alias("_stored"))
    marked = as_stored(spark, locator, table, conform(rows, TABLES[table])).withColumn(
        "_fingerprint", _fingerprint(table)).join(recorded, key, "left").join(stored, key, "left").localCheckpoint(
        eager=False)  # kept by the counts just below

    def lacking(fingerprints: str) -> Column:
        return ~F.coalesce(F.array_contains(fingerprints, F.col("_fingerprint")), F.lit(False))

    unrecorded, changed = lacking("_recorded"), lacking("_stored")
    counts = aggregate(marked, F.count_if(F.col("_recorded").isNotNull() & F.col("_stored").isNull()).alias("restored"),
                       F.count_if(unrecorded).alias("unrecorded"), F.count_if(changed).alias("changed"),
                       F.count_if(changed & F.col("_stored").isNotNull()).alias("replacing"))
    if counts["unrecorded"]:
        append(locator, "site_row", marked.where(unrecorded).select(
            F.lit(table).alias("table_name"), F.col(key).alias("id"), F.col("_fingerprint").alias("fingerprint"),
            F.current_timestamp().alias("written_at")))
    if counts["replacing"]:
        merge_into(spark, locator, table, marked.where(changed), [key], compared=True,
                   target_only=_in_range(table, bounds, "t"))
    elif counts["changed"]:  # only ids the table lacks: appended, with no MERGE to read its files for matches
        append(locator, table, marked.where(changed))
    restored: int = counts["restored"]
    if restored:
        log.info("%s: %d row(s) micdm wrote before were missing (the site reloaded its table) and are restored",
                 table, restored)
    return restored


def remove_site_rows(spark: SparkSession, locator: TableLocator, table: str, ids: DataFrame) -> int:
    """Delete the rows of ``table`` at ``ids`` (one column ``id``) that are still as micdm wrote them; a row
    the site has put at such an id stays. Returns how many were deleted."""
    bounds = _id_range(ids.select("id"))
    if bounds is None:
        return 0
    ours = _stored_at(spark, locator, table, ids, bounds).join(_recorded(spark, locator, table),
                                                               ["id", "fingerprint"], "left_semi").select("id")
    count = ours.count()
    if count:  # kept first: the MERGE changes the table they were read from
        delta_table(spark, locator, table).alias("t").merge(
            ours.localCheckpoint().alias("s"), f"{_in_range(table, bounds, 't')} AND t.`{table}_id` = s.id") \
            .whenMatchedDelete().execute()
    return count
