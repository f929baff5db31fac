"""Incremental runs end where a full rebuild ends: after each change to the export or to the site's CDM,
a pipeline run that does only what changed leaves every table as `--full-refresh` then rebuilds it."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pydicom
from pyspark.sql import functions as F

from micdm.config import load_settings
from micdm.pipeline import StageResult, run_pipeline, run_stage
from micdm.reports import is_report_or_segmentation
from micdm.synth import ALGORITHM_RESULTS, generate, load_site
from micdm.tables import TableLocator, append, delta_table, read_table

from support.snapshots import COMPARED, difference
from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]
HELD_BACK = "MRN000001"  # its files arrive in the first step
MISSING_PERSON = "MRN000005"  # patient index 5: the synthetic CDM lacks this person (see synth._case_of)
ONE_DAY_OFF = "procedure_one_day_off"  # patient index 4: micdm creates the study's procedure


def _versions(spark, locator) -> dict[str, int]:
    return {name: delta_table(spark, locator, name).history(1).first()["version"] for name in COMPARED}


def _rebuild_differences(spark, locator, settings) -> dict[str, tuple[int, int, int]]:
    """Run a full rebuild on the tables an incremental run has just left; what differs, by table."""
    versions = _versions(spark, locator)
    run_pipeline(spark, settings, full_refresh=True)
    found = {name: difference(spark.read.format("delta").option("versionAsOf", version).load(locator.path(name)),
                              read_table(spark, locator, name), name) for name, version in versions.items()}
    return {name: counts for name, counts in found.items() if any(counts)}


def _features_from(spark, locator, prefix: str) -> int:
    """Rows of image_feature, measurement and observation made from the features whose key starts so."""
    made = read_table(spark, locator, "id_map").where(F.col("natural_key").startswith(prefix))
    return sum(read_table(spark, locator, table).join(
        made.where(F.col("namespace") == table).select(F.col("id").alias(f"{table}_id")), f"{table}_id",
        "left_semi").count() for table in ("image_feature", "measurement", "observation"))


def _counts(results: list[StageResult]) -> dict[str, dict]:
    return {result.stage: result.counts for result in results}


def test_each_incremental_run_equals_a_full_rebuild(spark, tmp_path: Path) -> None:
    export = tmp_path / "export"
    generate(export, patients=6, seed=5, pixels="none")
    held = tmp_path / "held" / HELD_BACK
    shutil.move(export / "dicom" / HELD_BACK, held)
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={tmp_path / 'warehouse'}", f"sources.roots=[{export / 'dicom'}]",
        f"features.algorithm_results={export / ALGORITHM_RESULTS}"])
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    load_site(spark, locator, export)
    with (export / "truth.csv").open(newline="") as handle:
        truth = list(csv.DictReader(handle))
    run_pipeline(spark, settings)

    # 1. new files (a patient's studies arrive), a changed file, a deleted image and a deleted report
    shutil.move(held, export / "dicom" / HELD_BACK)
    files = sorted((export / "dicom" / "MRN000000").rglob("*.dcm"))
    changed, deleted = files[0], files[-1]
    dataset = pydicom.dcmread(changed)
    dataset.SeriesDescription = "re-sent with a new description"
    dataset.save_as(changed)
    deleted.unlink()
    report = next((export / "dicom" / "MRN000003").rglob("*_SR/*.dcm"))
    report_features = f"sr|{pydicom.dcmread(report, stop_before_pixels=True).SOPInstanceUID}|"
    assert _features_from(spark, locator, report_features) > 0
    report.unlink()
    arrived = sorted((export / "dicom" / HELD_BACK).rglob("*.dcm"))
    counts = _counts(run_pipeline(spark, settings))
    assert counts["extract"]["read"] == len(arrived) + 1 and counts["extract"]["missing"] == 2
    assert _features_from(spark, locator, report_features) == 0, "the deleted report's features are gone"
    every_series = counts["series"]["series"]
    touched = read_table(spark, locator, "dicom_instance").where(
        (F.col("patient_id") == HELD_BACK) | F.col("path").endswith(f"/{changed.relative_to(export)}")
        | F.col("path").endswith(f"/{deleted.relative_to(export)}")
        | F.col("path").endswith(f"/{report.relative_to(export)}")).select("series_instance_uid").distinct().count()
    # only the series the new, changed and deleted files belong to are grouped and featured again
    assert counts["series"]["series written"] == touched < every_series, counts["series"]
    assert counts["features"]["series redone"] == touched, counts["features"]
    # linkage is redone for the studies of the patients whose series changed
    studies = read_table(spark, locator, "dicom_series").select("study_instance_uid").distinct().count()
    assert 0 < counts["link"]["studies redone"] < studies, counts["link"]
    reports = read_table(spark, locator, "dicom_instance").where(is_report_or_segmentation(F.col("sop_class_uid")))
    of_touched_patients = reports.where(F.col("patient_id").isin(HELD_BACK, "MRN000000", "MRN000003")).count()
    # reports and segmentations are redone for the patients of those series
    assert counts["features"]["reports redone"] == of_touched_patients < reports.count(), counts["features"]
    instances = read_table(spark, locator, "dicom_instance")
    # The file's own path: its name alone (0001.dcm) ends a path in every series.
    assert instances.where(F.col("path").endswith(f"/{changed.relative_to(export)}")).first().series_description \
        == "re-sent with a new description"
    assert read_table(spark, locator, "image_occurrence").join(
        instances.where(F.col("patient_id") == HELD_BACK).select(F.col("series_instance_uid").alias(
            "image_series_uid")), "image_series_uid", "left_semi").count() > 0, "the new patient's series linked"
    assert _rebuild_differences(spark, locator, settings) == {}, "(missing, extra, duplicated) after new files"

    # 2. the site's CDM changes: the missing person is added, and a procedure now carries the accession
    #    number of a study micdm had created a procedure for
    person_id = 1000 + 6 + 1
    append(locator, "person", spark.createDataFrame(
        [(person_id, 8507, 1950, 0, 0, MISSING_PERSON)],
        "person_id int, gender_concept_id int, year_of_birth int, race_concept_id int, ethnicity_concept_id int, "
        "person_source_value string"))
    study = next(row for row in truth if row["case"] == ONE_DAY_OFF)
    series = read_table(spark, locator, "dicom_series").where(
        F.col("study_instance_uid") == study["study_instance_uid"]).first()
    created = read_table(spark, locator, "series_link").where(
        F.col("image_study_uid") == study["study_instance_uid"]).first().procedure_occurrence_id
    append(locator, "procedure_occurrence", spark.createDataFrame(
        [(9001, int(study["expected_person_id"]), 4056681, series.image_date, 32817, series.accession_number)],
        "procedure_occurrence_id int, person_id int, procedure_concept_id int, procedure_date date, "
        "procedure_type_concept_id int, procedure_source_value string"))
    counts = _counts(run_pipeline(spark, settings))
    # linkage is redone for the persons the site's changed rows name: the new person, the study's
    assert "skipped" in counts["series"] and 0 < counts["link"]["studies redone"] < studies, counts
    relinked = {row.image_series_uid for row in read_table(spark, locator, "series_link").where(
        F.col("image_study_uid") == study["study_instance_uid"]).collect()}
    newly_found = {row["series_instance_uid"] for row in truth if row["patient_id"] == MISSING_PERSON}
    # features are redone for the series whose link changed, not for the archive
    assert counts["features"]["series redone"] <= len(relinked | newly_found) < every_series, counts["features"]
    links = read_table(spark, locator, "series_link")
    found = links.where(F.col("image_study_uid") == study["study_instance_uid"]).first()
    assert (found.procedure_occurrence_id, found.link_rule) == (9001, "accession")
    assert read_table(spark, locator, "procedure_occurrence").where(
        F.col("procedure_occurrence_id") == created).count() == 0, "the procedure micdm created is gone"
    missing = {row["series_instance_uid"] for row in truth if row["patient_id"] == MISSING_PERSON}
    assert {row.person_id for row in links.collect() if row.image_series_uid in missing} == {person_id}
    assert _rebuild_differences(spark, locator, settings) == {}, "(missing, extra, duplicated) after the CDM changed"

    # 3. an algorithm result is withdrawn from the results file: its features go (the stage alone)
    results = (export / ALGORITHM_RESULTS).read_text().splitlines()
    withdrawn = next(csv.DictReader(results[:2]))
    result_features = "|".join(["alg", withdrawn["alg_system"], withdrawn["series_instance_uid"],
                                withdrawn["feature_vocabulary"], withdrawn["feature_code"], ""])
    assert _features_from(spark, locator, result_features) > 0
    (export / ALGORITHM_RESULTS).write_text("\n".join(results[:1] + results[2:]) + "\n")
    counts = run_stage(spark, settings, "features").counts
    assert counts["algorithm"] == len(results) - 3, counts  # the header, the withdrawn row, an unknown series
    assert _features_from(spark, locator, result_features) == 0, "the withdrawn result's features are gone"
