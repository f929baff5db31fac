"""Rows micdm adds to the site's own CDM tables (procedure_occurrence, measurement, observation).

A site's ETL owns those tables and reloads them at will. So micdm takes the ids of its rows from a block
of its own (storage.site_id_blocks), far above the site's, and keeps a fingerprint of every row version it
writes (site_row). Before a write, each id micdm is about to use is checked: a row there that is none of
micdm's versions belongs to someone else, so its key is given a new id instead of being merged over. A
row of micdm's that a reload dropped is simply written again, with the same id, and counted as restored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial, reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.concurrency import run_concurrently
from micdm.schema import TABLES
from micdm.tables import (
    TableLocator,
    aggregate,
    append,
    as_stored,
    column_ceiling,
    conform,
    delta_table,
    listed,
    merge_into,
    narrowed,
    read_id_span,
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


def _id_ranges(ids: Mapping[str, DataFrame]) -> dict[str, tuple[int, int]]:
    """The lowest and highest id of each frame (one column), by table, in one query; a frame with no id is left
    out."""
    if not ids:
        return {}
    spans = reduce(DataFrame.unionByName, [frame.agg(
        F.lit(table).alias("table"), F.min(frame.columns[0]).cast("long").alias("low"),
        F.max(frame.columns[0]).cast("long").alias("high")) for table, frame in ids.items()])
    return {row.table: (row.low, row.high) for row in spans.collect() if row.low is not None}


def _in_range(table: str, bounds: tuple[int, int], alias: str = "") -> str:
    """A condition on the table's id alone (of the MERGE side ``alias``, when given). micdm's ids lie in a
    block of their own, so with it Delta skips the site's files by their statistics rather than reading
    every row of a table that may hold billions."""
    return f"{alias + '.' if alias else ''}`{table}_id` BETWEEN {bounds[0]} AND {bounds[1]}"


def _stored_at(spark: SparkSession, locator: TableLocator, table: str, ids: DataFrame,
               bounds: tuple[int, int]) -> DataFrame:
    """(id, fingerprint) of the rows ``table`` holds now at ``ids`` (one column ``id``, within ``bounds``)."""
    key = f"{table}_id"
    stored = read_id_span(spark, locator, table, bounds).join(
        ids.select(F.col("id").alias(key)).distinct(), key, "left_semi")
    return stored.select(F.col(key).alias("id"), _fingerprint(table).alias("fingerprint"))


def _recorded_tables(spark: SparkSession, locator: TableLocator, tables: list[str]) -> set[str]:
    """Those of ``tables`` for which site_row holds a fingerprint, in one query that stops at the first of each."""
    if not tables:
        return set()
    site_row = read_table(spark, locator, "site_row")
    probes = [site_row.where(F.col("table_name") == table).select("table_name").limit(1) for table in tables]
    return {row.table_name for row in reduce(DataFrame.unionByName, probes).collect()}


def release_clashing_ids(spark: SparkSession, locator: TableLocator, ids: Mapping[str, DataFrame]) -> int:
    """Forget (in id_map) every id among ``ids[table]`` (one column ``id``) whose row in ``table`` is none of the
    versions micdm wrote, so that the next allocation gives its key a new id. Returns how many.

    The tables are checked together, so that a stage with two of them pays for one query, not two. A table
    for which micdm has recorded nothing yet (a warehouse from before fingerprints) is trusted as is.
    """
    spans = _id_ranges({table: ids[table].select("id") for table in _recorded_tables(spark, locator, list(ids))})
    if not spans:
        return 0
    clashing = reduce(DataFrame.unionByName, [
        _stored_at(spark, locator, table, ids[table], span).join(
            _recorded(spark, locator, table), ["id", "fingerprint"], "left_anti").select(
            F.lit(table).alias("namespace"), "id") for table, span in spans.items()])
    counts = {row.namespace: row["count"] for row in clashing.groupBy("namespace").count().collect()}
    if counts:  # rare: only then are the ids kept, for the MERGE that changes what they were read from
        _forget(spark, locator, clashing, counts, "their rows get new ids")
    return sum(counts.values())


def _forget(spark: SparkSession, locator: TableLocator, clashing: DataFrame, counts: Mapping[str, int],
            outcome: str) -> None:
    """Delete from id_map the ids in ``clashing`` (namespace, id): the rows there are the site's, so micdm
    neither checks nor removes them, and a key of micdm's that needs an id again gets a new one."""
    for table, count in counts.items():
        log.warning("%s: %d id(s) micdm had allocated now hold rows micdm did not write (the site reused them); %s",
                    table, count, outcome)
    delta_table(spark, locator, "id_map").alias("t").merge(
        clashing.localCheckpoint().alias("s"), "t.namespace = s.namespace AND t.id = s.id").whenMatchedDelete() \
        .execute()


