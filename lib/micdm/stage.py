"""The contract every stage keeps, so that the pipeline, the CLI and a job run any of them alike."""

from __future__ import annotations

from typing import Protocol

from pyspark.sql import SparkSession

from micdm.changes import Changes
from micdm.config import Settings
from micdm.tables import TableLocator

__all__ = ["Stage", "StageCounts"]

#: What a stage did, by name (rows written, files read, a mode that was off): the run summary and report.
StageCounts = dict[str, int | float | str]


class Stage(Protocol):
    """``run(spark, locator, settings, run_id, changes)`` of a stage module: reads tables, writes tables, counts.

    ``changes`` says what changed in the stage's inputs since its last successful run (micdm.changes); a
    stage that can redo only that does so, and without it (a first run, a full refresh) redoes everything.
    """

    def __call__(self, spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str,
                 changes: Changes | None = None) -> StageCounts: ...
