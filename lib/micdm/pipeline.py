"""The pipeline: its stages in order. Each stage reads tables and writes tables, so any one can re-run alone."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from micdm.config import Settings
from micdm.extract import extract
from micdm.features import run_features
from micdm.link import run_link
from micdm.occurrence import run_occurrence
from micdm.series import run_series
from micdm.tables import TableLocator, init_tables, read_table

__all__ = ["STAGES", "StageResult", "run_pipeline", "run_stage", "table_counts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    stage: str
    seconds: float
    counts: dict[str, Any] = field(default_factory=dict)


def _extract(spark: SparkSession, locator: TableLocator, settings: Settings) -> dict[str, Any]:
    summary = extract(spark, locator, settings, run_id=uuid.uuid4().hex)
    return {"discovered": summary.discovered, "read": summary.to_read, "instances": summary.instances,
            "quarantined": summary.quarantined, "missing": summary.missing,
            "files/s": round(summary.files_per_second, 1)}


STAGES: dict[str, Callable[[SparkSession, TableLocator, Settings], Any]] = {
    "extract": _extract,
    "series": lambda spark, locator, settings: {"series": run_series(spark, locator, settings)},
    "link": run_link,
    "occurrence": lambda spark, locator, settings: {"image_occurrence": run_occurrence(spark, locator, settings)},
    "features": lambda spark, locator, settings: {"image_feature": run_features(spark, locator, settings)},
}


def run_stage(spark: SparkSession, settings: Settings, stage: str, init: bool = True) -> StageResult:
    """Run one stage (tables are created first if missing, unless ``init`` is False) and time it."""
    locator = TableLocator(settings.storage)
    if init:
        init_tables(spark, locator)
    started = time.monotonic()
    counts = STAGES[stage](spark, locator, settings)
    result = StageResult(stage, time.monotonic() - started, counts)
    log.info("%s done in %.1fs: %s", stage, result.seconds, counts)
    return result


def run_pipeline(spark: SparkSession, settings: Settings) -> list[StageResult]:
    """Every stage in order."""
    init_tables(spark, TableLocator(settings.storage))
    return [run_stage(spark, settings, stage, init=False) for stage in STAGES]


def table_counts(spark: SparkSession, settings: Settings, names: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    """Rows per table and where each lives, for summaries."""
    locator = TableLocator(settings.storage)
    return {name: (read_table(spark, locator, name).count(), locator.where(name)) for name in names}
