"""The whole pipeline on a small synthetic export: rows in both spec tables, correct links, idempotent re-runs."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import functions as F

from micdm.ids import allocated_ids
from micdm.pipeline import run_pipeline
from micdm.tables import TableLocator, read_table

from support.stages import tables_each_stage_names, unwatched
from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]


def test_both_spec_tables_have_rows(spark, demo) -> None:
    locator = demo["locator"]
    occurrences = read_table(spark, locator, "image_occurrence")
    features = read_table(spark, locator, "image_feature")
    linked = [uid for uid, row in demo["truth"].items() if row["expected_rule"] != "person_not_found"]
    assert occurrences.count() == len(linked)
    assert features.count() == {r.stage: r.counts for r in demo["first"]}["features"]["image_feature"]
    # every feature points at a real occurrence and a real measurement (numbers) or observation (text) row
    assert features.join(occurrences, "image_occurrence_id", "left_anti").count() == 0
    for table, concept in (("measurement", 1147330), ("observation", 1147304)):
        rows = read_table(spark, locator, table)
        pointing = features.where(F.col("table_concept_id") == concept)
        ours = rows.join(allocated_ids(spark, locator, table, f"{table}_id"), f"{table}_id", "left_semi")
        assert pointing.count() == ours.count(), f"one image_feature per {table} row micdm wrote"
        assert pointing.join(rows, pointing.table_row_id == rows[f"{table}_id"], "left_anti").count() == 0
    assert {r[0] for r in features.select("table_concept_id").distinct().collect()} == {1147330, 1147304}


def test_every_series_is_in_image_occurrence_or_an_exception(spark, demo) -> None:
    locator = demo["locator"]
    links = read_table(spark, locator, "series_link").toPandas().set_index("image_series_uid")
    occurrences = read_table(spark, locator, "image_occurrence").select("image_series_uid")
    occurrence_uids = {r[0] for r in occurrences.collect()}
    assert set(links.index) == set(demo["truth"])
    for uid, link in links.iterrows():
        assert (uid in occurrence_uids) != (link["exception_reason"] is not None), uid


def test_links_match_the_ground_truth(spark, demo) -> None:
    links = read_table(spark, demo["locator"], "series_link").toPandas().set_index("image_series_uid")
    for uid, expected in demo["truth"].items():
        link = links.loc[uid]
        if expected["case"] == "person_missing":
            assert link["exception_reason"] == "person_not_found", uid
        elif expected["expected_procedure_occurrence_id"]:
            assert link["procedure_occurrence_id"] == int(expected["expected_procedure_occurrence_id"]), (
                uid, expected["case"])
        else:
            assert link["link_rule"] == "created", (uid, expected["case"])


def test_rerun_changes_nothing(spark, demo) -> None:
    locator = demo["locator"]
    for name, before in demo["snapshot"].items():
        after = read_table(spark, locator, name).toPandas()
        key = after.columns[0]
        drop = [c for c in after.columns if c == "updated_at"]
        assert before.drop(columns=drop).sort_values(key).reset_index(drop=True).equals(
            after.drop(columns=drop).sort_values(key).reset_index(drop=True)), name
    second = {result.stage: result.counts for result in demo["second"]}
    assert second["extract"]["read"] == 0, "an unchanged export must not be read again"
    first_run = read_table(spark, locator, "stage_state").where(F.col("stage") == "series").first().run_id
    assert {stage: counts for stage, counts in second.items() if stage != "extract"} == {
        stage: {"skipped": f"nothing changed since run {first_run}"} for stage in second if stage != "extract"}
    assert demo["jobs_of_second"] == 0, "a run that finds nothing new reports from the figures it kept"


def test_occurrence_values(spark, demo) -> None:
    row = (read_table(spark, demo["locator"], "image_occurrence")
           .where(F.col("modality") == "CT").orderBy("image_occurrence_id").first())
    assert row is not None
    assert row.local_path.endswith("_CT") and row.image_occurrence_date is not None
    assert row.anatomic_site_concept_id in (4184181, 37303869, 4287390)  # CHEST, ABDOMEN, HEAD


def test_every_series_has_header_features_that_follow_the_dqd_conventions(spark, demo) -> None:
    from micdm.vocab import concepts

    locator = demo["locator"]
    occurrences = read_table(spark, locator, "image_occurrence")
    measurements = read_table(spark, locator, "measurement")
    header = read_table(spark, locator, "image_feature").join(
        measurements, F.col("table_row_id") == F.col("measurement_id")).where(
        F.col("measurement_source_value").rlike("^[0-9A-F]{8}(\\.[0-9A-F]{8})*:(first|min|max|distinct)$"))
    assert occurrences.join(header, "image_occurrence_id", "left_anti").count() == 0, "a series without features"
    required = ["measurement_id", "person_id", "measurement_concept_id", "measurement_date",
                "measurement_type_concept_id"]
    assert measurements.where(" OR ".join(f"{c} IS NULL" for c in required)).count() == 0
    assert measurements.join(read_table(spark, locator, "person"), "person_id", "left_anti").count() == 0
    visits = read_table(spark, locator, "visit_occurrence").select("visit_occurrence_id")
    assert measurements.where("visit_occurrence_id IS NOT NULL").join(visits, "visit_occurrence_id",
                                                                       "left_anti").count() == 0
    vocabulary = concepts(spark, locator)
    standard = {r[0] for r in vocabulary.where("standard_concept = 'S'").select("concept_id").collect()}
    known = {r[0] for r in vocabulary.select("concept_id").collect()}
    used = {r[0] for r in measurements.select("measurement_concept_id").distinct().collect()}
    assert used <= standard | {0}, "measurement_concept_id must be standard or 0"
    sources = {r[0] for r in measurements.select("measurement_source_concept_id").distinct().collect()}
    assert sources <= known | {0} and sources - {0}, "source concepts are real DICOM attribute concepts"


def test_every_concept_id_micdm_wrote_is_in_concept(spark, demo, concepts_missing) -> None:
    assert concepts_missing(spark, demo["locator"]) == set()


def test_units_and_anatomy_resolve_through_the_demo_vocabulary(spark, demo) -> None:
    measurements = read_table(spark, demo["locator"], "measurement")
    units = {(r[0], r[1]) for r in measurements.select("unit_source_value", "unit_concept_id").distinct().collect()}
    assert {("mm", 8588), ("ms", 9593), ("T", 9646), ("deg", 9484)} <= units
    assert ("kV", 0) in units, "a unit the site's vocabulary lacks stays 0, its code kept"
    sites = {r[0] for r in read_table(spark, demo["locator"], "image_occurrence").select(
        "anatomic_site_concept_id").distinct().collect()}
    assert {4184181, 4133034} <= sites and sites <= {r[0] for r in read_table(spark, demo["locator"], "concept")
                                                      .where("domain_id = 'Spec Anatomic Site'")
                                                      .select("concept_id").collect()} | {0}


def test_a_series_that_gains_or_loses_an_instance_is_updated_not_duplicated(spark, demo, tmp_path,
                                                                              monkeypatch) -> None:
    """The new file joins its series, and its tube current, the lowest, becomes the series' minimum; once
    deleted, it leaves both again. Every table a stage names in those runs is one whose version it records
    (else a change to it alone would leave the stage skipped) or one it writes. On a copy of the demo's
    tables, and the file is gone again when the test ends: other tests read the demo as the fixture left it."""
    import dataclasses
    import shutil

    import pydicom

    named = tables_each_stage_names(monkeypatch)
    warehouse = tmp_path / "warehouse"
    shutil.copytree(demo["settings"].storage.warehouse, warehouse)
    settings = dataclasses.replace(demo["settings"], storage=dataclasses.replace(
        demo["settings"].storage, warehouse=str(warehouse)))
    locator = TableLocator.of(settings)

    def occurrence_ids() -> dict[str, int]:
        return {r.image_series_uid: r.image_occurrence_id for r in
                read_table(spark, locator, "image_occurrence").collect()}

    before = occurrence_ids()
    first = sorted(Path(settings.sources.roots[0]).rglob("*_CT/0001.dcm"))[0]
    dataset = pydicom.dcmread(first)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
        entropy_srcs=[dataset.SOPInstanceUID, "extra"])  # a valid UID: appending to a 64-character one is not
    added = first.with_name("extra.dcm")
    series_uid = dataset.SeriesInstanceUID

    def instances() -> int:
        return read_table(spark, locator, "dicom_series").where(F.col("series_instance_uid") == series_uid).first()[
            "instance_count"]

    def lowest_tube_current() -> float:
        made = read_table(spark, locator, "id_map").where(
            F.col("natural_key") == f"header|{series_uid}|00181151|min").select(F.col("id").alias("measurement_id"))
        return read_table(spark, locator, "measurement").join(made, "measurement_id").first().value_as_number

    count, lowest = instances(), lowest_tube_current()
    dataset.XRayTubeCurrent = 1
    try:
        dataset.save_as(added, enforce_file_format=True)
        run_pipeline(spark, settings)
        assert occurrence_ids() == before and (instances(), lowest_tube_current()) == (count + 1, 1)
    finally:
        added.unlink(missing_ok=True)
    run_pipeline(spark, settings)
    assert (instances(), lowest_tube_current()) == (count, lowest), \
        "a file gone from storage no longer counts in its series, nor in its features"
    assert occurrence_ids() == before
    assert {"series", "link", "occurrence", "features", "quality"} <= named.keys()
    assert unwatched(named) == {}


def test_headers_kept_as_variant_give_the_same_rows(spark, demo, tmp_path) -> None:
    """extract.header_format=variant changes how dicom_instance keeps the header, not what micdm makes of it."""
    from micdm.config import load_settings
    from micdm.synth import load_site

    export = Path(demo["settings"].sources.roots[0]).parent
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={tmp_path / 'warehouse'}", f"sources.roots=[{export / 'dicom'}]",
        "extract.files_per_partition=200", "extract.header_format=variant"])
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    load_site(spark, locator, export)
    run_pipeline(spark, settings)
    instances = read_table(spark, locator, "dicom_instance")
    assert dict(instances.dtypes)["header"] == "variant" and "header_json" not in instances.columns
    thickness = instances.where("slice_thickness IS NOT NULL").selectExpr(
        "slice_thickness", "variant_get(header, '$[\"00180050\"].Value[0]', 'double') AS from_header")
    assert thickness.count() > 0 and thickness.where("from_header <=> slice_thickness").count() == thickness.count()
    for name, expected in demo["snapshot"].items():
        found = read_table(spark, locator, name).toPandas()
        drop = [c for c in found.columns if c == "updated_at"]
        key = found.columns[0]
        assert expected.drop(columns=drop).sort_values(key).reset_index(drop=True).equals(
            found.drop(columns=drop).sort_values(key).reset_index(drop=True)), name
