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
from micdm.ids import allocated_ids
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


@dataclass(frozen=True)
class _Check:
    """One check on one table, as two conditions on its rows (after the lookups it needs are joined)."""

    check: str
    field: str
    applies: Column
    """Rows the check looks at."""
    fails: Column
    """Of those, the rows that violate it."""
    threshold: float
    fatal: bool


@dataclass
class _TableChecks:
    """A table's rows with each lookup left-joined once, and the checks read from them in one aggregation."""

    name: str
    rows: DataFrame
    checks: list[_Check]

    def lookup(self, field: str, other: DataFrame, key: str, prefix: str) -> str:
        """Left-join ``other`` (distinct on ``key``, its columns renamed ``prefix<column>``) on ``field``."""
        renamed = other.dropDuplicates([key]).select(*(F.col(c).alias(f"{prefix}{c}") for c in other.columns))
        self.rows = self.rows.join(renamed, F.col(field) == F.col(f"{prefix}{key}"), "left")
        return f"{prefix}{key}"

    def add(self, check: str, field: str, applies: Column, fails: Column, threshold: float = _CONFORMANCE) -> None:
        self.checks.append(_Check(check, field, applies, fails, threshold, threshold == _CONFORMANCE))

    def results(self) -> tuple[int, list[CheckResult]]:
        """(rows of the table, each check's result)."""
        counts = self.rows.agg(F.count(F.lit(1)).alias("rows"), *(
            expression for index, check in enumerate(self.checks) for expression in (
                F.count_if(check.applies).alias(f"applies{index}"),
                F.count_if(check.applies & check.fails).alias(f"fails{index}")))).first()
        return int(counts["rows"]), [
            CheckResult(check.check, self.name, check.field, int(counts[f"fails{index}"]),
                        int(counts[f"applies{index}"]), check.threshold, check.fatal)
            for index, check in enumerate(self.checks)]


def _repeated(frame: DataFrame, key: str) -> tuple[int, int]:
    """(rows whose ``key`` another row shares, rows)."""
    row = frame.groupBy(key).count().agg(F.sum(F.when(F.col("count") > 1, F.col("count"))).alias("repeated"),
                                         F.sum("count").alias("rows")).first()
    return int(row["repeated"] or 0), int(row["rows"] or 0)


def _field_checks(table: _TableChecks) -> None:
    """isRequired for every NOT NULL field."""
    for field in TABLES[table.name].schema.fields:
        if not field.nullable:
            table.add("isRequired", field.name, F.lit(True), F.col(field.name).isNull())


def _datatypes(name: str, frame: DataFrame, rows: int) -> list[CheckResult]:
    """cdmDatatype: every field of the spec with the spec's type (a schema property: all rows or none)."""
    actual = {f.name: f.dataType for f in frame.schema.fields}
    return [CheckResult("cdmDatatype", name, field.name, 0 if actual.get(field.name) == field.dataType else rows,
                        rows, _CONFORMANCE, True) for field in TABLES[name].schema.fields]


def _foreign_keys(spark: SparkSession, locator: TableLocator, tables: dict[str, _TableChecks]) -> None:
    for index, ((name, field), (target, key)) in enumerate(_FOREIGN_KEYS.items()):
        found = tables[name].lookup(field, read_table(spark, locator, target).select(key), key, f"_fk{index}_")
        tables[name].add("isForeignKey", field, F.col(field).isNotNull(), F.col(found).isNull())
    # image_feature's (table_concept_id, table_row_id) pairs point at real measurement / observation rows.
    feature = tables["image_feature"]
    for clinical in ("measurement", "observation"):
        key = f"{clinical}_id"
        found = feature.lookup("table_row_id", read_table(spark, locator, clinical).select(key), key, "_row_")
        feature.add("isForeignKey", f"table_row_id ({clinical})",
                    F.col("table_concept_id") == table_concept_id(clinical), F.col(found).isNull())
    feature.add("fkDomain", "table_concept_id", F.lit(True), ~F.col("table_concept_id").isin(
        table_concept_id("measurement"), table_concept_id("observation")))


def _concept_checks(vocabulary: DataFrame, tables: dict[str, _TableChecks]) -> None:
    """isStandardValidConcept and fkDomain, for concepts the vocabulary holds (0 always passes)."""
    known = vocabulary.select("concept_id", "standard_concept", "invalid_reason", "domain_id")
    for index, ((name, field), domain) in enumerate(_STANDARD_CONCEPTS.items()):
        prefix = f"_concept{index}_"
        found = tables[name].lookup(field, known, "concept_id", prefix)
        coded = F.col(field).isNotNull() & (F.col(field) != 0) & F.col(found).isNotNull()
        not_standard = F.coalesce(F.col(f"{prefix}standard_concept"), F.lit("")) != "S"
        tables[name].add("isStandardValidConcept", field, coded,
                         not_standard | F.col(f"{prefix}invalid_reason").isNotNull())
        if domain is not None:
            tables[name].add("fkDomain", field, coded, F.col(f"{prefix}domain_id") != domain)


def _plausibility(spark: SparkSession, locator: TableLocator, tables: dict[str, _TableChecks]) -> None:
    today = dt.date.today()
    for name, field in _DATES.items():
        tables[name].add("plausibleDate", field, F.col(field).isNotNull(),
                         (F.col(field) < F.lit(_EARLIEST)) | (F.col(field) > F.lit(today)), _PLAUSIBILITY)
    occurrence = tables["image_occurrence"]
    visits = read_table(spark, locator, "visit_occurrence").select(
        "visit_occurrence_id", "visit_start_date", "visit_end_date")
    found = occurrence.lookup("visit_occurrence_id", visits, "visit_occurrence_id", "_visit_")
    outside = (F.col("image_occurrence_date") < F.date_sub("_visit_visit_start_date", 7)) | (
        F.col("image_occurrence_date") > F.date_add("_visit_visit_end_date", 7))
    occurrence.add("withinVisitDates", "image_occurrence_date", F.col(found).isNotNull(), outside, _WITHIN_VISIT)


def _written_rows(spark: SparkSession, locator: TableLocator, name: str) -> DataFrame:
    """The rows of a checked table that micdm wrote: all of its own tables; in the site's CDM tables, the
    ids micdm allocated (id_map), so a site's own rows are neither checked nor scanned by every check."""
    table = read_table(spark, locator, name)
    if name in ("image_occurrence", "image_feature"):
        return table
    key = _PRIMARY_KEYS[name]
    return table.join(allocated_ids(spark, locator, name, key), key, "left_semi")


def run_quality(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str) -> dict[str, int]:
    """Run every check, append the results to dq_result; raise QualityError when a fatal one failed."""
    frames = {name: _written_rows(spark, locator, name) for name in CHECKED_TABLES}
    tables = {name: _TableChecks(name, frame, []) for name, frame in frames.items()}
    for table in tables.values():
        _field_checks(table)
    _foreign_keys(spark, locator, tables)
    _concept_checks(concepts(spark, locator), tables)
    _plausibility(spark, locator, tables)
    results = []
    for name, table in tables.items():  # one aggregation per table, plus one for each key that must be unique
        rows, checked = table.results()
        repeated, _ = _repeated(frames[name], _PRIMARY_KEYS[name])
        results += [*checked, *_datatypes(name, frames[name], rows),
                    CheckResult("isPrimaryKey", name, _PRIMARY_KEYS[name], repeated, rows, _CONFORMANCE, True)]
    repeated, rows = _repeated(frames["image_occurrence"], "image_series_uid")
    results.append(CheckResult("isUnique", "image_occurrence", "image_series_uid", repeated, rows, _CONFORMANCE, True))
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
