"""Quality stage: the OHDSI DataQualityDashboard's checks, evaluated with Spark on the rows micdm wrote.

Which check applies to which field, with which threshold and severity, comes from
``resources/dqd_checks.csv``: the DataQualityDashboard 2.8 control rows for the CDM tables micdm adds rows
to (measurement, observation, procedure_occurrence; table, field and concept level), and rows for the
imaging tables from the working group's field list. Each check counts its violating rows and its
denominator the way the DataQualityDashboard's SQL does, so the percentages are the same; a check with
nothing to look at (an empty table, a field never filled, no vocabulary, no row in its denominator) is
``not_evaluated``, never passed. A failed check of severity ``fatal`` makes the stage raise
QualityError after dq_result is written, so a scheduled run fails.

In the site's tables only the rows micdm allocated ids for (id_map) are checked: the site's own rows
are the site's business, and a site runs the DataQualityDashboard on its whole CDM itself. The one
exception is measurePersonCompleteness, a property of the whole table (see _completeness_tallies).

Each check's counts are kept per person (dq_tally: one map of named counters per person, and their sum),
so a run re-counts only the persons whose rows changed since the stage's last run and moves the sum by
the difference (see _counted). What changes a person's counts: micdm's rows and the site's rows of them in
the checked tables, their person and death rows, and the site's visits their rows name. A change the persons
cannot key (the vocabulary, a settings or micdm version change) re-counts everyone, as does a key held twice.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F

from micdm.changes import Changes, changed_keys
from micdm.concurrency import run_concurrently
from micdm.config import Settings
from micdm.errors import QualityError
from micdm.ids import allocated_ids
from micdm.schema import TABLES
from micdm.stage import StageCounts
from micdm.tables import (
    Keys,
    TableLocator,
    aggregate,
    append,
    as_frame,
    has_rows,
    key_count,
    listed,
    merge_or_delete,
    overwrite,
    read_id_span,
    read_table,
    sql_in,
    sql_literal,
    sql_name,
    within,
)
from micdm.vocab import resource_rows, table_concept_id

__all__ = ["CHECKED_TABLES", "CheckResult", "Control", "controls", "evaluate", "export_dqd_thresholds", "run"]

log = logging.getLogger(__name__)

#: Tables micdm writes or adds rows to, in the order they are checked.
CHECKED_TABLES = ("image_occurrence", "image_feature", "measurement", "observation", "procedure_occurrence")
_OWN_TABLES = ("image_occurrence", "image_feature")
#: Checks that say something about a field even when it is never filled (the DataQualityDashboard's rule),
#: plus isRequired: a required field left empty is a failure here, not a field "not populated".
_EVALUATED_WHEN_EMPTY = frozenset({"measureValueCompleteness", "isRequired", "measurePersonCompleteness"})
#: Checks that read CONCEPT; with no vocabulary they cannot be evaluated.
_VOCABULARY_CHECKS = frozenset({"fkDomain", "fkClass", "isStandardValidConcept"})
_NULL_SOURCE = "\u0000"  # stands for NULL where distinct source values are counted (NULL counts as one)
_PAIR_KEY = "(table_concept_id)"  # image_feature.table_row_id: the table is named by table_concept_id
_GENDERS = {"Male": 8507, "Female": 8532}
_INTEGER_TYPES = frozenset({"byte", "short", "integer", "long"})  # Spark's names for them (DataType.typeName)
_KEY_CHECKS = frozenset({"isPrimaryKey", "isUnique"})
#: dq_tally's row that holds the sum of every person's counters, and the tally of rows without a person_id.
_TOTAL, _NO_PERSON = "*", ""
#: The tables whose changed rows name the persons to count again (by their person_id).
_PERSON_KEYED = ("image_occurrence", "image_feature", "measurement", "observation", "procedure_occurrence",
                 "person", "death")


@dataclass(frozen=True)
class Control:
    """One check of resources/dqd_checks.csv: what to check, where, its threshold and parameters."""

    level: str
    table: str
    field: str | None
    check: str
    threshold: float
    """Percent of rows allowed to fail; 0 means none may."""
    severity: str
    params: dict[str, str] = dataclasses.field(default_factory=dict, hash=False, compare=False)

    @property
    def concept_id(self) -> int | None:
        return int(self.params["concept_id"]) if self.params.get("concept_id") else None

    @property
    def unit_concept_id(self) -> int | None:
        return int(self.params["unit_concept_id"]) if self.params.get("unit_concept_id") else None

    @property
    def key(self) -> str:
        """The check's name in the counters dq_tally keeps: one per check of the shipped file."""
        return "|".join(str(part) for part in (self.level, self.table, self.field or "", self.check,
                                               self.params.get("concept_id", ""),
                                               self.params.get("unit_concept_id", "")))


@functools.cache
def controls() -> tuple[Control, ...]:
    """Every check micdm runs, as shipped (read once per process)."""
    fixed = ("level", "table", "field", "check", "threshold", "severity")
    return tuple(Control(row["level"], row["table"], row["field"] or None, row["check"], float(row["threshold"]),
                         row["severity"], {k: v for k, v in row.items() if k not in fixed and v})
                 for row in resource_rows("dqd_checks.csv"))


@dataclass(frozen=True)
class CheckResult:
    control: Control
    violated: int
    checked: int
    status: str
    """passed, failed or not_evaluated."""
    note: str | None = None

    @property
    def percent(self) -> float:
        return 100.0 * self.violated / self.checked if self.checked else 0.0

    @property
    def fatal(self) -> bool:
        return self.control.severity == "fatal"

    @property
    def name(self) -> str:
        concept = f" concept {self.control.concept_id}" if self.control.concept_id is not None else ""
        return f"{self.control.check} {self.control.table}.{self.control.field or '*'}{concept}"


