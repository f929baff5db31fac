"""Quality checks: the DataQualityDashboard's checks on the demo output; a broken table fails the right one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from micdm import quality
from micdm.errors import QualityError
from micdm.tables import overwrite, read_table

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
