"""Quality checks: the DataQualityDashboard's checks on the demo output; a broken table fails the right one."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from micdm import quality
from micdm.errors import QualityError
from micdm.pipeline import run_stage
from micdm.report import latest_run_rows
from micdm.tables import append, delta_table, overwrite, read_table

REPO = Path(__file__).resolve().parents[2]


def test_demo_output_passes_every_fatal_check(spark, demo) -> None:
    """The quality stage of the demo's pipeline run, read from dq_result (the demo is not run again)."""
    locator = demo["locator"]
    counts = {r.stage: r.counts for r in demo["first"]}["quality"]
    results = read_table(spark, locator, "dq_result").toPandas()
    results = results[results["checked_at"] == results["checked_at"].max()]
    assert len(results) == counts["checks"] > 200
    assert results[results["fatal"]]["status"].isin(["passed", "not_evaluated"]).all()
    checks = set(results["check_name"])
    assert {"isRequired", "isPrimaryKey", "isForeignKey", "cdmDatatype", "isStandardValidConcept", "fkDomain",
            "measureValueCompleteness", "standardConceptRecordCompleteness", "sourceValueCompleteness",
            "plausibleValueLow", "plausibleAfterBirth", "withinVisitDates", "measurePersonCompleteness",
            "isUnique"} <= checks
    evaluated = results[results["status"] != "not_evaluated"]
    assert (evaluated["rows_checked"] > 0).all(), "no check passes with nothing checked"
    feature_links = results[(results["table_name"] == "image_feature") & (results["field_name"] == "table_row_id")
                            & (results["check_name"] == "isForeignKey")].iloc[0]
    assert feature_links["rows_checked"] > 0 and feature_links["rows_violated"] == 0
    assert feature_links["status"] == "passed"


def test_a_dangling_person_fails_the_foreign_key_check(spark, empty) -> None:
    settings, locator = empty
    day = dt.date(2024, 1, 2)
    overwrite(locator, "image_occurrence", spark.createDataFrame(
        [(1, 99, 5, None, 0, None, "/data/s1", day, "1.2", "1.2.3", "CT"),
         (2, 99, 5, None, 0, None, "/data/s2", dt.date(1900, 1, 1), "1.2", "1.2.4", "CT")],
        "image_occurrence_id int, person_id int, procedure_occurrence_id int, visit_occurrence_id int, "
        "anatomic_site_concept_id int, wadors_uri string, local_path string, image_occurrence_date date, "
        "image_study_uid string, image_series_uid string, modality string"))
    with pytest.raises(QualityError, match=r"isForeignKey image_occurrence\.person_id"):
        quality.run(spark, locator, settings, "broken")
    results = read_table(spark, locator, "dq_result").toPandas().set_index(["check_name", "table_name", "field_name"])
    person = results.loc[("isForeignKey", "image_occurrence", "person_id")]
    assert (person["rows_violated"], person["rows_checked"], person["status"]) == (2, 2, "failed")
    dates = results.loc[("plausibleValueLow", "image_occurrence", "image_occurrence_date")]
    assert (dates["rows_violated"], dates["pct_violated"], dates["fatal"], dates["status"]) == (
        1, 50.0, False, "failed")
    empty = results.loc[("isPrimaryKey", "measurement", "measurement_id")]
    assert (empty["rows_checked"], empty["status"]) == (0, "not_evaluated")


def test_only_the_rows_micdm_wrote_are_checked_in_the_sites_tables(spark, empty) -> None:
    """A site's own procedure_occurrence rows are the site's business: micdm checks the ids it allocated."""
    settings, locator = empty
    day = dt.date(2024, 1, 2)
    overwrite(locator, "procedure_occurrence", spark.createDataFrame(
        [(7, 99, 4019, day, 32817), (8, 98, 4019, day, 32817)],  # neither person exists
        "procedure_occurrence_id int, person_id int, procedure_concept_id int, procedure_date date, "
        "procedure_type_concept_id int"))
    overwrite(locator, "id_map", spark.createDataFrame(
        [("procedure_occurrence", "1.2.840.99", 8, dt.datetime(2024, 1, 2))],
        "namespace string, natural_key string, id int, assigned_at timestamp"))
    with pytest.raises(QualityError, match=r"isForeignKey procedure_occurrence\.person_id"):
        quality.run(spark, locator, settings, "site-rows")
    results = read_table(spark, locator, "dq_result").toPandas().set_index(["check_name", "table_name", "field_name"])
    person = results.loc[("isForeignKey", "procedure_occurrence", "person_id")]
    assert (person["rows_violated"], person["rows_checked"]) == (1, 1)  # row 8, micdm's; not row 7, the site's
    assert results.loc[("isPrimaryKey", "procedure_occurrence", "procedure_occurrence_id")]["rows_checked"] == 1


