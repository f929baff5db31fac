"""What changed in a stage's inputs since its last successful run, row by row, so the stage redoes only that.

A stage's stored watermark holds the Delta version of each table it read; the current one holds the
versions now. micdm's own tables keep a Change Data Feed, so the rows written between the two versions
can be read back, and a stage maps them to the keys it must redo (the series whose instances changed,
say). Whenever that cannot be told (no earlier run, a full refresh, changed settings or micdm version,
a changed table the stage cannot key, a feed that was not kept), the stage rebuilds in full.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.tables import TableLocator
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
        """The table's change feed between the two versions (None when the feed does not cover them)."""
        start, end = _version(self.since.inputs.get(name)), _version(self.now.inputs.get(name))
        if start is None or end is None or end < start:
            return None
        reader = (spark.read.format("delta").option("readChangeFeed", "true")
                  .option("startingVersion", start + 1).option("endingVersion", end))
        path = locator.path(name)
        try:
            feed = reader.load(path) if path is not None else reader.table(locator.ref(name))
            feed.schema  # noqa: B018 - resolving the relation is what finds a version the feed lacks
        except (AnalysisException, Py4JJavaError) as error:
            log.info("%s: no change feed from version %d (%s); redoing everything", name, start + 1,
                     str(error).splitlines()[0][:160])
            return None
        return feed


def changed_keys(spark: SparkSession, locator: TableLocator, changes: Changes | None,
                 keyed: Mapping[str, KeyOf]) -> DataFrame | None:
    """The keys a stage must redo, from the changes of the tables in ``keyed``; None means everything.

    Every other changed input (a vocabulary table, the site's CDM) makes the stage redo everything, as
    does a change ``changes`` cannot give rows for. The keys are checkpointed: the stage reads them more
    than once, and the feed's versions may be cleaned up meanwhile.
    """
    if changes is None:
        return None
    reason = changes.whole()
    unkeyed = [name for name in changes.changed_tables() if name not in keyed]
    if reason is None and unkeyed:
        reason = f"{', '.join(unkeyed)} changed"
    if reason is not None:
        log.info("redoing everything: %s", reason)
        return None
    keys: list[DataFrame] = []
    for name in changes.changed_tables():
        feed = changes.rows(spark, locator, name)
        if feed is None:
            return None
        keys.append(keyed[name](feed))
    if not keys:
        return spark.createDataFrame([], "key string")
    union = functools.reduce(lambda a, b: a.unionByName(b), [k.toDF("key") for k in keys])
    try:
        return union.where(F.col("key").isNotNull()).distinct().localCheckpoint()
    except (Py4JJavaError, PySparkException) as error:  # the feed's files went (VACUUM): redo everything
        log.info("redoing everything: the change feed cannot be read (%s)", str(error).splitlines()[0][:160])
        return None
