"""What changed in a stage's inputs since its last successful run, row by row, so the stage redoes only that.

A stage's stored watermark holds the Delta version of each table it read; the current one holds the
versions now. micdm's own tables keep a Change Data Feed, so the rows written between the two versions
can be read back, and a stage maps them to the keys it must redo (the series whose instances changed,
say). The site's tables keep none (micdm never alters them): where one is Delta, the commits between its
two versions name the data files added and removed, and only those files' rows are compared, so a day's
new rows cost what they hold, not what the table holds. Where those files cannot be read as they are
(partitions, deletion vectors, column mapping, a schema change, commits no longer kept), the two versions
are read whole by time travel and compared row by row. Whenever the change cannot be told (no earlier
run, a full refresh, changed settings or micdm version, a changed table the stage cannot key, a feed
that was not kept, a site version vacuumed or a site table that is not Delta), the stage rebuilds in full.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.tables import CHANGE_FEED_LAYERS, Keys, TableLocator, data_file, keep_change_feed, listed_or_kept
from micdm.watermark import Watermark

__all__ = ["Changes", "KeyOf", "changed_keys"]

log = logging.getLogger(__name__)

#: Maps a table's changed rows (with the feed's ``_change_type``) to the keys a stage redoes (one column).
KeyOf = Callable[[DataFrame], DataFrame]


def _version(mark: str | None) -> int | None:
    return int(mark[1:]) if mark and mark.startswith("v") and mark[1:].isdigit() else None


@dataclass(frozen=True)
class Changes:
    """A stage's stored watermark (``since``) and the one read before it runs (``now``)."""

    since: Watermark
    now: Watermark

    def changed_tables(self) -> list[str]:
        return [name for name in sorted(set(self.now.inputs) | set(self.since.inputs))
                if self.now.inputs.get(name) != self.since.inputs.get(name)]

    def whole(self) -> str | None:
        """Why the stage must redo everything whatever the tables say (settings, micdm's version), else None."""
        if self.now.settings_digest != self.since.settings_digest:
            return "settings changed"
        if self.now.micdm_version != self.since.micdm_version:
            return f"micdm {self.since.micdm_version} -> {self.now.micdm_version}"
        return None

    def rows(self, spark: SparkSession, locator: TableLocator, name: str) -> DataFrame | None:
        """The rows that changed between the two versions (None when they are not two Delta versions): the
        change feed of one of micdm's tables; for a table of the site's, every row one version holds and
        the other does not, as each version stores it."""
        start, end = _version(self.since.inputs.get(name)), _version(self.now.inputs.get(name))
        if start is None or end is None or end < start:
            return None
        if locator.definition(name).layer not in CHANGE_FEED_LAYERS:
            sides = _changed_file_rows(spark, locator.ref(name), start, end) or [
                spark.sql(f"SELECT * FROM {locator.ref(name)} VERSION AS OF {version}") for version in (start, end)]
            # each side read once, in one aggregation: a row counts +1 in the new, -1 in the old
            both = functools.reduce(DataFrame.unionByName, (
                rows.withColumn("_side", F.lit(side)) for rows, side in zip(sides, (-1, 1), strict=True)))
            return both.groupBy(*[c for c in both.columns if c != "_side"]).agg(F.sum("_side").alias("_side")) \
                .where(F.col("_side") != 0).drop("_side")
        reader = (spark.read.format("delta").option("readChangeFeed", "true")
                  .option("startingVersion", start + 1).option("endingVersion", end))
        path = locator.path(name)
        return reader.load(path) if path is not None else reader.table(locator.ref(name))


#: What a Delta commit says of the files it adds and removes, and whether it changes the table's metadata.
_FILE_ACTION = "struct<path: string, partitionValues: map<string, string>, deletionVector: struct<storageType: string>>"
_COMMIT = f"add {_FILE_ACTION}, remove {_FILE_ACTION}, metaData struct<id: string>"


def _changed_file_rows(spark: SparkSession, ref: str, start: int, end: int) -> list[DataFrame] | None:
    """The rows of the data files that the commits after version ``start`` up to ``end`` of a Delta table
    removed, and of those they added; None when those files cannot be read as plain Parquet (a partitioned
    table, column mapping, deletion vectors, a schema change) or the commits are no longer kept."""
    detail = spark.sql(f"DESCRIBE DETAIL {ref}").first()
    if detail is None or detail["partitionColumns"] or (detail["properties"] or {}).get(
            "delta.columnMapping.mode", "none") != "none":
        return None
    location = str(detail["location"]).rstrip("/")
    commits = [f"{location}/_delta_log/{version:020d}.json" for version in range(start + 1, end + 1)]
    try:
        actions = spark.read.schema(_COMMIT).json(commits).collect()
    except (Py4JJavaError, PySparkException) as error:  # a commit cleaned from the log
        log.info("%s: commits %d to %d not read (%s)", ref, start + 1, end, type(error).__name__)
        return None
    removed: list[str] = []
    added: list[str] = []
    for action in actions:
        if action["metaData"] is not None:
            return None
        for file, files in ((action["remove"], removed), (action["add"], added)):
            if file is not None:
                if file["partitionValues"] or file["deletionVector"] is not None:
                    return None
                files.append(data_file(location, file["path"]))
    schema = spark.sql(f"SELECT * FROM {ref} VERSION AS OF {end}").schema  # the same at both: no metaData
    return [spark.read.schema(schema).parquet(*files) if files else spark.createDataFrame([], schema)
            for files in (removed, added)]


def changed_keys(spark: SparkSession, locator: TableLocator, changes: Changes | None,
                 keyed: Mapping[str, KeyOf]) -> Keys | None:
    """The keys a stage must redo, from the changes of the tables in ``keyed``; None means everything.

    Every other changed input (a vocabulary table, a site table the stage does not key) makes the stage
    redo everything, as does a change that cannot be read (a feed turned off by an older micdm, which
    turns it on, or versions vacuumed). The keys come listed in the one job that reads every feed
    (``tables.listed_or_kept``), or, beyond the list's size, checkpointed: the stage reads them more than once.
    """
    if changes is None:
        return None
    reason = changes.whole()
    changed = changes.changed_tables()
    unkeyed = [name for name in changed if name not in keyed]
    if reason is None and unkeyed:
        reason = f"{', '.join(unkeyed)} changed"
    if reason is not None:
        log.info("redoing everything: %s", reason)
        return None
    keys = [spark.createDataFrame([], "key string")]
    for name in changed:
        try:
            feed = changes.rows(spark, locator, name)
            if feed is None:
                log.info("redoing everything: %s has no Delta versions to compare", name)
                return None
            keys.append(keyed[name](feed).toDF("key").where(F.col("key").isNotNull()))
        except (Py4JJavaError, PySparkException) as error:  # a feed turned off
            _unreadable(spark, locator, [name], error)
            return None
    try:
        return listed_or_kept(functools.reduce(DataFrame.unionByName, keys).distinct())
    except (Py4JJavaError, PySparkException) as error:  # a feed read only now: which one is not told
        _unreadable(spark, locator, changed, error)
        return None


def _unreadable(spark: SparkSession, locator: TableLocator, names: list[str], error: Exception) -> None:
    """Say why everything is redone when a change cannot be read (a feed off, or its files vacuumed); a feed
    an older micdm left off is turned on for the next run."""
    log.info("redoing everything: %s's changes cannot be read (%s)", ", ".join(names), str(error).splitlines()[0][:160])
    for name in names:
        if keep_change_feed(spark, locator, name):
            log.info("%s: its change feed is on from now", name)