def test_foreign_keys_into_the_sites_tables_count_as_the_dashboard_counts(spark, empty) -> None:
    """A lookup into a site table reads only the span of ids the field names, yet any row there counts: a
    feature on the site's own measurement row (id 3) is linked, one on an id nobody holds is not."""
    settings, locator = empty
    block = settings.storage.site_id_block("measurement")
    day = dt.date(2024, 1, 2)
    overwrite(locator, "measurement", spark.createDataFrame(
        [(3, 5, 0, day, 32817), (4, 5, 0, day, 32817), (block, 5, 0, day, 32817)],
        "measurement_id int, person_id int, measurement_concept_id int, measurement_date date, "
        "measurement_type_concept_id int"))
    measurement = quality.table_concept_id("measurement")
    overwrite(locator, "image_feature", spark.createDataFrame(
        [(feature, 5, 1, measurement, row, 0, 32817) for feature, row in enumerate((3, block, block + 7, 2))],
        "image_feature_id int, person_id int, image_occurrence_id int, table_concept_id int, table_row_id int, "
        "image_feature_concept_id int, image_feature_type_concept_id int"))
    with pytest.raises(QualityError):
        quality.run(spark, locator, settings, "links")
    results = read_table(spark, locator, "dq_result").toPandas().set_index(["check_name", "table_name", "field_name"])
    links = results.loc[("isForeignKey", "image_feature", "table_row_id")]
    assert (links["rows_violated"], links["rows_checked"]) == (2, 4)  # ids block + 7 and 2 are nobody's
    occurrences = results.loc[("isForeignKey", "image_feature", "image_occurrence_id")]
    assert (occurrences["rows_violated"], occurrences["rows_checked"]) == (4, 4)  # image_occurrence is empty


def test_concept_checks_count_what_the_dashboards_sql_counts(spark, empty, shared: Path, tmp_path: Path) -> None:
    """Measurements naming a good concept, one of another domain, a non-standard one, an invalid one, concept 0,
    an id CONCEPT lacks and none, one of them under an id another row holds too: micdm's counts of every
    concept check and of the primary key are the ones DQD's own SQL gives."""
    pytest.importorskip("duckdb", reason="the DataQualityDashboard runner needs duckdb, deltalake and sqlglot")
    settings, locator = empty
    day = dt.date(2020, 1, 1)
    concepts = [(0, "No matching concept", "Metadata", "None", "Undefined", None, None),
                (3000001, "a measurement", "Measurement", "LOINC", "Lab Test", "S", None),
                (3000002, "an observation", "Observation", "LOINC", "Clinical Observation", "S", None),
                (3000003, "not standard", "Measurement", "LOINC", "Lab Test", None, None),
                (3000004, "deprecated", "Measurement", "LOINC", "Lab Test", "S", "D"),
                (8582, "centimeter", "Unit", "UCUM", "Unit", "S", None),
                (32817, "EHR", "Type Concept", "Type Concept", "Type Concept", "S", None)]
    overwrite(locator, "concept", spark.createDataFrame(
        [(cid, name, domain, vocabulary, kind, standard, cid and str(cid), day, day, invalid)
         for cid, name, domain, vocabulary, kind, standard, invalid in concepts],
        "concept_id int, concept_name string, domain_id string, vocabulary_id string, concept_class_id string, "
        "standard_concept string, concept_code string, valid_start_date date, valid_end_date date, "
        "invalid_reason string"))
    overwrite(locator, "person", spark.createDataFrame([(1, 8507, 1950, 0, 0)], "person_id int, "
                                                       "gender_concept_id int, year_of_birth int, race_concept_id int, "
                                                       "ethnicity_concept_id int"))
    named = [3000001, 3000002, 3000003, 3000004, 0, 4999999, 3000001]
    units = [8582, 3000001, None, 3000004, 8582, 0, 4999999]
    repeated_id = 2
    overwrite(locator, "measurement", spark.createDataFrame(
        [(index + 1, 1, concept, day, 32817, unit, 1.0)
         for index, (concept, unit) in enumerate(zip(named, units, strict=True))]
        + [(repeated_id, 1, 3000001, day, 32817, 8582, 2.0)],
        "measurement_id int, person_id int, measurement_concept_id int, measurement_date date, "
        "measurement_type_concept_id int, unit_concept_id int, value_as_number double"))
    overwrite(locator, "id_map", spark.createDataFrame(
        [("measurement", f"key{index}", index + 1, dt.datetime(2024, 1, 2)) for index in range(len(named))],
        "namespace string, natural_key string, id int, assigned_at timestamp"))
    with pytest.raises(QualityError, match=r"isForeignKey measurement\.measurement_concept_id"):
        quality.run(spark, locator, settings, "concepts")

    copy = tmp_path / "dqd"
    for name in ("measurement", "person", "concept"):
        read_table(spark, locator, name).write.format("delta").save(str(copy / name))
    report = tmp_path / "dqd.json"
    subprocess.run([sys.executable, str(shared / "tools" / "dqd" / "run_dqd.py"), "--delta-root", str(copy),
                    "--tables", "measurement", "--json", str(report)], check=True, capture_output=True, timeout=600)
    theirs = {(c["checkName"], (c["cdmFieldName"] or "").lower()): c for c in json.loads(report.read_text())["checks"]
              if not c.get("conceptId")}
    ours = read_table(spark, locator, "dq_result").where(
        "table_name = 'measurement' AND (check_name IN ('isForeignKey', 'fkDomain', 'isStandardValidConcept') "
        "AND field_name IN ('measurement_concept_id', 'unit_concept_id', 'measurement_type_concept_id') "
        "OR check_name = 'isPrimaryKey')").collect()
    compared = {(row.check_name, row.field_name): (row.rows_violated, row.rows_checked) for row in ours}
    assert compared == {key: (theirs[key]["numViolatedRows"], theirs[key]["numDenominatorRows"]) for key in compared}
    assert len(compared) == 10 and sum(violated > 0 for violated, _ in compared.values()) >= 6, compared
    assert compared[("isPrimaryKey", "measurement_id")] == (2, len(named) + 1)