def _verdict(control: Control, violated: int, checked: int) -> str:
    """The DataQualityDashboard's threshold rule: with a threshold of 0 any violation fails."""
    if control.threshold == 0:
        return "failed" if violated > 0 else "passed"
    return "failed" if 100.0 * violated / checked > control.threshold else "passed"


# The checks are SQL text (tables.sql_name), read once per table in one aggregation: several hundred
# expressions, each of many functions, operators, names and literals.

def _date(sql: str) -> str:
    return f"CAST({sql} AS DATE)"


def _birth_date(prefix: str) -> str:
    """The person's birth date as plausibleAfterBirth reads it: birth_datetime, else year / month / day."""
    return (f"coalesce({_date(sql_name(prefix + 'birth_datetime'))}, make_date({sql_name(prefix + 'year_of_birth')}, "
            f"coalesce({sql_name(prefix + 'month_of_birth')}, 1), coalesce({sql_name(prefix + 'day_of_birth')}, 1)))")


#: The lowest and highest value a field holds (None when it holds none).
_Span = tuple[int, int] | None


@dataclass(frozen=True)
class _RowFacts:
    """What one aggregation of a table's checked rows tells before its checks are built."""

    present: set[tuple[str, int]]
    """The (field, concept id) pairs the rows hold in their concept fields: the concepts the checks look up,
    and the concept checks run only for those present."""
    spans: dict[str, _Span]
    """Each foreign-key field's span, which bounds what its lookup reads."""


@dataclass
class _Measure:
    """A check as two counts over the table's rows (after its lookups are joined): of the rows where
    ``numerator`` and ``denominator`` hold, or, ``distinct``, of the distinct values those columns hold
    (each SQL text)."""

    control: Control
    numerator: str
    denominator: str
    distinct: bool = False


class _TableChecks:
    """A table's rows, each lookup left-joined once, and every check read from them in one aggregation.
    ``checked`` stays the rows without their lookups, for what reads none of them."""

    def __init__(self, spark: SparkSession, locator: TableLocator, name: str, rows: DataFrame,
                 concepts: dict[int, Row], lookups: dict[str, DataFrame], facts: _RowFacts) -> None:
        self.spark, self.locator, self.name, self.rows, self.concepts = spark, locator, name, rows, concepts
        self.lookups, self.facts, self.checked = lookups, facts, rows
        self.measures: list[_Measure] = []
        self.counters: list[tuple[str, str]] = []
        """Further counters by name: the rows holding each concept whose concept-level checks run."""
        self._joined: set[str] = set()

    def _join(self, prefix: str, other: DataFrame, key: str, on: str) -> None:
        """Left-join ``other`` (one row per ``key``, columns renamed ``prefix<column>``) on ``on``, once."""
        if prefix in self._joined:
            return
        self._joined.add(prefix)
        deduplicated = other.dropDuplicates([key])
        renamed = deduplicated.selectExpr(*(f"{sql_name(c)} AS {sql_name(prefix + c)}" for c in other.columns))
        self.rows = self.rows.join(renamed, F.expr(f"{sql_name(on)} = {sql_name(prefix + key)}"), "left")

    def held(self, field_name: str) -> str:
        """A column of how many of the rows hold the field's value."""
        column = f"_held_{field_name}"
        if column not in self.rows.columns:
            self.rows = self.rows.withColumn(column, F.count(F.lit(1)).over(Window.partitionBy(field_name)))
        return column

    def person(self) -> str:
        self._join("_person_", self.lookups["person"], "person_id", "person_id")
        return "_person_"

    def death(self) -> str:
        self._join("_death_", self.lookups["death"], "person_id", "person_id")
        return "_death_"

    def visit(self) -> str:
        self._join("_visit_", self.lookups["visit_occurrence"], "visit_occurrence_id", "visit_occurrence_id")
        return "_visit_"

    def among_concepts(self, field_name: str, chosen: Callable[[Row], bool]) -> str:
        """Whether the field names a concept that ``chosen`` picks: a set lookup, where a join with CONCEPT
        would broadcast a pruned copy of it for every concept field."""
        return sql_in(field_name, sorted(concept_id for concept_id, row in self.concepts.items() if chosen(row)))

    def foreign(self, field_name: str, table: str, key: str) -> str:
        prefix = f"_fk_{field_name}_{table}_"
        shared = {"person": self.person, "visit_occurrence": self.visit}.get(table)
        if shared is not None and field_name == key:  # the lookup other checks join anyway
            return shared() + key
        if table not in TABLES:  # a CDM table micdm neither reads nor writes (provider, visit_detail)
            if prefix not in self._joined:
                self._joined.add(prefix)
                self.rows = self.rows.withColumn(prefix + key, F.lit(None).cast("int"))
            return prefix + key
        self._join(prefix, self._referenced(table, key, field_name), key, field_name)
        return prefix + key

    def _referenced(self, table: str, key: str, field_name: str) -> DataFrame:
        """The ``key`` values of ``table`` that the field names: the rows within the field's lowest and highest
        value (only the files whose statistics can hold one are read), then only the values named. A site's
        measurement table is read for micdm's few ids, never shuffled whole."""
        span = self.facts.spans.get(field_name)
        if span is None:  # the field is never filled: nothing to look up
            return read_table(self.spark, self.locator, table).select(key).where(F.lit(False))
        named = self.checked.select(F.col(field_name).alias(key)).distinct()
        return read_id_span(self.spark, self.locator, table, span, key).select(key).join(named, key, "left_semi")

    def add(self, control: Control, fails: str, applies: str = "true") -> None:
        self.measures.append(_Measure(control, f"count_if(({applies}) AND ({fails}))", f"count_if({applies})"))

    def tallies(self) -> DataFrame:
        """Each person's counters (``tally_key``, ``counts``): the table's rows, each field's filled rows, each
        check's two counts, and a counter of 1 per distinct value for a distinct count; zeros are left out."""
        fields = sorted({m.control.field for m in self.measures if m.control.level == "FIELD" and m.control.field})
        counted = [(f"rows|{self.name}", "count(1)"),
                   *((f"filled|{self.name}|{f}", f"count({sql_name(f)})") for f in fields), *self.counters]
        distinct: list[tuple[str, str]] = []
        for measure in self.measures:
            names = (f"n|{measure.control.key}", f"d|{measure.control.key}")
            pairs = list(zip(names, (measure.numerator, measure.denominator), strict=True))
            if measure.distinct:
                distinct += pairs
            else:
                counted += pairs
        aggregates = [*(f"CAST({sql} AS BIGINT) AS c{index}" for index, (_, sql) in enumerate(counted)),
                      *(f"collect_set({sql}) AS s{index}" for index, (_, sql) in enumerate(distinct))]
        counts = "map(" + ", ".join(f"{sql_literal(name)}, c{index}" for index, (name, _) in enumerate(counted)) + ")"
        values = [_value_counters(f"{name}|", f"s{index}") for index, (name, _) in enumerate(distinct)]
        query = (f"SELECT tally_key, map_filter(map_concat({', '.join([counts, *values])}), (_, held) -> held != 0)"
                 f" AS counts FROM (SELECT {_person_key_sql()} AS tally_key, {', '.join(aggregates)}"
                 " FROM {rows} GROUP BY 1)")
        return self.spark.sql(query.replace("{", "{{").replace("}", "}}").replace("{{rows}}", "{rows}"),
                              rows=self.rows)


