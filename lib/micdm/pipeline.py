"""The pipeline: its stages in order. Each stage reads tables and writes tables, so any one can re-run alone."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import SparkSession

from micdm import extract, features, link, occurrence, publish, quality, series, vocabulary, watermark
from micdm.changes import Changes
from micdm.config import Settings
from micdm.report import FIGURE_TABLES, RunFigures, cached_figures, latest_run_rows, write_report
from micdm.spark import classic_context
from micdm.stage import Stage, StageCounts
from micdm.tables import TableLocator, compact_small_files, init_tables, read_table, row_count

__all__ = ["STAGES", "STAGE_TABLES", "StageResult", "latest_link_report", "report_folder", "run_pipeline", "run_stage",
           "table_counts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    stage: str
    seconds: float
    counts: StageCounts = field(default_factory=dict)
    spark_jobs: int | None = 0
    """Spark jobs the stage started (the watermark's included): its fixed cost, whatever the data. None
    over Spark Connect, which does not tell."""


#: The stages in the order a run takes them; each is its module's ``run`` (see micdm.stage).
STAGES: dict[str, Stage] = {
    "vocabulary": vocabulary.run,
    "extract": extract.run,
    "series": series.run,
    "link": link.run,
    "occurrence": occurrence.run,
    "features": features.run,
    "publish": publish.run,
    "quality": quality.run,
}


#: What each stage reads and writes (tables; extract also reads the files under sources.roots).
STAGE_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "vocabulary": (("concept", "concept_relationship", "vocabulary", "domain", "concept_class"),
                   ("concept", "concept_relationship", "vocabulary", "domain", "concept_class")),
    "extract": (("file_inventory", "dicom_instance", "dicom_quarantine"),
                ("dicom_instance", "dicom_quarantine", "sr_content_item", "file_inventory")),
    "series": (("dicom_instance", "file_inventory"), ("dicom_series",)),
    "link": (("dicom_series", "person", "procedure_occurrence", "visit_occurrence", "concept", "concept_ancestor",
              "id_map"),
             ("series_link", "link_exception", "link_report", "procedure_occurrence", "id_map", "site_row")),
    "occurrence": (("dicom_series", "series_link", "concept", "concept_relationship", "id_map"),
                   ("image_occurrence", "id_map")),
    "features": (("dicom_instance", "file_inventory", "instance_attribute", "sr_content_item", "image_occurrence",
                  "measurement", "observation", "concept", "concept_relationship", "id_map"),
                 ("instance_attribute", "measurement", "observation", "image_feature", "feature_quarantine",
                  "sr_measurement_group", "sr_quantitative", "sr_qualitative", "id_map", "site_row")),
    "publish": (("image_occurrence", "image_feature"), ()),
    "quality": (("image_occurrence", "image_feature", "measurement", "observation", "procedure_occurrence", "person",
                 "death", "visit_occurrence", "concept", "id_map", "dq_tally"), ("dq_result", "dq_tally")),
}


def _inputs(spark: SparkSession, locator: TableLocator, settings: Settings, stage: str) -> watermark.Watermark:
    """The watermark of what ``stage`` reads: its tables, the site's crosswalks, the algorithm results file."""
    cfg = settings.occurrence
    crosswalks = [name for name in (cfg.person_crosswalk, cfg.accession_crosswalk) if name] if stage == "link" else []
    files = [settings.features.algorithm_results] if stage == "features" and settings.features.algorithm_results \
        else []
    return watermark.current(spark, locator, settings, STAGE_TABLES[stage][0], crosswalks, files,
                             located=stage == "publish")


#: Stored watermarks by stage, with the run that left each (micdm.watermark).
_Marks = dict[str, tuple[watermark.Watermark, str]]


def run_stage(spark: SparkSession, settings: Settings, stage: str, init: bool = True,
              run_id: str | None = None, full_refresh: bool = False) -> StageResult:
    """Run one stage (tables are created first if missing, unless ``init`` is False) and time it.

    A stage whose inputs are as they were after its last successful run is skipped (micdm.watermark),
    unless ``full_refresh``; extract always lists its sources, and with ``full_refresh`` reads every file
    again. The caller holds the run lock (micdm.runlock.exclusive_run), as the CLI and the jobs do.
    """
    locator = TableLocator.of(settings)
    if stage == "extract":
        extract.start_readers(spark, locator, full_refresh)
    if init:
        init_tables(spark, locator)
    done: _Marks = {}
    result = _timed_stage(spark, locator, settings, stage, run_id or uuid.uuid4().hex, full_refresh,
                          watermark.stored(spark, locator), done)
    watermark.record(spark, locator, done)
    return result


def _timed_stage(spark: SparkSession, locator: TableLocator, settings: Settings, stage: str, run_id: str,
                 full_refresh: bool, marks: _Marks, done: _Marks) -> StageResult:
    """Run (or skip) one stage, counting its Spark jobs; its new watermark goes into ``done``."""
    group = f"micdm-{run_id}-{stage}"
    context = classic_context(spark)
    if context is not None:
        context.setJobGroup(group, f"micdm {stage}")
    started = time.monotonic()
    try:
        counts = _run_unless_unchanged(spark, locator, settings, stage, run_id, full_refresh, marks, done)
    finally:
        if context is not None:
            context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
            context.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
    jobs = len(context.statusTracker().getJobIdsForGroup(group)) if context is not None else None
    result = StageResult(stage, time.monotonic() - started, counts, jobs)
    log.info("%s done in %.1fs, %s Spark jobs: %s", stage, result.seconds, "?" if jobs is None else jobs, counts)
    return result


def _run_unless_unchanged(spark: SparkSession, locator: TableLocator, settings: Settings, stage: str, run_id: str,
                          full_refresh: bool, marks: _Marks, done: _Marks) -> StageCounts:
    if stage == "extract":
        if full_refresh:
            settings = dataclasses.replace(settings, extract=dataclasses.replace(settings.extract, full_refresh=True))
        log.info("extract starting%s", " (full refresh)" if full_refresh else "")
        counts = STAGES[stage](spark, locator, settings, run_id)
        compact_small_files(spark, locator, STAGE_TABLES[stage][1])
        return counts
    before = _inputs(spark, locator, settings, stage)
    last = marks.get(stage)
    changes = before.changes_from(last[0] if last else None)
    if last is not None and not changes and not full_refresh:
        log.info("%s skipped: its inputs are as they were after run %s", stage, last[1])
        return {"skipped": f"nothing changed since run {last[1]}"}
    log.info("%s starting (%s)", stage, "full refresh" if full_refresh else f"changed: {', '.join(changes)}")
    counts = STAGES[stage](spark, locator, settings, run_id,
                           None if last is None or full_refresh else Changes(last[0], before))
    reads, writes = STAGE_TABLES[stage]
    compact_small_files(spark, locator, writes)  # before the versions are read again, here and downstream
    done[stage] = (watermark.refreshed(spark, locator, before, set(reads) & set(writes)), run_id)
    return counts


def report_folder(settings: Settings) -> Path | None:
    """Where run reports go: the configured folder, else beside the local tables, else nowhere."""
    if not settings.report.enabled:
        return None
    if settings.report.folder:
        return Path(settings.report.folder)
    return None if settings.storage.catalog else Path(settings.storage.warehouse) / "reports"


def run_pipeline(spark: SparkSession, settings: Settings, full_refresh: bool = False) -> list[StageResult]:
    """Every stage in order, then the run report (written even when a stage fails, with what there is).

    The caller holds the run lock, as for run_stage.
    """
    locator = TableLocator.of(settings)
    extract.start_readers(spark, locator, full_refresh)
    init_tables(spark, locator)
    run_id = uuid.uuid4().hex
    results: list[StageResult] = []
    marks, done = watermark.stored(spark, locator), _Marks()
    try:
        for stage in STAGES:
            results.append(_timed_stage(spark, locator, settings, stage, run_id, full_refresh, marks, done))
    finally:
        watermark.record(spark, locator, done)  # the stages that succeeded need not run again
        folder = report_folder(settings)
        if folder is not None:
            try:
                path = write_report(run_id, [(r.stage, r.seconds, r.counts) for r in results],
                                    _report_figures(spark, locator, folder), folder)
                log.info("run report: %s", path)
            except Exception as error:  # a report must never hide the run's own outcome
                log.warning("run report not written: %s: %s", type(error).__name__, error)
    return results


def table_counts(spark: SparkSession, settings: Settings, names: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    """Rows per table and where each lives, for summaries."""
    locator = TableLocator.of(settings)
    return {name: (row_count(spark, locator, name), locator.where(name)) for name in names}


#: The file in the report folder that keeps the last report's figures.
_FIGURES_CACHE = ".micdm-report-figures.json"


def _report_figures(spark: SparkSession, locator: TableLocator, folder: Path) -> RunFigures:
    """The run report's figures, cached in ``folder`` for as long as their tables keep their versions and
    the stages' last runs stay the same (so a rebuilt warehouse is never mistaken for the old one)."""
    runs = sorted({run for _, run in watermark.stored(spark, locator).values()})
    state = {"tables": watermark.versions(spark, locator, FIGURE_TABLES), "runs": runs}
    return cached_figures(spark, locator, folder / _FIGURES_CACHE, state)


def latest_link_report(spark: SparkSession, settings: Settings) -> list[tuple[str, str, int, int]]:
    """The last link run's (kind, rule or reason, series, studies), rules first."""
    locator, folder = TableLocator.of(settings), report_folder(settings)
    if folder is not None:
        linkage = _report_figures(spark, locator, folder).linkage
        return sorted(sorted(linkage, key=lambda row: row[1]), key=lambda row: row[0], reverse=True)
    report = latest_run_rows(read_table(spark, locator, "link_report"), "reported_at")
    rows = report.orderBy(report["kind"].desc(), "name").collect()
    return [(r["kind"], r["name"], r["series"], r["studies"]) for r in rows]