def _marked(spark: SparkSession, locator: TableLocator, table: str, rows: DataFrame, span: tuple[int, int]
            ) -> DataFrame:
    """``rows`` as stored, each with its fingerprint, the fingerprints site_row recorded at its id and those the
    table holds there (sets: an id the site's table holds twice still gives one row to merge)."""
    key = f"{table}_id"
    # site_row holds every table's ids, so no file's lowest and highest id rule a night's ids out: they are
    # looked up by their list, which site_row's bloom filters of ids rule out of the earlier files.
    recorded = narrowed(_recorded(spark, locator, table), "id", listed(rows.select(key))).groupBy(
        F.col("id").alias(key)).agg(F.collect_set("fingerprint").alias("_recorded"))
    stored = read_id_span(spark, locator, table, span).groupBy(key).agg(
        F.collect_set(_fingerprint(table)).alias("_stored"))
    return as_stored(spark, locator, table, conform(rows, TABLES[table])).withColumn(
        "_fingerprint", _fingerprint(table)).join(recorded, key, "left").join(stored, key, "left").localCheckpoint(
        eager=False)  # kept by the counts that read it first


def _lacking(fingerprints: str) -> Column:
    return ~F.coalesce(F.array_contains(fingerprints, F.col("_fingerprint")), F.lit(False))


def write_site_rows(spark: SparkSession, locator: TableLocator, rows: Mapping[str, DataFrame]) -> int:
    """MERGE micdm's rows into site tables by id (``rows`` by table), after recording their fingerprints;
    returns how many of them were missing although micdm had written them before (a reload dropped them) and
    are restored.

    The fingerprints are appended before the MERGEs, in one commit for every table, so a crash between the two
    leaves rows that a re-run still recognises as micdm's. Each row is compared once with what site_row
    recorded and what its table holds; only rows the table lacks or holds otherwise are written, each table
    beside the others.
    """
    spans = _id_ranges({table: frame.select(f"{table}_id") for table, frame in rows.items()})
    marked = {table: _marked(spark, locator, table, rows[table], span) for table, span in spans.items()}
    if not marked:
        return 0
    unrecorded, changed = _lacking("_recorded"), _lacking("_stored")
    counts = {row.table: row for row in reduce(DataFrame.unionByName, [frame.agg(
        F.lit(table).alias("table"),
        F.count_if(F.col("_recorded").isNotNull() & F.col("_stored").isNull()).alias("restored"),
        F.count_if(unrecorded).alias("unrecorded"), F.count_if(changed).alias("changed"),
        F.count_if(changed & F.col("_stored").isNotNull()).alias("replacing")) for table, frame in marked.items()
    ]).collect()}
    fingerprints = [frame.where(unrecorded).select(
        F.lit(table).alias("table_name"), F.col(f"{table}_id").alias("id"), F.col("_fingerprint").alias("fingerprint"),
        F.current_timestamp().alias("written_at")) for table, frame in marked.items() if counts[table].unrecorded]
    if fingerprints:
        append(locator, "site_row", reduce(DataFrame.unionByName, fingerprints))

    def write(table: str) -> None:
        if counts[table].replacing:
            merge_into(spark, locator, table, marked[table].where(changed), [f"{table}_id"], compared=True,
                       target_only=_in_range(table, spans[table], "t"))
        elif counts[table].changed:  # only ids the table lacks: appended, with no MERGE to read its files
            append(locator, table, marked[table].where(changed))

    run_concurrently(*[partial(write, table) for table in marked])
    for table, found in counts.items():
        if found.restored:
            log.info("%s: %d row(s) micdm wrote before were missing (the site reloaded its table) and are "
                     "restored", table, found.restored)
    return sum(found.restored for found in counts.values())


def remove_site_rows(spark: SparkSession, locator: TableLocator, table: str, ids: DataFrame) -> int:
    """Delete the rows of ``table`` at ``ids`` (one column ``id``) that are still as micdm wrote them. A row the
    site has put at such an id stays, and is the site's from then on: its id leaves id_map (as in
    release_clashing_ids), or the quality stage would check the site's row as micdm's. Returns how many
    rows were deleted."""
    bounds = _id_ranges({table: ids.select("id")}).get(table)
    if bounds is None:
        return 0
    recorded = _recorded(spark, locator, table).distinct().withColumn("_ours", F.lit(True))
    stored = _stored_at(spark, locator, table, ids, bounds).join(recorded, ["id", "fingerprint"], "left").select(
        "id", F.col("_ours").isNotNull().alias("_ours")).localCheckpoint()  # the MERGEs change what it is read from
    counts = aggregate(stored, F.count_if("_ours").alias("ours"), F.count_if(~F.col("_ours")).alias("theirs"))
    if counts.ours:
        delta_table(spark, locator, table).alias("t").merge(
            stored.where("_ours").alias("s"), f"{_in_range(table, bounds, 't')} AND t.`{table}_id` = s.id") \
            .whenMatchedDelete().execute()
    if counts.theirs and _recorded_tables(spark, locator, [table]):  # fingerprints to tell the site's rows by
        _forget(spark, locator, stored.where(~F.col("_ours")).select(F.lit(table).alias("namespace"), "id"),
                {table: counts.theirs}, "they are left to the site")
    return int(counts.ours)