def _value_counters(prefix: str, values: str) -> str:
    """A counter of 1 for each of a set's values, named ``prefix`` and the value: summed over persons, the
    persons holding each value, so the values held are the counters above zero."""
    return (f"map_from_arrays(transform({values}, value -> concat({sql_literal(prefix)}, value)), "
            f"transform({values}, value -> CAST(1 AS BIGINT)))")


def _limit(value: str, kind: str) -> str:
    """A plausibleValueLow / High bound: a yyyymmdd date, 'today+1', or a number."""
    if value == "today+1":
        return "date_add(current_date(), 1)"
    if kind in ("date", "timestamp"):
        return f"DATE'{dt.datetime.strptime(value, '%Y%m%d').date().isoformat()}'"
    return sql_literal(float(value))


def _field_check(table: _TableChecks, control: Control, kinds: dict[str, str]) -> None:  # noqa: C901
    """Numerator and denominator of one field-level check, as the DataQualityDashboard's SQL defines them."""
    name = control.field or ""
    column, params, check = sql_name(name), control.params, control.check
    filled = f"{column} IS NOT NULL"
    if check == "isRequired" or check == "measureValueCompleteness":
        table.add(control, f"{column} IS NULL")
    elif check == "cdmDatatype":  # an integer column holds integers only: no value needs reading
        table.add(control, "false" if kinds[name] in _INTEGER_TYPES
                  else f"{filled} AND NOT CAST({column} AS STRING) RLIKE '^-?[0-9]+$'")
    elif check in _KEY_CHECKS:  # as the DataQualityDashboard's SQL counts it (IN values held twice): NULL never
        table.add(control, f"{filled} AND {sql_name(table.held(name))} > 1")
    elif check == "isForeignKey" and params["fk_table"] == _PAIR_KEY:
        pairs = " OR ".join(
            f"(table_concept_id = {table_concept_id(clinical)} AND "
            f"{sql_name(table.foreign(name, clinical, clinical + '_id'))} IS NOT NULL)"
            for clinical in ("measurement", "observation"))
        table.add(control, f"{filled} AND NOT ({pairs})")
    elif check == "isForeignKey" and params["fk_table"] == "concept":
        table.add(control, f"{filled} AND NOT {table.among_concepts(name, lambda concept: True)}")
    elif check == "isForeignKey":
        found = table.foreign(name, params["fk_table"], params["fk_field"])
        table.add(control, f"{filled} AND {sql_name(found)} IS NULL")
    elif check in ("fkDomain", "fkClass"):  # concept 0 (no matching concept) is never a wrong domain or class
        attribute, expected = (("domain_id", params["fk_domain"]) if check == "fkDomain"
                               else ("concept_class_id", params["fk_class"]))
        table.add(control, table.among_concepts(
            name, lambda concept: concept.concept_id != 0 and concept[attribute] not in (None, expected)))
    elif check == "isStandardValidConcept":  # nor a non-standard one
        table.add(control, table.among_concepts(name, lambda concept: concept.concept_id != 0 and (
            concept.standard_concept != "S" or concept.invalid_reason is not None)), filled)
    elif check in ("standardConceptRecordCompleteness", "sourceConceptRecordCompleteness"):
        if name in ("unit_concept_id", "unit_source_concept_id"):
            table.add(control, f"{column} = 0 OR ({column} IS NULL AND unit_source_value IS NOT NULL)",
                      f"{filled} OR unit_source_value IS NOT NULL")
        else:
            table.add(control, f"{column} = 0", filled)
    elif check == "sourceValueCompleteness":
        value = f"coalesce(CAST({column} AS STRING), {sql_literal(_NULL_SOURCE)})"
        standard = sql_name(params["standard_concept_field"])
        table.measures.append(_Measure(control, f"CASE WHEN {standard} = 0 THEN {value} END", value, distinct=True))
    elif check in ("plausibleValueLow", "plausibleValueHigh"):
        kind = kinds[name]
        value = _date(column) if kind in ("date", "timestamp") else column
        if check == "plausibleValueLow":
            table.add(control, f"{value} < {_limit(params['value_low'], kind)}", filled)
        else:
            table.add(control, f"{value} > {_limit(params['value_high'], kind)}", filled)
    elif check == "plausibleTemporalAfter":
        if params["after_table"] == "person":
            person = table.person()
            after = (f"coalesce({_date(sql_name(person + 'birth_datetime'))}, "
                     f"make_date({sql_name(person + 'year_of_birth')}, 6, 1))")
            table.add(control, f"{sql_name(person + 'person_id')} IS NOT NULL AND {after} > {_date(column)}")
        else:
            table.add(control, f"{_date(sql_name(params['after_field']))} > {_date(column)}")
    elif check in ("plausibleDuringLife", "plausibleBeforeDeath"):
        death = sql_name(f"{table.death()}death_date")
        late = f"{_date(column)} > date_add({death}, 60)"
        has_death = f"{death} IS NOT NULL"
        table.add(control, late, has_death if check == "plausibleDuringLife" else f"{has_death} AND {filled}")
    elif check == "plausibleAfterBirth":
        person = table.person()
        table.add(control, f"{sql_name(person + 'person_id')} IS NOT NULL AND {_date(column)} < {_birth_date(person)}",
                  filled)
    elif check == "plausibleStartBeforeEnd":
        end = sql_name(params["end_field"])
        table.add(control, f"{_date(column)} > {_date(end)}", f"{filled} AND {end} IS NOT NULL")
    elif check == "withinVisitDates":
        visit = table.visit()
        start, end = _date(sql_name(visit + "visit_start_date")), _date(sql_name(visit + "visit_end_date"))
        table.add(control, f"{_date(column)} < date_sub({start}, 7) OR {_date(column)} > date_add({end}, 7)",
                  f"{sql_name(visit + 'visit_occurrence_id')} IS NOT NULL")
    else:
        raise ValueError(f"resources/dqd_checks.csv names a check micdm does not know: {check}")


