"""The link and occurrence stages on Delta tables: policies, exceptions, visits, crosswalks, anatomy, ids."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from micdm import link, occurrence
from micdm.config import Settings, load_settings
from micdm.ids import assign_ids
from micdm.publish import publish
from micdm.tables import TableLocator, init_tables, overwrite, read_table

from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]
D = dt.date(2024, 3, 10)
CT = 4300757
SERIES = ("series_instance_uid string, study_instance_uid string, patient_id string, issuer_of_patient_id string, "
          "accession_number string, modality string, image_date date, body_part_examined string, "
          "anatomic_region_code string, local_path string, instance_count int, updated_at timestamp")
#: study -> (patient, accession, modality, date); every study has series <study>.1 (and C has <study>.2)
STUDIES = {
    "A": ("P1", "ACC1", "CT", D),          # accession -> procedure 10
    "B": ("P1", None, "CT", D),            # window -> procedure 11
    "C": ("P1", None, "MR", D),            # nothing matches -> created, or an exception
    "D": ("NOBODY", "ACC9", "CT", D),      # person_not_found
    "E": ("P1", None, "CT", None),         # no_image_date
}


def _settings(tmp_path, *overrides: str) -> Settings:
    return load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={tmp_path / 'warehouse'}", *overrides])


def _load(spark, locator: TableLocator) -> None:
    new_tables(spark, locator)
    now = dt.datetime(2024, 4, 1)
    series = []
    for study, (patient, accession, modality, date) in STUDIES.items():
        for number in (1, 2) if study == "C" else (1,):
            series.append((f"{study}.{number}", study, patient, "H", accession, modality, date, "Chest",
                           None, f"/data/{study}/{number}", 3, now))
    overwrite(locator, "dicom_series", spark.createDataFrame(series, SERIES))
    overwrite(locator, "person", spark.createDataFrame(
        [(1, 8507, 1950, 0, 0, "P1")],
        "person_id int, gender_concept_id int, year_of_birth int, race_concept_id int, ethnicity_concept_id int, "
        "person_source_value string"))
    overwrite(locator, "procedure_occurrence", spark.createDataFrame(
        [(10, 1, CT, D, 32817, 100, "ACC1"), (11, 1, CT, D, 32817, 101, None)],
        "procedure_occurrence_id int, person_id int, procedure_concept_id int, procedure_date date, "
        "procedure_type_concept_id int, visit_occurrence_id int, procedure_source_value string"))
    overwrite(locator, "visit_occurrence", spark.createDataFrame(
        [(100, 1, 9202, D - dt.timedelta(days=1), D - dt.timedelta(days=1), 32817),  # ends before the images
         (102, 1, 9201, D, D + dt.timedelta(days=3), 32817)],
        "visit_occurrence_id int, person_id int, visit_concept_id int, visit_start_date date, visit_end_date date, "
        "visit_type_concept_id int"))


def _links(spark, locator) -> dict[str, tuple]:
    rows = read_table(spark, locator, "series_link").collect()
    return {r.image_series_uid: (r.person_id, r.procedure_occurrence_id, r.visit_occurrence_id, r.link_rule,
                                 r.exception_reason) for r in rows}


def test_rules_visits_and_created_procedures(spark, tmp_path) -> None:
    settings = _settings(tmp_path)
    locator = TableLocator.of(settings)
    _load(spark, locator)
    # the site's vocabulary holds the MR procedure concept shipped for the modality: created procedures take it
    overwrite(locator, "concept", spark.createDataFrame(
        [(4013636, "MRI", "Procedure", "SNOMED", "Procedure", "S", "113091000", D, D, None)],
        read_table(spark, locator, "concept").schema))
    counts = link.run(spark, locator, settings, "run-1")
    links = _links(spark, locator)
    created = links["C.1"][1]
    assert created == 2_000_000_000, "created ids come from micdm's block, far above the site's"
    assert links == {
        "A.1": (1, 10, 102, "accession", None),   # the visit containing the date beats the procedure's visit
        "B.1": (1, 11, 102, "window", None),
        "C.1": (1, created, 102, "created", None),
        "C.2": (1, created, 102, "created", None),  # one procedure per study, shared by its series
        "D.1": (None, None, None, None, "person_not_found"),
        "E.1": (1, None, None, None, "no_image_date"),
    }
    # study C (MR) got a procedure on a day the site has (CT) procedures for the same person: a warning
    assert counts == {"accession": 1, "created": 2, "window": 1, "no_image_date": 1, "person_not_found": 1,
                      "created_on_site_procedure_day": 1, "studies redone": "all"}
    made = read_table(spark, locator, "procedure_occurrence").where(F.col("procedure_occurrence_id") == created)
    assert [(r.procedure_concept_id, r.procedure_date, r.visit_occurrence_id, r.procedure_source_value)
            for r in made.collect()] == [(4013636, D, 102, "C")]
    exceptions = {(r.image_series_uid, r.image_study_uid, r.reason) for r in
                  read_table(spark, locator, "link_exception").collect()}
    assert exceptions == {("D.1", "D", "person_not_found"), ("E.1", "E", "no_image_date")}
    report = {(r.kind, r.name): (r.series, r.studies) for r in read_table(spark, locator, "link_report").collect()}
    assert report == {("rule", "accession"): (1, 1), ("rule", "window"): (1, 1), ("rule", "created"): (2, 1),
                      ("exception", "person_not_found"): (1, 1), ("exception", "no_image_date"): (1, 1),
                      ("warning", "created_on_site_procedure_day"): (0, 1)}

    link.run(spark, locator, settings, "run-2")
    assert _links(spark, locator) == links, "a re-run links the same way, re-using the created procedure"
    assert read_table(spark, locator, "procedure_occurrence").count() == 3
    assert read_table(spark, locator, "link_report").select("run_id").distinct().count() == 2


def test_exception_policy_and_crosswalks(spark, tmp_path) -> None:
    settings = _settings(tmp_path, "occurrence.missing_procedure=exception",
                         "occurrence.person_crosswalk=mrn_person", "occurrence.accession_crosswalk=order_procedure")
    locator = TableLocator.of(settings)
    _load(spark, locator)
    spark.createDataFrame([("NOBODY", "H", 1), ("NOBODY", "OTHER", 2)],
                          "patient_id string, issuer_of_patient_id string, person_id int").write.format(
        "delta").save(str(tmp_path / "warehouse" / "micdm" / "mrn_person"))
    spark.createDataFrame([("ACC9", 11)], "accession_number string, procedure_occurrence_id int").write.format(
        "delta").save(str(tmp_path / "warehouse" / "micdm" / "order_procedure"))
    link.run(spark, locator, settings, "run-1")
    links = _links(spark, locator)
    # Only NOBODY (issuer H) is in the crosswalk: P1's studies have no person now.
    assert links["D.1"][:4] == (1, 11, 102, "accession")
    assert {uid: link[4] for uid, link in links.items() if uid != "D.1"} == dict.fromkeys(
        ["A.1", "B.1", "C.1", "C.2", "E.1"], "person_not_found")
    assert read_table(spark, locator, "procedure_occurrence").count() == 2, "policy exception creates nothing"


def test_no_matching_procedure_is_an_exception_under_that_policy(spark, tmp_path) -> None:
    settings = _settings(tmp_path, "occurrence.missing_procedure=exception")
    locator = TableLocator.of(settings)
    _load(spark, locator)
    link.run(spark, locator, settings, "run-1")
    assert {r.image_series_uid: r.reason for r in read_table(spark, locator, "link_exception").collect()} == {
        "C.1": "no_matching_procedure", "C.2": "no_matching_procedure", "D.1": "person_not_found",
        "E.1": "no_image_date"}


def test_missing_crosswalk_is_a_config_error(spark, tmp_path) -> None:
    from micdm.errors import ConfigError

    settings = _settings(tmp_path, "occurrence.person_crosswalk=absent_table")
    locator = TableLocator.of(settings)
    _load(spark, locator)
    with pytest.raises(ConfigError, match="absent_table"):
        link.run(spark, locator, settings, "run-1")


def test_occurrence_anatomy_ids_uris_and_published_names(spark, tmp_path) -> None:
    settings = _settings(tmp_path, "occurrence.anatomy_vocabulary=site", "publish.mode=table",
                         "occurrence.wadors_root=http://pacs.example/dicom-web/")
    locator = TableLocator.of(settings)
    _load(spark, locator)
    # The site's vocabulary maps CHEST elsewhere than the shipped table, and knows one SNOMED region code.
    concept = ("concept_id int, concept_name string, domain_id string, vocabulary_id string, concept_class_id string, "
               "standard_concept string, concept_code string, valid_start_date date, valid_end_date date, "
               "invalid_reason string")
    overwrite(locator, "concept", spark.createDataFrame([
        (2128009999, "Chest", "Measurement", "DICOM", "DICOM Value Sets", None, "CHEST", D, D, None),
        (4118108, "Entire thorax", "Spec Anatomic Site", "SNOMED", "Body Structure", "S", "302551006", D, D, None),
        (4213162, "Lung structure", "Spec Anatomic Site", "SNOMED", "Body Structure", "S", "39607008", D, D, None),
    ], concept))
    overwrite(locator, "concept_relationship", spark.createDataFrame(
        [(2128009999, 4118108, "Maps to", D, D, None)],
        "concept_id_1 int, concept_id_2 int, relationship_id string, valid_start_date date, valid_end_date date, "
        "invalid_reason string"))
    series = read_table(spark, locator, "dicom_series").withColumn(
        "anatomic_region_code", F.when(F.col("series_instance_uid") == "B.1", F.lit("SCT:39607008")))
    overwrite(locator, "dicom_series", series.localCheckpoint())
    link.run(spark, locator, settings, "run-1")
    assert occurrence.run(spark, locator, settings, "run-1") == {"image_occurrence": 4}  # A.1, B.1, C.1, C.2
    rows = {r.image_series_uid: r for r in read_table(spark, locator, "image_occurrence").collect()}
    assert rows["A.1"].anatomic_site_concept_id == 4118108  # 'Chest' through the site's 'Maps to'
    assert rows["B.1"].anatomic_site_concept_id == 4213162  # the coded region wins over the text
    assert rows["A.1"].wadors_uri == "http://pacs.example/dicom-web/studies/A"
    ids = {uid: r.image_occurrence_id for uid, r in rows.items()}
    assert len(set(ids.values())) == 4

    publish(spark, locator, settings)
    published = TableLocator(dataclasses.replace(settings.storage, schema=settings.publish.schema))
    published_occurrence = read_table(spark, published, "image_occurrence")
    assert published_occurrence.columns[9] == "modality_concept_id" and "modality" not in published_occurrence.columns
    assert {r.image_series_uid: r.modality_concept_id for r in published_occurrence.collect()} == {
        "A.1": CT, "B.1": CT, "C.1": 4013636, "C.2": 4013636}
    feature = read_table(spark, published, "image_feature")
    assert feature.columns[5:7] == ["image_feature_event_field_concept_id", "image_feature_event_id"]

    # A re-run keeps every id; a series whose person leaves the CDM leaves image_occurrence (and comes back
    # with its old id).
    occurrence.run(spark, locator, settings, "run-1")
    assert {r.image_series_uid: r.image_occurrence_id for r in
            read_table(spark, locator, "image_occurrence").collect()} == ids
    overwrite(locator, "person", read_table(spark, locator, "person").where("person_id <> 1").localCheckpoint())
    link.run(spark, locator, settings, "run-2")
    assert occurrence.run(spark, locator, settings, "run-2") == {"image_occurrence": 0}
    overwrite(locator, "person", spark.createDataFrame(
        [(1, 8507, 1950, 0, 0, "P1")], "person_id int, gender_concept_id int, year_of_birth int, race_concept_id int, "
        "ethnicity_concept_id int, person_source_value string"))
    link.run(spark, locator, settings, "run-3")
    occurrence.run(spark, locator, settings, "run-1")
    assert {r.image_series_uid: r.image_occurrence_id for r in
            read_table(spark, locator, "image_occurrence").collect()} == ids


def test_id_overflow_is_refused_before_it_happens(spark, tmp_path) -> None:
    from micdm.errors import IdOverflowError
    from micdm.ids import MAX_ID

    locator = TableLocator(_settings(tmp_path).storage)
    init_tables(spark, locator, ["id_map"])
    keys = spark.createDataFrame([("a",), ("b",)], "natural_key string")
    with pytest.raises(IdOverflowError, match="would pass"):
        assign_ids(spark, locator, "image_occurrence", keys, floor=MAX_ID - 1)
    assert [r.id for r in assign_ids(spark, locator, "image_occurrence", keys.limit(1), floor=MAX_ID - 1)
            .collect()] == [MAX_ID]


def test_known_keys_keep_their_ids_and_new_keys_are_numbered_in_key_order(spark, tmp_path) -> None:
    from micdm.ids import assign_ids_by_namespace

    locator = TableLocator(_settings(tmp_path).storage)
    init_tables(spark, locator, ["id_map"])

    def keys(*names: str | None):
        return spark.createDataFrame([(name,) for name in names], "natural_key string")

    first = assign_ids_by_namespace(spark, locator, {"measurement": (keys("m2", "m1"), 100),
                                                     "image_feature": (keys("f1"), 0)})
    assert sorted(tuple(r) for r in first["measurement"].collect()) == [("m1", 101), ("m2", 102)]
    second = assign_ids_by_namespace(spark, locator, {"measurement": (keys("m3", "m1", None), 0),
                                                      "image_feature": (keys("f1", "f0"), 0)})
    returned = {(namespace, r.natural_key, r.id) for namespace, frame in second.items() for r in frame.collect()}
    assert returned == {("measurement", "m1", 101), ("measurement", "m3", 103), ("image_feature", "f1", 1),
                        ("image_feature", "f0", 2)}
    stored = {(r.namespace, r.natural_key, r.id) for r in read_table(spark, locator, "id_map").collect()}
    assert returned < stored and len(stored) == 5, "the ids returned are the ids id_map keeps"