_OCCURRENCE = ("image_occurrence_id int, person_id int, procedure_occurrence_id int, visit_occurrence_id int, "
               "anatomic_site_concept_id int, wadors_uri string, local_path string, image_occurrence_date date, "
               "image_study_uid string, image_series_uid string, modality string")


def _three_persons(spark, locator, day: dt.date) -> None:
    """Persons 1, 2 and 3 in the site's CDM, each with a procedure (id 10 above the person's) on ``day``."""
    overwrite(locator, "person", spark.createDataFrame(
        [(person, 8507, 1950, 0, 0) for person in (1, 2, 3)],
        "person_id int, gender_concept_id int, year_of_birth int, race_concept_id int, ethnicity_concept_id int"))
    overwrite(locator, "procedure_occurrence", spark.createDataFrame(
        [(person + 10, person, 4019, day, 32817) for person in (1, 2, 3)],
        "procedure_occurrence_id int, person_id int, procedure_concept_id int, procedure_date date, "
        "procedure_type_concept_id int"))


def _results_as_counted(spark, locator) -> set[tuple]:
    """The latest run's results in dq_result, as comparable tuples."""
    return {(row.check_name, row.table_name, row.field_name, row.concept_id, row.rows_violated, row.rows_checked,
             row.status) for row in latest_run_rows(read_table(spark, locator, "dq_result"), "checked_at").collect()}


def _results_of_everyone(spark, locator) -> set[tuple]:
    return {(r.control.check, r.control.table, r.control.field, r.control.concept_id, r.violated, r.checked, r.status)
            for r in quality.evaluate(spark, locator)}