def _holding(control: Control) -> str:
    """Whether a row holds a concept-level check's concept in its field."""
    return f"{sql_name(control.field or '')} = {control.concept_id}"


def _concept_check(table: _TableChecks, control: Control) -> None:
    """A concept-level check: the rows of one concept (and unit) in the table's concept field."""
    params, concept = control.params, _holding(control)
    unit = "unit_concept_id"
    if control.check in ("plausibleValueLow", "plausibleValueHigh"):
        wanted = "NULL" if control.unit_concept_id is None else control.unit_concept_id
        applies = f"{concept} AND {unit} = {wanted} AND value_as_number IS NOT NULL"
        fails = (f"value_as_number < {_limit(params['value_low'], 'double')}" if control.check == "plausibleValueLow"
                 else f"value_as_number > {_limit(params['value_high'], 'double')}")
        table.add(control, fails, applies)
    elif control.check == "plausibleGender":
        person = table.person()
        table.add(control, f"{sql_name(person + 'gender_concept_id')} != {_GENDERS[params['gender']]}",
                  f"{concept} AND {sql_name(person + 'person_id')} IS NOT NULL")
    elif control.check == "plausibleUnitConceptIds":
        allowed = [int(u) for u in params.get("unit_concept_ids", "-1").split(",")]
        held = f"{unit} != 0" if allowed == [-1] else f"NOT {sql_in(unit, [*allowed, 0])}"
        table.add(control, f"{unit} IS NOT NULL AND {held}", f"{concept} AND ({unit} != 0 OR {unit} IS NULL)")
    else:
        raise ValueError(f"resources/dqd_checks.csv names a concept check micdm does not know: {control.check}")


def _person_key_sql(column: str = "person_id") -> str:
    """A row's tally key: its person_id as text, or _NO_PERSON."""
    return f"coalesce(CAST({sql_name(column)} AS STRING), {sql_literal(_NO_PERSON)})"


def _person_key(column: str = "person_id") -> Column:
    return F.expr(_person_key_sql(column))


def _of_persons(rows: DataFrame, persons: Keys | None) -> DataFrame:
    """The rows of ``persons`` (tally keys; every row when None): a list is a filter on person_id that the
    Parquet reader checks against each row group's statistics."""
    if persons is None:
        return rows
    if isinstance(persons, list):
        ids = [int(key) for key in persons if key not in (_NO_PERSON, _TOTAL)]
        held = sql_in("person_id", ids)
        return rows.where(f"{held} OR person_id IS NULL" if _NO_PERSON in persons else held)
    keys = as_frame(rows.sparkSession, persons, "_tally_key")
    return rows.join(keys, _person_key() == F.col("_tally_key"), "left_semi")


def _persons_named(rows: DataFrame) -> DataFrame:
    return rows.select(_person_key())


