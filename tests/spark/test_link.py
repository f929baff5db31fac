"""Linkage rules on small hand-built cases: each rule, its window edges and its tie-breaks."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from micdm.link import LinkInputs, link_studies, person_key, studies_to_relink
from micdm.tables import within

D = dt.date(2024, 3, 10)
SERIES = ("series_instance_uid string, study_instance_uid string, patient_id string, issuer_of_patient_id string, "
          "accession_number string, modality string, image_date date")
PERSONS = "patient_id string, issuer_of_patient_id string, person_id int"
PROCEDURES = ("procedure_occurrence_id int, person_id int, procedure_date date, procedure_concept_id int, "
              "accession_number string")
CT, MR = 4300757, 4013636


def _inputs(spark, series, procedures, persons=None) -> LinkInputs:
    persons = persons if persons is not None else [("P1", None, 1), ("P2", None, 2)]
    return LinkInputs(
        series=spark.createDataFrame(series, SERIES),
        persons=spark.createDataFrame(persons, PERSONS),
        procedures=spark.createDataFrame(procedures, PROCEDURES),
        compatible=spark.createDataFrame([("CT", CT), ("MR", MR)], "modality string, procedure_concept_id int"),
    )


def _links(spark, series, procedures, window_days=0, persons=None):
    result = link_studies(_inputs(spark, series, procedures, persons), window_days)
    return result.select("study_instance_uid", "person_id", "procedure_occurrence_id", "link_rule")


def _expected(spark, rows):
    return spark.createDataFrame(
        rows, "study_instance_uid string, person_id int, procedure_occurrence_id int, link_rule string")


def test_accession_rule_needs_the_same_person(spark) -> None:
    series = [("s1", "st1", "P1", None, "ACC1", "CT", D), ("s2", "st2", "P2", None, "ACC1", "CT", D)]
    procedures = [(10, 1, D + dt.timedelta(days=30), MR, "ACC1")]  # far in time, other modality: still accession
    assert_df_equality(_links(spark, series, procedures),
                       _expected(spark, [("st1", 1, 10, "accession"), ("st2", 2, None, None)]),
                       ignore_row_order=True, ignore_nullable=True)


def test_accession_ties_go_to_the_nearest_date_then_the_lowest_id(spark) -> None:
    series = [("s1", "st1", "P1", None, "ACC1", "CT", D), ("s2", "st2", "P1", None, "ACC2", "CT", D)]
    procedures = [(12, 1, D + dt.timedelta(days=3), CT, "ACC1"), (11, 1, D + dt.timedelta(days=1), CT, "ACC1"),
                  (22, 1, D, CT, "ACC2"), (21, 1, D, CT, "ACC2")]
    assert_df_equality(_links(spark, series, procedures),
                       _expected(spark, [("st1", 1, 11, "accession"), ("st2", 1, 21, "accession")]),
                       ignore_row_order=True, ignore_nullable=True)


@pytest.mark.parametrize(("window_days", "offset_days", "links"), [
    (0, 0, True), (0, 1, False), (0, -1, False), (1, 1, True), (1, -1, True), (1, 2, False), (3, -3, True),
])
def test_window_edges(spark, window_days: int, offset_days: int, links: bool) -> None:
    series = [("s1", "st1", "P1", None, None, "CT", D)]
    procedures = [(10, 1, D + dt.timedelta(days=offset_days), CT, None)]
    expected = [("st1", 1, 10, "window")] if links else [("st1", 1, None, None)]
    assert_df_equality(_links(spark, series, procedures, window_days), _expected(spark, expected),
                       ignore_nullable=True)


def test_window_picks_the_nearest_then_the_lowest_id_and_needs_a_compatible_concept(spark) -> None:
    series = [("s1", "st1", "P1", None, None, "CT", D), ("s2", "st2", "P2", None, None, "CT", D)]
    procedures = [
        (30, 1, D + dt.timedelta(days=2), CT, None), (31, 1, D - dt.timedelta(days=1), CT, None),  # nearest: 31
        (5, 1, D, MR, None),  # same day, lowest id, but an MR procedure
        (41, 2, D + dt.timedelta(days=1), CT, None), (40, 2, D - dt.timedelta(days=1), CT, None),  # tie: 40
    ]
    assert_df_equality(_links(spark, series, procedures, window_days=2),
                       _expected(spark, [("st1", 1, 31, "window"), ("st2", 2, 40, "window")]),
                       ignore_row_order=True, ignore_nullable=True)


def test_window_skips_a_procedure_another_study_claimed_by_accession(spark) -> None:
    series = [("a", "stA", "P1", None, "ACC1", "CT", D), ("b", "stB", "P1", None, None, "CT", D)]
    procedures = [(10, 1, D, CT, "ACC1")]
    assert_df_equality(_links(spark, series, procedures),
                       _expected(spark, [("stA", 1, 10, "accession"), ("stB", 1, None, None)]),
                       ignore_row_order=True, ignore_nullable=True)


def test_a_changed_study_relinks_every_study_of_its_person_and_those_alone(spark) -> None:
    """stA arrives with the accession of procedure 10, which stB (filed under another PatientID of the same
    person) had by the window rule: stB must be linked again with it, P2's study need not be."""
    persons = [("P1", None, 1), ("P1-old", None, 1), ("P2", None, 2)]
    series = [("a", "stA", "P1", None, "ACC1", "CT", D), ("b", "stB", "P1-old", None, None, "CT", D),
              ("c", "stC", "P2", None, None, "CT", D), ("n", "stN", None, None, None, "CT", D)]
    inputs = _inputs(spark, series, [(10, 1, D, CT, "ACC1"), (20, 2, D, CT, None)], persons)
    changed = ["P1", "stA", "stGone", "stN"]  # listed, as changed_keys gives them; stGone: deleted
    relinked = studies_to_relink(inputs.series, inputs.persons, changed)
    assert isinstance(relinked, list) and set(relinked) >= {"stA", "stB", "stN", "stGone"}
    assert "stC" not in relinked
    assert studies_to_relink(inputs.series, inputs.persons, None) is None  # None: every study
    scoped = LinkInputs(within(inputs.series, "study_instance_uid", relinked), inputs.persons, inputs.procedures,
                        inputs.compatible)
    columns = ("study_instance_uid", "person_id", "procedure_occurrence_id", "link_rule")
    assert_df_equality(link_studies(scoped, 0).select(*columns),
                       link_studies(inputs, 0).where(F.col("study_instance_uid") != "stC").select(*columns),
                       ignore_row_order=True, ignore_nullable=True)
    assert {r.study_instance_uid: r.procedure_occurrence_id for r in link_studies(scoped, 0).collect()} == \
        {"stA": 10, "stB": None, "stN": None}