def test_a_run_counts_again_the_changed_persons_and_those_dated_after_tomorrow(spark, empty, monkeypatch) -> None:
    """After a first run counts everyone, a run counts the person whose row changed and the one whose row is
    dated after tomorrow (it passes once its day comes), and gives what a count of everyone gives, with the
    persons as a list or, as beyond 10,000 of them, a frame; a key value another person's row holds too makes
    it count everyone, and the key check fails."""
    settings, locator = empty
    day, later = dt.date(2024, 1, 2), dt.date.today() + dt.timedelta(days=30)
    _three_persons(spark, locator, day)

    def occurrence(row_id: int, person: int, when: dt.date, series: str) -> tuple:
        return (row_id, person, person + 10, None, 0, None, f"/data/{series}", when, "1.2", series, "CT")

    overwrite(locator, "image_occurrence", spark.createDataFrame(
        [occurrence(1, 1, day, "1.2.1"), occurrence(2, 2, later, "1.2.2"), occurrence(3, 3, day, "1.2.3")],
        _OCCURRENCE))
    assert run_stage(spark, settings, "quality").counts["persons counted"] == "all"
    for framed in (False, True):
        append(locator, "image_occurrence", spark.createDataFrame(
            [occurrence(4 + framed, 3, day, f"1.2.{4 + framed}")], _OCCURRENCE))
        with monkeypatch.context() as keys:
            if framed:
                keys.setattr("micdm.changes.listed_or_kept", lambda found: found.localCheckpoint())
            counts = run_stage(spark, settings, "quality").counts
        assert counts["persons counted"] == 2, counts  # person 3, whose row is new, and person 2, dated later
        counted = _results_as_counted(spark, locator)
        assert counted == _results_of_everyone(spark, locator)
    late = next(result for result in counted if result[:3] == ("plausibleValueHigh", "image_occurrence",
                                                              "image_occurrence_date"))
    assert late[4:6] == (1, 5)

    append(locator, "image_occurrence", spark.createDataFrame([occurrence(1, 3, day, "1.2.6")], _OCCURRENCE))
    with pytest.raises(QualityError, match=r"isPrimaryKey image_occurrence\.image_occurrence_id"):
        run_stage(spark, settings, "quality")
    counted = _results_as_counted(spark, locator)
    assert counted == _results_of_everyone(spark, locator)
    key = next(result for result in counted if result[:3] == ("isPrimaryKey", "image_occurrence",
                                                             "image_occurrence_id"))
    assert key[4:7] == (2, 6, "failed")  # person 1's row and person 3's, though person 1 changed nothing


def test_a_changed_visit_counts_again_the_persons_whose_rows_name_it(spark, empty) -> None:
    """A visit decides withinVisitDates and the foreign key of the rows naming it, whoever its own person is: a
    visit moved counts again the persons of those rows alone, a reload of the same visits counts nobody, and a
    visit deleted fails its rows' foreign key; each time the results are what a count of everyone gives."""
    settings, locator = empty
    day = dt.date(2024, 1, 2)
    _three_persons(spark, locator, day)
    visits = spark.createDataFrame(
        [(100, 1, 9202, day, day, 32817), (200, 2, 9202, day, day, 32817)],
        "visit_occurrence_id int, person_id int, visit_concept_id int, visit_start_date date, visit_end_date date, "
        "visit_type_concept_id int")
    overwrite(locator, "visit_occurrence", visits)
    # person 3's series was taken during person 1's visit (a mother's and a newborn's, say)
    overwrite(locator, "image_occurrence", spark.createDataFrame(
        [(person, person, person + 10, visit, 0, None, f"/data/{person}", day, "1.2", f"1.2.{person}", "CT")
         for person, visit in ((1, 100), (2, 200), (3, 100))], _OCCURRENCE))
    assert run_stage(spark, settings, "quality").counts["persons counted"] == "all"

    delta_table(spark, locator, "visit_occurrence").update(
        "visit_occurrence_id = 100", {"visit_start_date": "date_add(visit_start_date, 30)",
                                      "visit_end_date": "date_add(visit_end_date, 30)"})
    assert run_stage(spark, settings, "quality").counts["persons counted"] == 2  # persons 1 and 3, not 2
    counted = _results_as_counted(spark, locator)
    assert counted == _results_of_everyone(spark, locator)
    within = next(result for result in counted
                  if result[:3] == ("withinVisitDates", "image_occurrence", "image_occurrence_date"))
    assert within[4:7] == (2, 3, "failed")

    overwrite(locator, "visit_occurrence", read_table(spark, locator, "visit_occurrence").localCheckpoint())
    assert run_stage(spark, settings, "quality").counts["persons counted"] == 0  # the same rows again
    assert _results_as_counted(spark, locator) == counted

    delta_table(spark, locator, "visit_occurrence").delete("visit_occurrence_id = 200")
    with pytest.raises(QualityError, match=r"isForeignKey image_occurrence\.visit_occurrence_id"):
        run_stage(spark, settings, "quality")
    assert _results_as_counted(spark, locator) == _results_of_everyone(spark, locator)