def _persons_naming(spark: SparkSession, locator: TableLocator, spans: Mapping[str, _Span],
                    visits: DataFrame) -> DataFrame:
    """The persons of the checked rows that name one of ``visits`` (the site's visit rows that changed): a
    visit's dates, and its being there at all, decide withinVisitDates and the foreign key of each row that
    names it, whoever the visit's own person is."""
    changed = visits.select("visit_occurrence_id")
    # The rows in micdm's span, not looked up in id_map: a site row there only has its person counted again.
    return functools.reduce(DataFrame.unionByName, [
        _in_span(spark, locator, name, spans.get(name)).join(changed, "visit_occurrence_id", "left_semi")
        .select(_person_key()) for name in CHECKED_TABLES if "visit_occurrence_id" in TABLES[name].schema.names])


def _nobody(rows: DataFrame) -> DataFrame:
    """id_map's changes name no person: the rows its ids were allocated for changed in their own tables."""
    return rows.select(F.lit(None).cast("string"))


def _completeness_tallies(spark: SparkSession, locator: TableLocator, checks: Sequence[Control],
                          persons: Keys | None) -> DataFrame:
    """measurePersonCompleteness per person of the person table: a counter ``persons`` of 1, and a counter
    of 1 for each table the person has no row in.

    A property of the whole table, so the site's rows count too: micdm's rows can only lower it, and on
    micdm's rows alone it would count every person never imaged.
    """
    people = _of_persons(read_table(spark, locator, "person"), persons).select(
        _person_key().alias("tally_key")).distinct()
    for index, control in enumerate(checks):
        seen = _of_persons(read_table(spark, locator, control.table), persons).select(
            _person_key().alias("tally_key")).distinct().withColumn(f"_seen{index}", F.lit(True))
        people = people.join(seen, "tally_key", "left")
    counts = F.create_map(F.lit("persons"), F.lit(1).cast("bigint"), *[
        part for index, control in enumerate(checks)
        for part in (F.lit(f"n|{control.key}"), F.col(f"_seen{index}").isNull().cast("bigint"))])
    return people.select("tally_key", F.map_filter(counts, lambda _, count: count != 0).alias("counts"))


def _allocated_spans(spark: SparkSession, locator: TableLocator) -> dict[str, _Span]:
    """The lowest and highest id micdm allocated in each of the site's checked tables, from id_map."""
    names = [name for name in CHECKED_TABLES if name not in _OWN_TABLES]
    spans = read_table(spark, locator, "id_map").where(F.col("namespace").isin(*names)).groupBy("namespace").agg(
        F.min("id").alias("low"), F.max("id").alias("high")).collect()
    found = {row["namespace"]: (row["low"], row["high"]) for row in spans}
    return {name: found.get(name) for name in names}


def _in_span(spark: SparkSession, locator: TableLocator, name: str, span: _Span,
             persons: Keys | None = None) -> DataFrame:
    """The rows of a checked table, of ``persons`` (all when None), where micdm's can be: all of its own
    tables; in the site's CDM tables, the ids within ``span``, read from the files whose statistics can hold
    one (read_id_span)."""
    if name in _OWN_TABLES:
        return _of_persons(read_table(spark, locator, name), persons)
    if span is None:
        return _of_persons(read_table(spark, locator, name), persons).where(F.lit(False))
    return _of_persons(read_id_span(spark, locator, name, span), persons)


def _written_rows(spark: SparkSession, locator: TableLocator, name: str, span: _Span,
                  persons: Keys | None = None) -> DataFrame:
    """The rows of a checked table that micdm wrote, of ``persons`` (all when None): in the site's CDM tables,
    the ids micdm allocated (id_map), so a site's own rows are neither checked nor read."""
    rows = _in_span(spark, locator, name, span, persons)
    if name in _OWN_TABLES:
        return rows
    key = f"{name}_id"
    return rows.join(allocated_ids(spark, locator, name, key), key, "left_semi")


def _lookups(spark: SparkSession, locator: TableLocator, written: Iterable[DataFrame]) -> dict[str, DataFrame]:
    """The person, death and visit rows the checked rows name, each read once for every table's checks: few
    beside a site's whole tables, and a lookup narrowed to the ids present joins as the whole one would."""
    def named(key: str) -> DataFrame:
        return functools.reduce(DataFrame.unionByName, [rows.select(key) for rows in written if key in rows.columns])

    persons = named("person_id")
    person = read_table(spark, locator, "person").select(
        "person_id", "birth_datetime", "year_of_birth", "month_of_birth", "day_of_birth", "gender_concept_id")
    death = read_table(spark, locator, "death").groupBy("person_id").agg(
        F.min(F.col("death_date").cast("date")).alias("death_date"))
    visit = read_table(spark, locator, "visit_occurrence").select(
        "visit_occurrence_id", "visit_start_date", "visit_end_date")
    narrowed = {"person": person.join(persons, "person_id", "left_semi"),
                "death": death.join(persons, "person_id", "left_semi"),
                "visit_occurrence": visit.join(named("visit_occurrence_id"), "visit_occurrence_id", "left_semi")}
    return dict(zip(narrowed, run_concurrently(*[frame.localCheckpoint for frame in narrowed.values()]), strict=True))


def _row_facts(rows: DataFrame, concept_fields: Iterable[str], foreign_key_fields: Iterable[str]) -> _RowFacts:
    """_RowFacts in one aggregation."""
    concept_fields, foreign_key_fields = sorted(set(concept_fields)), sorted(set(foreign_key_fields))
    collected = aggregate(rows, *[F.collect_set(f).alias(f"c_{f}") for f in concept_fields],
                          *[F.min(f).alias(f"low_{f}") for f in foreign_key_fields],
                          *[F.max(f).alias(f"high_{f}") for f in foreign_key_fields])
    present = {(f, int(c)) for f in concept_fields for c in (collected[f"c_{f}"] or [])}
    spans: dict[str, _Span] = {f: None if collected[f"low_{f}"] is None else (collected[f"low_{f}"],
                                                                                collected[f"high_{f}"])
                               for f in foreign_key_fields}
    return _RowFacts(present, spans)


