"""Quality stage: DataQualityDashboard-style checks on the tables micdm writes, results in dq_result.

The checks and thresholds follow the OHDSI DataQualityDashboard conventions: conformance checks
(isRequired, isPrimaryKey, isForeignKey, cdmDatatype, isStandardValidConcept, fkDomain) allow 0 %
failures and are fatal; plausibility checks allow 1 % (withinVisitDates 5 %) and only warn. A failed
fatal check makes the stage raise QualityError after dq_result is written, so a scheduled run fails.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.config import Settings
from micdm.errors import MicdmError
from micdm.schema import TABLES
from micdm.tables import TableLocator, append, read_table
from micdm.vocab import concepts, table_concept_id

__all__ = ["CheckResult", "QualityError", "run_quality"]

log = logging.getLogger(__name__)

#: Tables micdm writes or extends, checked field by field.
CHECKED_TABLES = ("image_occurrence", "image_feature", "measurement", "observation", "procedure_occurrence")
_PRIMARY_KEYS = {name: f"{name}_id" for name in CHECKED_TABLES}
#: (table, field) -> (referenced table, its key)
_FOREIGN_KEYS = {
    ("image_occurrence", "person_id"): ("person", "person_id"),
    ("image_occurrence", "procedure_occurrence_id"): ("procedure_occurrence", "procedure_occurrence_id"),
    ("image_occurrence", "visit_occurrence_id"): ("visit_occurrence", "visit_occurrence_id"),
    ("image_feature", "person_id"): ("person", "person_id"),
    ("image_feature", "image_occurrence_id"): ("image_occurrence", "image_occurrence_id"),
    ("measurement", "person_id"): ("person", "person_id"),
    ("measurement", "visit_occurrence_id"): ("visit_occurrence", "visit_occurrence_id"),
    ("observation", "person_id"): ("person", "person_id"),
    ("observation", "visit_occurrence_id"): ("visit_occurrence", "visit_occurrence_id"),
    ("procedure_occurrence", "person_id"): ("person", "person_id"),
    ("procedure_occurrence", "visit_occurrence_id"): ("visit_occurrence", "visit_occurrence_id"),
}
#: Concept fields that must hold a standard, valid concept (or 0), and the domain it must be in.
_STANDARD_CONCEPTS = {
    ("image_occurrence", "anatomic_site_concept_id"): "Spec Anatomic Site",
    ("measurement", "measurement_concept_id"): "Measurement",
    ("measurement", "unit_concept_id"): "Unit",
    ("observation", "observation_concept_id"): None,
    ("procedure_occurrence", "procedure_concept_id"): "Procedure",
}
_DATES = {"image_occurrence": "image_occurrence_date", "measurement": "measurement_date",
          "observation": "observation_date", "procedure_occurrence": "procedure_date"}
_EARLIEST = dt.date(1950, 1, 1)
_CONFORMANCE, _PLAUSIBILITY, _WITHIN_VISIT = 0.0, 1.0, 5.0


class QualityError(MicdmError):
    """A fatal check failed; dq_result holds the details."""


@dataclass(frozen=True)
class CheckResult:
    check: str
    table: str
    field: str | None
    violated: int
    checked: int
    threshold: float
    """Percent of rows allowed to fail."""
    fatal: bool

    @property
    def percent(self) -> float:
        return 100.0 * self.violated / self.checked if self.checked else 0.0

    @property
    def passed(self) -> bool:
        return self.percent <= self.threshold


def _count(frame: DataFrame, violation: Column) -> tuple[int, int]:
    row = frame.agg(F.count_if(violation).alias("bad"), F.count(F.lit(1)).alias("all")).first()
    return int(row["bad"] or 0), int(row["all"] or 0)


def _repeated(frame: DataFrame, key: str) -> int:
    """Rows whose ``key`` another row shares."""
    return int(frame.groupBy(key).count().where("count > 1").agg(F.sum("count")).first()[0] or 0)


def _field_checks(name: str, frame: DataFrame) -> list[CheckResult]:
    """isRequired for every NOT NULL field, cdmDatatype against the schema, isPrimaryKey."""
    table = TABLES[name]
    results = []
    counts = frame.agg(F.count(F.lit(1)).alias("_rows"), *[
        F.count_if(F.col(f.name).isNull()).alias(f.name) for f in table.schema.fields if not f.nullable]).first()
    rows = int(counts["_rows"])
    for field in table.schema.fields:
        if not field.nullable:
            results.append(CheckResult("isRequired", name, field.name, int(counts[field.name]), rows, _CONFORMANCE,
                                       True))
    actual = {f.name: f.dataType for f in frame.schema.fields}
    for field in table.schema.fields:
        wrong = actual.get(field.name) != field.dataType
        results.append(CheckResult("cdmDatatype", name, field.name, rows if wrong else 0, rows, _CONFORMANCE, True))
    key = _PRIMARY_KEYS[name]
    results.append(CheckResult("isPrimaryKey", name, key, _repeated(frame, key), rows, _CONFORMANCE, True))
    return results


def _foreign_keys(spark: SparkSession, locator: TableLocator, frames: dict[str, DataFrame]) -> list[CheckResult]:
    results = []
    for (name, field), (target, key) in _FOREIGN_KEYS.items():
        present = frames[name].where(F.col(field).isNotNull())
        known = read_table(spark, locator, target).select(F.col(key).alias("_key"))
        violated, checked = _count(present.join(known, F.col(field) == F.col("_key"), "left"),
                                   F.col("_key").isNull())
        results.append(CheckResult("isForeignKey", name, field, violated, checked, _CONFORMANCE, True))
    # image_feature's (table_concept_id, table_row_id) pairs point at real measurement / observation rows.
    feature = frames["image_feature"]
    for clinical, id_column in (("measurement", "measurement_id"), ("observation", "observation_id")):
        pointing = feature.where(F.col("table_concept_id") == table_concept_id(clinical))
        rows = frames[clinical].select(F.col(id_column).alias("_row"))
        violated, checked = _count(pointing.join(rows, F.col("table_row_id") == F.col("_row"), "left"),
                                   F.col("_row").isNull())
        results.append(CheckResult("isForeignKey", "image_feature", f"table_row_id ({clinical})", violated, checked,
                                   _CONFORMANCE, True))
    violated, checked = _count(feature, ~F.col("table_concept_id").isin(
        table_concept_id("measurement"), table_concept_id("observation")))
    results.append(CheckResult("fkDomain", "image_feature", "table_concept_id", violated, checked, _CONFORMANCE,
                               True))
    return results


def _concept_checks(vocabulary: DataFrame, frames: dict[str, DataFrame]) -> list[CheckResult]:
    """isStandardValidConcept and fkDomain, for concepts the vocabulary holds (0 always passes)."""
    known = vocabulary.select(F.col("concept_id").alias("_concept"), F.col("standard_concept").alias("_standard"),
                              F.col("invalid_reason").alias("_invalid"), F.col("domain_id").alias("_domain"))
    results = []
    for (name, field), domain in _STANDARD_CONCEPTS.items():
        coded = frames[name].where(F.col(field).isNotNull() & (F.col(field) != 0)).join(
            known, F.col(field) == F.col("_concept"))
        not_standard = F.coalesce(F.col("_standard"), F.lit("")) != "S"
        violated, checked = _count(coded, not_standard | F.col("_invalid").isNotNull())
        results.append(CheckResult("isStandardValidConcept", name, field, violated, checked, _CONFORMANCE, True))
        if domain is not None:
            violated, checked = _count(coded, F.col("_domain") != domain)
            results.append(CheckResult("fkDomain", name, field, violated, checked, _CONFORMANCE, True))
    return results


def _plausibility(spark: SparkSession, locator: TableLocator, frames: dict[str, DataFrame]) -> list[CheckResult]:
    results = []
    today = dt.date.today()
    for name, field in _DATES.items():
        present = frames[name].where(F.col(field).isNotNull())
        violated, checked = _count(present, (F.col(field) < F.lit(_EARLIEST)) | (F.col(field) > F.lit(today)))
        results.append(CheckResult("plausibleDate", name, field, violated, checked, _PLAUSIBILITY, False))
    visits = read_table(spark, locator, "visit_occurrence").select(
        F.col("visit_occurrence_id").alias("_visit"), "visit_start_date", "visit_end_date")
    with_visit = frames["image_occurrence"].join(visits, F.col("visit_occurrence_id") == F.col("_visit"))
    outside = (F.col("image_occurrence_date") < F.date_sub("visit_start_date", 7)) | (
        F.col("image_occurrence_date") > F.date_add("visit_end_date", 7))
    violated, checked = _count(with_visit, outside)
    results.append(CheckResult("withinVisitDates", "image_occurrence", "image_occurrence_date", violated, checked,
                               _WITHIN_VISIT, False))
    occurrence = frames["image_occurrence"]
    results.append(CheckResult("isUnique", "image_occurrence", "image_series_uid",
                               _repeated(occurrence, "image_series_uid"), occurrence.count(), _CONFORMANCE, True))
    return results


def run_quality(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str) -> dict[str, int]:
    """Run every check, append the results to dq_result; raise QualityError when a fatal one failed."""
    frames = {name: read_table(spark, locator, name).localCheckpoint() for name in CHECKED_TABLES}
    results = [r for name in CHECKED_TABLES for r in _field_checks(name, frames[name])]
    results += _foreign_keys(spark, locator, frames)
    results += _concept_checks(concepts(spark, locator), frames)
    results += _plausibility(spark, locator, frames)
    now = dt.datetime.now(dt.timezone.utc)
    rows = [(run_id, now, r.check, r.table, r.field, r.violated, r.checked, round(r.percent, 4), r.threshold,
             r.fatal, r.passed) for r in results]
    append(locator, "dq_result", spark.createDataFrame(rows, TABLES["dq_result"].schema))
    failed = [r for r in results if not r.passed]
    for result in failed:
        log.warning("quality: %s %s.%s failed: %d of %d rows (%.2f%% > %.1f%%)%s", result.check, result.table,
                    result.field, result.violated, result.checked, result.percent, result.threshold,
                    " (fatal)" if result.fatal else "")
    fatal = [r for r in failed if r.fatal]
    if fatal:
        names = ", ".join(f"{r.check} {r.table}.{r.field}" for r in fatal)
        raise QualityError(f"{len(fatal)} fatal quality check(s) failed: {names}; see {locator.where('dq_result')}")
    return {"checks": len(results), "failed": len(failed), "fatal": 0}