def test_every_series_of_a_study_shares_one_link_and_the_imaging_modality_decides(spark) -> None:
    series = [("ct", "st1", "P1", None, None, "CT", D), ("sr", "st1", "P1", None, None, "SR", D),
              ("seg", "st1", "P1", None, None, "SEG", D)]
    procedures = [(10, 1, D, CT, None)]
    links = link_studies(_inputs(spark, series, procedures), 0)
    assert [(r.modality, r.procedure_occurrence_id) for r in links.collect()] == [("CT", 10)]


def test_persons_unknown_ambiguous_and_issuer_specific(spark) -> None:
    persons = [("P1", None, 1), ("P1", "HOSP_B", 7), ("P9", None, 3), ("P9", None, 4)]
    series = [("s1", "st1", "P1", "HOSP_A", None, "CT", D), ("s2", "st2", "P1", "HOSP_B", None, "CT", D),
              ("s3", "st3", "P9", None, None, "CT", D), ("s4", "st4", "NOBODY", None, None, "CT", D)]
    links = link_studies(_inputs(spark, series, [], persons), 0)
    got = {r.study_instance_uid: (r.person_id, r.person_matches) for r in links.collect()}
    assert got == {"st1": (1, 1), "st2": (7, 1), "st3": (None, 2), "st4": (None, 0)}


def test_person_key_template(spark) -> None:
    frame = spark.createDataFrame([("123", "H1"), ("456", None)], "patient_id string, issuer string")
    keys = frame.select(person_key("{issuer}:{patient_id}", F.col("patient_id"), F.col("issuer")).alias("k"),
                        person_key("{patient_id}", F.col("patient_id"), F.col("issuer")).alias("plain"))
    assert [tuple(r) for r in keys.collect()] == [("H1:123", "123"), (None, "456")]