def _concepts_used(concept: DataFrame, facts: Iterable[_RowFacts]) -> dict[int, Row]:
    """The CONCEPT rows that the checked rows' *_concept_id fields name, by id: few (the concepts of
    micdm's features, units, anatomy and types), so every concept check reads them on the driver instead of
    joining the site's whole vocabulary. The ids come from the tables' facts, which hold them already."""
    ids = {concept_id for table in facts for _, concept_id in table.present}
    return {row.concept_id: row for row in concept.where(sql_in("concept_id", sorted(ids))).collect()} if ids else {}


def _concept_table(spark: SparkSession, locator: TableLocator) -> DataFrame:
    return read_table(spark, locator, "concept").select(
        "concept_id", "domain_id", "concept_class_id", "standard_concept", "invalid_reason")


def _tallies(spark: SparkSession, locator: TableLocator, persons: Keys | None,
             spans: Mapping[str, _Span]) -> tuple[DataFrame, dict[str, DataFrame]]:
    """Each person's counters (of ``persons``; everyone's when None), one row per person, checkpointed; and
    the rows counted, by table. Per table, one aggregation for its facts; then one job for every count."""
    checks = controls()
    by_table: dict[str, list[Control]] = {}
    for control in checks:
        by_table.setdefault(control.table, []).append(control)
    written = dict(zip(CHECKED_TABLES, run_concurrently(*[functools.partial(
        lambda name: _written_rows(spark, locator, name, spans.get(name), persons).localCheckpoint(), name)
        for name in CHECKED_TABLES]), strict=True))

    def facts_of(name: str) -> _RowFacts:
        rows, controlled = written[name], by_table.get(name, [])
        return _row_facts(rows, [f.name for f in rows.schema.fields if f.name.endswith("concept_id")],
                          {c.field for c in controlled if c.check == "isForeignKey" and c.field
                           and c.params["fk_table"] != "concept"})

    facts_by_table = dict(zip(CHECKED_TABLES, run_concurrently(
        *[functools.partial(facts_of, name) for name in CHECKED_TABLES]), strict=True))
    used = _concepts_used(_concept_table(spark, locator), facts_by_table.values())
    lookups = _lookups(spark, locator, written.values())

    def tally(name: str) -> DataFrame:
        rows, facts = written[name], facts_by_table[name]
        table = _TableChecks(spark, locator, name, rows, used, lookups, facts)
        kinds = {f.name: f.dataType.typeName() for f in rows.schema.fields}
        for control in by_table.get(name, []):
            if control.level == "CONCEPT" and (control.field, control.concept_id) in facts.present:
                _concept_check(table, control)
                table.counters.append((f"p|{control.key}", f"count_if({_holding(control)})"))
            elif control.level == "FIELD":
                _field_check(table, control, kinds)
        return table.tallies()

    parts = [*(tally(name) for name in CHECKED_TABLES),
             _completeness_tallies(spark, locator, [c for c in checks if c.level == "TABLE"], persons)]
    merged = functools.reduce(DataFrame.unionByName, parts).groupBy("tally_key").agg(
        F.map_from_entries(F.flatten(F.collect_list(F.map_entries("counts")))).alias("counts"))
    return merged.localCheckpoint(), written


def _summed(tallies: DataFrame) -> dict[str, int]:
    """Each counter's sum over the tallies."""
    sums = tallies.select(F.explode("counts")).groupBy("key").agg(F.sum("value").alias("value")).collect()
    return {row["key"]: int(row["value"]) for row in sums}


def _results(totals: Mapping[str, int], vocabulary_empty: bool) -> list[CheckResult]:
    """Every check's result from the counters summed over every person."""
    def held(prefix: str) -> int:
        return sum(1 for counter, count in totals.items() if count > 0 and counter.startswith(prefix))

    results = []
    for control in controls():
        key, rows = control.key, totals.get(f"rows|{control.table}", 0)
        violated = totals.get(f"n|{key}", 0)
        if control.level == "CONCEPT" and not totals.get(f"p|{key}"):
            continue  # no row holds the concept
        if control.level == "TABLE":
            persons = totals.get("persons", 0)
            results.append(CheckResult(control, violated, persons, _verdict(control, violated, persons),
                                       "the whole table") if persons
                           else CheckResult(control, 0, 0, "not_evaluated", "person is empty"))
            continue
        if control.check in _KEY_CHECKS:
            results.append(CheckResult(control, violated, rows, _verdict(control, violated, rows)) if rows
                           else CheckResult(control, 0, 0, "not_evaluated", "no row to check"))
            continue
        checked = totals.get(f"d|{key}", 0)
        if control.check == "sourceValueCompleteness":
            violated, checked = held(f"n|{key}|"), held(f"d|{key}|")
        note = None
        if rows == 0:
            note = f"{control.table} holds no row micdm wrote"
        elif control.level == "FIELD" and control.field and control.check not in _EVALUATED_WHEN_EMPTY \
                and not totals.get(f"filled|{control.table}|{control.field}"):
            note = f"{control.table}.{control.field} is never filled"
        elif vocabulary_empty and (control.check in _VOCABULARY_CHECKS or control.params.get("fk_table") == "concept"):
            note = "CONCEPT is empty: no vocabulary to check against"
        elif checked == 0:
            note = "no row to check" if control.concept_id is None else f"no row with concept {control.concept_id}"
        status = "not_evaluated" if note else _verdict(control, violated, checked)
        results.append(CheckResult(control, violated, checked, status, note))
    return results


def evaluate(spark: SparkSession, locator: TableLocator) -> list[CheckResult]:
    """Every shipped check on the rows micdm wrote, counted for every person (dq_tally is left as it is)."""
    tallies, _ = _tallies(spark, locator, None, _allocated_spans(spark, locator))
    return _results(_summed(tallies), not has_rows(_concept_table(spark, locator)))


def _stored_total(spark: SparkSession, locator: TableLocator) -> dict[str, int] | None:
    row = read_table(spark, locator, "dq_tally").where(F.col("tally_key") == _TOTAL).select("counts").first()
    return None if row is None else dict(row["counts"])


def _repeats(totals: Mapping[str, int]) -> bool:
    """Whether a key check counts a value held twice: who holds it is then known only by counting everyone."""
    return any(totals.get(f"n|{c.key}") for c in controls() if c.check in _KEY_CHECKS)


def _with_late_dates(spark: SparkSession, locator: TableLocator, persons: Keys, stored: Mapping[str, int]) -> Keys:
    """``persons`` and every person with a row dated after tomorrow: such a row passes once its day comes,
    so it is counted again each run (a row that passed does not fail later: tomorrow only moves on)."""
    counters = [f"n|{c.key}" for c in controls()
                if c.params.get("value_high") == "today+1" and stored.get(f"n|{c.key}")]
    if not counters:
        return persons
    late = functools.reduce(Column.__or__, [F.coalesce(F.col("counts").getItem(c), F.lit(0)) > 0 for c in counters])
    found = [row[0] for row in read_table(spark, locator, "dq_tally").where(
        (F.col("tally_key") != _TOTAL) & late).select("tally_key").collect()]
    log.info("quality: %d persons with rows dated after tomorrow are counted again", len(found))
    if isinstance(persons, list):
        return sorted(set(persons) | set(found))
    return persons.unionByName(as_frame(spark, found, persons.columns[0])).distinct()


def _held_beyond(spark: SparkSession, locator: TableLocator, written: Mapping[str, DataFrame],
                 counted: Mapping[str, int]) -> bool:
    """Whether a row of a person not counted holds a key value (isPrimaryKey, isUnique) that a counted row
    holds: both rows would then count as repeated, which the counted persons' tallies cannot tell."""
    keys = [(c.table, c.field) for c in controls() if c.check in _KEY_CHECKS and c.field]

    def beyond(table: str, field: str) -> bool:
        values = listed(written[table].select(field).where(F.col(field).isNotNull()).distinct())
        ids = values if isinstance(values, list) and values and all(isinstance(v, int) for v in values) else None
        stored = read_table(spark, locator, table) if ids is None else \
            read_id_span(spark, locator, table, (min(ids), max(ids)), field)
        holders = within(stored.select(field), field, values).count()
        return holders > counted.get(f"filled|{table}|{field}", 0)

    return any(run_concurrently(*[functools.partial(beyond, table, field) for table, field in keys]))


def _total_row(spark: SparkSession, totals: Mapping[str, int]) -> DataFrame:
    return spark.createDataFrame([(_TOTAL, dict(totals))], TABLES["dq_tally"].schema)


def _store(spark: SparkSession, locator: TableLocator, tallies: DataFrame, persons: Keys,
           totals: Mapping[str, int]) -> None:
    """One MERGE into dq_tally: the counted persons' tallies, the new sum, and no tally for a counted person
    who has no row left."""
    gone = as_frame(spark, persons, "tally_key").join(tallies, "tally_key", "left_anti").withColumn(
        "counts", F.lit(None).cast(TABLES["dq_tally"].schema["counts"].dataType))
    rows = functools.reduce(DataFrame.unionByName, [
        tallies.withColumn("_keep", F.lit(True)), _total_row(spark, totals).withColumn("_keep", F.lit(True)),
        gone.withColumn("_keep", F.lit(False))])
    merge_or_delete(spark, locator, "dq_tally", rows, ["tally_key"], F.col("_keep"))


def _counted(spark: SparkSession, locator: TableLocator, changes: Changes | None) -> tuple[dict[str, int], Keys | None]:
    """Every counter's sum, dq_tally brought up to date, and the persons counted (None: everyone).

    The persons whose rows changed since the stage's last run are counted again, and the stored sum moves
    by the difference between their stored and new tallies, in the MERGE that stores both; whatever the
    persons cannot key (see the module's docstring) rewrites every tally.
    """
    spans = functools.cache(functools.partial(_allocated_spans, spark, locator))
    persons = changed_keys(spark, locator, changes, {
        **{name: _persons_named for name in _PERSON_KEYED}, "id_map": _nobody,
        "visit_occurrence": lambda visits: _persons_naming(spark, locator, spans(), visits)})
    stored = None if persons is None else _stored_total(spark, locator)
    if persons is not None and stored is not None and not _repeats(stored):
        persons = _with_late_dates(spark, locator, persons, stored)
        if persons == []:  # no person's rows changed (id_map's did, or a visit no row names)
            return stored, persons
        tallies, written = _tallies(spark, locator, persons, spans())
        before = _summed(within(read_table(spark, locator, "dq_tally"), "tally_key", persons))
        after = _summed(tallies)
        totals = {counter: count for counter in stored.keys() | after.keys()
                  if (count := stored.get(counter, 0) - before.get(counter, 0) + after.get(counter, 0)) != 0}
        if not _repeats(totals) and not _held_beyond(spark, locator, written, after):
            _store(spark, locator, tallies, persons, totals)
            return totals, persons
        log.info("quality: a key value is held twice: counting every person")
    tallies, _ = _tallies(spark, locator, None, spans())
    totals = _summed(tallies)
    overwrite(locator, "dq_tally", tallies.unionByName(_total_row(spark, totals)))
    return totals, None


def run(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str,
        changes: Changes | None = None) -> StageCounts:
    """Run every check, append the results to dq_result; raise QualityError when a fatal one failed."""
    totals, persons = _counted(spark, locator, changes)
    results = _results(totals, not has_rows(_concept_table(spark, locator)))
    now = dt.datetime.now(dt.UTC)
    rows = [(run_id, now, r.control.check, r.control.level, r.control.table, r.control.field, r.control.concept_id,
             r.control.unit_concept_id, r.violated, r.checked, round(r.percent, 4), r.control.threshold,
             r.control.severity, r.fatal, r.status, r.note) for r in results]
    append(locator, "dq_result", spark.createDataFrame(rows, TABLES["dq_result"].schema))
    failed = [r for r in results if r.status == "failed"]
    for result in failed:
        log.warning("quality: %s failed: %d of %d rows (%.2f%% > %.1f%%, %s)", result.name, result.violated,
                    result.checked, result.percent, result.control.threshold, result.control.severity)
    fatal = [r for r in failed if r.fatal]
    if fatal:
        names = ", ".join(r.name for r in fatal)
        raise QualityError(f"{len(fatal)} fatal quality check(s) failed: {names}; see {locator.where('dq_result')}")
    return {"checks": len(results), "failed": len(failed),
            "not_evaluated": sum(r.status == "not_evaluated" for r in results),
            "persons counted": "all" if persons is None else key_count(persons)}


#: The DataQualityDashboard's threshold-file columns that the imaging tables' checks fill.
_DQD_FIELD_COLUMNS = ("cdmTableName", "cdmFieldName", "isRequired", "isRequiredThreshold", "cdmDatatype",
                      "cdmDatatypeThreshold", "isPrimaryKey", "isPrimaryKeyThreshold", "isForeignKey",
                      "isForeignKeyThreshold", "fkTableName", "fkFieldName", "fkDomain", "fkDomainThreshold",
                      "isStandardValidConcept", "isStandardValidConceptThreshold", "measureValueCompleteness",
                      "measureValueCompletenessThreshold", "plausibleValueLow", "plausibleValueLowThreshold",
                      "plausibleValueHigh", "plausibleValueHighThreshold", "plausibleTemporalAfter",
                      "plausibleTemporalAfterTableName", "plausibleTemporalAfterFieldName",
                      "plausibleTemporalAfterThreshold", "plausibleAfterBirth", "plausibleAfterBirthThreshold",
                      "plausibleBeforeDeath", "plausibleBeforeDeathThreshold", "withinVisitDates",
                      "withinVisitDatesThreshold", "runForCohort")


def export_dqd_thresholds(folder: str | Path) -> list[Path]:
    """Write the imaging tables' checks as DataQualityDashboard field- and table-level threshold CSVs.

    A site appends these rows to the DataQualityDashboard's own files (fieldCheckThresholdLoc,
    tableCheckThresholdLoc) to run the official tool on image_occurrence and image_feature.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    fields: dict[tuple[str, str], dict[str, str]] = {}
    for control in controls():
        if control.table not in _OWN_TABLES or control.field is None or control.check == "isUnique":
            continue
        if control.params.get("fk_table") == _PAIR_KEY:
            continue  # a pair of fields: the DataQualityDashboard has no such check
        row = fields.setdefault((control.table, control.field), {
            "cdmTableName": control.table.upper(), "cdmFieldName": control.field, "runForCohort": "Yes"})
        row[control.check] = "integer" if control.check == "cdmDatatype" else "Yes"
        row[f"{control.check}Threshold"] = f"{control.threshold:g}"
        extra = {"fk_table": "fkTableName", "fk_field": "fkFieldName", "fk_domain": "fkDomain",
                 "after_table": "plausibleTemporalAfterTableName", "after_field": "plausibleTemporalAfterFieldName"}
        for key, column in extra.items():
            if key in control.params:
                row[column] = control.params[key].upper() if key in ("fk_table", "fk_field", "after_table") \
                    else control.params[key]
        if control.check == "fkDomain":
            row["fkDomain"] = control.params["fk_domain"]
        if control.check in ("plausibleValueLow", "plausibleValueHigh"):
            bound = control.params.get("value_low") or control.params.get("value_high") or ""
            row[control.check] = "DATEADD(dd,1,GETDATE())" if bound == "today+1" else f"'{bound}'"
    field_path, table_path = out / "mi_cdm_Field_Level.csv", out / "mi_cdm_Table_Level.csv"
    with field_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, _DQD_FIELD_COLUMNS, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(fields.values())
    with table_path.open("w", newline="", encoding="utf-8") as handle:
        table_writer = csv.writer(handle, lineterminator="\n")
        table_writer.writerow(["cdmTableName", "schema", "isRequired", "conceptPrefix", "measurePersonCompleteness",
                         "measurePersonCompletenessThreshold", "measureConditionEraCompleteness",
                         "measureConditionEraCompletenessThreshold"])
        table_writer.writerows([table.upper(), "CDM", "No", "", "No", "", "No", ""] for table in _OWN_TABLES)
    return [field_path, table_path]
