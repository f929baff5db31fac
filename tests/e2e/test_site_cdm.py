"""A real site's CDM: OHDSI's Synthea27Nj (Eunomia) created with the official OHDSI Spark DDL, DICOM written
for its imaging procedures, the whole pipeline run with site settings, and micdm's rows held against the
DataQualityDashboard's own check SQL (run by ../shared/tools/dqd/run_dqd.py in DuckDB).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pyspark.sql import functions as F

from micdm.config import load_settings
from micdm.ids import allocated_ids
from micdm.pipeline import run_pipeline
from micdm.schema import CDM_TABLES
from micdm.tables import TableLocator, read_table

REPO = Path(__file__).resolve().parents[2]
#: The site's imaging procedures (concepts of its own vocabulary) and the DICOM a PACS would hold for them.
IMAGING = {4163872: ("CR", "CHEST"), 4060626: ("US", "ABDOMEN"), 4195803: ("DX", "HIP"), 4230911: ("US", "HEART")}
SOP_CLASSES = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
               "US": "1.2.840.10008.5.1.4.1.1.6.1", "MR": "1.2.840.10008.5.1.4.1.1.4"}
ACQUISITION = {
    "CR": {"KVP": "110", "Exposure": 4, "PixelSpacing": ["0.139", "0.139"]},
    "DX": {"KVP": "76", "Exposure": 2, "PixelSpacing": ["0.2", "0.2"]},
    "US": {"Manufacturer": "GE Healthcare"},
    "MR": {"SliceThickness": "5.0", "MagneticFieldStrength": "1.5", "RepetitionTime": "500", "EchoTime": "15",
           "FlipAngle": "90", "PixelSpacing": ["0.9", "0.9"]},
}
#: Every check that fails on micdm's rows at the DataQualityDashboard's thresholds, and why (README, "Quality").
EXPECTED_FAILURES = {
    # DICOM attribute concepts are non-standard (vocabulary.attribute_concepts: nonstandard, the default)
    ("standardConceptRecordCompleteness", "measurement", "measurement_concept_id"),
    ("sourceValueCompleteness", "measurement", "measurement_source_value"),
    ("standardConceptRecordCompleteness", "observation", "observation_concept_id"),
    # the vocabulary subset lacks kV and mA.s
    ("standardConceptRecordCompleteness", "measurement", "unit_concept_id"),
    # the MR study has no procedure; the one micdm creates has no MR procedure concept in this vocabulary
    ("standardConceptRecordCompleteness", "procedure_occurrence", "procedure_concept_id"),
    ("sourceValueCompleteness", "procedure_occurrence", "procedure_source_value"),
}


def _official_ddl(shared: Path) -> dict[str, str]:
    """Table name -> its CREATE TABLE statement from the OHDSI Spark DDL."""
    text = (shared / "spec" / "omop-cdm-5.4" / "OMOPCDM_spark_5.4_ddl.sql").read_text(encoding="utf-8")
    statements = {}
    for statement in text.split(";"):
        found = re.search(r"CREATE TABLE @cdmDatabaseSchema\.(\w+)", statement)
        if found:
            statements[found.group(1).lower()] = statement.strip()
    return statements


def _create_site(spark, shared: Path, folder: Path) -> None:
    """Every CDM table micdm reads, created with the official DDL and loaded from the Synthea27Nj CSVs."""
    ddl = _official_ddl(shared)
    for table in CDM_TABLES:
        path = folder / table.name
        spark.sql(ddl[table.name].replace(f"@cdmDatabaseSchema.{table.name}", f"delta.`{path}`", 1))
        stored = spark.read.format("delta").load(str(path)).schema
        rows = spark.read.option("header", True).csv(str(shared / "data" / "omop" / "synthea27nj" /
                                                         f"{table.name.upper()}.csv"))
        rows.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in stored.fields]) \
            .write.format("delta").mode("append").save(str(path))


def _write_series(folder: Path, patient_id: str, date: str, modality: str, body_part: str | None,
                  key: str) -> None:
    study, series = generate_uid(entropy_srcs=[key, "study"]), generate_uid(entropy_srcs=[key, "series"])
    for number in (1, 2):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[key, str(number)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient_id, study, series
        ds.StudyDate = ds.SeriesDate = date.replace("-", "")
        ds.Modality, ds.InstanceNumber = modality, number
        if body_part:
            ds.BodyPartExamined = body_part
        for keyword, value in ACQUISITION[modality].items():
            setattr(ds, keyword, value)
        target = folder / key / f"{number}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)


@pytest.fixture(scope="module")
def site(spark, shared: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    warehouse = root / "warehouse"
    _create_site(spark, shared, warehouse / "cdm")
    procedures = read_table(spark, TableLocator(load_settings(None, [f"storage.warehouse={warehouse}",
                                                                      "storage.cdm_schema=cdm"]).storage),
                            "procedure_occurrence").where(F.col("procedure_concept_id").isin(*IMAGING))
    persons = {r.person_id: r.person_source_value for r in spark.read.format("delta").load(
        str(warehouse / "cdm" / "person")).collect()}
    dicom = root / "dicom"
    imaging = procedures.collect()
    for row in imaging:
        modality, body_part = IMAGING[row.procedure_concept_id]
        _write_series(dicom, persons[row.person_id], str(row.procedure_date), modality, body_part,
                      f"p{row.procedure_occurrence_id}")
    # an MR study the site has no procedure for, on the day of one of the person's visits
    visit = spark.read.format("delta").load(str(warehouse / "cdm" / "visit_occurrence")).orderBy(
        "visit_occurrence_id").first()
    _write_series(dicom, persons[visit.person_id], str(visit.visit_start_date), "MR", "BRAIN", "mr")
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={warehouse}", "storage.cdm_schema=cdm", f"sources.roots=[{dicom}]",
        "occurrence.procedure_concepts={CR: [4163872], DX: [4195803], US: [4060626, 4230911]}"])
    run_pipeline(spark, settings)  # raises QualityError if a fatal check failed
    return dict(settings=settings, locator=TableLocator(settings.storage), imaging=imaging, root=root)


def test_the_official_ddl_is_accepted_and_its_types_kept(spark, site) -> None:
    measurement = read_table(spark, site["locator"], "measurement").schema
    assert measurement["value_as_number"].dataType.typeName() == "float"  # the site's FLOAT, not micdm's DOUBLE
    assert read_table(spark, site["locator"], "image_occurrence").count() == len(site["imaging"]) + 1


def test_every_imaging_procedure_is_linked(spark, site) -> None:
    linked = {r.procedure_occurrence_id for r in read_table(spark, site["locator"], "image_occurrence").collect()}
    assert {r.procedure_occurrence_id for r in site["imaging"]} < linked


def test_units_resolve_through_the_sites_vocabulary(spark, site) -> None:
    rows = read_table(spark, site["locator"], "measurement").join(
        allocated_ids(spark, site["locator"], "measurement", "measurement_id"), "measurement_id", "left_semi")
    units = {r.measurement_source_value: (r.unit_source_value, r.unit_concept_id) for r in rows.collect()}
    assert units["00180050"] == ("mm", 8588) and units["00280030"] == ("mm", 8588)  # SliceThickness, PixelSpacing
    assert units["00180080"] == ("ms", 9593) and units["00180081"] == ("ms", 9593)  # RepetitionTime, EchoTime
    assert units["00180087"] == ("T", 9646) and units["00181314"] == ("deg", 9484)  # field strength, flip angle
    assert units["00180060"] == ("kV", 0), "kV is not in this vocabulary subset: 0, with the unit kept"


def test_every_concept_id_micdm_wrote_is_in_the_sites_concept(spark, site, concepts_missing) -> None:
    assert concepts_missing(spark, site["locator"]) == set()


def test_the_quality_stage_fails_only_the_documented_checks(spark, site) -> None:
    results = read_table(spark, site["locator"], "dq_result").toPandas()
    failed = {(r.check_name, r.table_name, r.field_name) for r in results.itertuples() if r.status == "failed"}
    assert failed == EXPECTED_FAILURES
    assert not results[results["fatal"] & (results["status"] == "failed")].shape[0]
    assert (results[results["status"] != "not_evaluated"]["rows_checked"] > 0).all()


def test_micdm_agrees_with_the_data_quality_dashboards_own_sql(spark, site, shared: Path) -> None:
    """Only micdm's rows go into a copy of the CDM, and DQD's SQL runs on it: same verdicts, same counts."""
    pytest.importorskip("duckdb", reason="the DataQualityDashboard runner needs duckdb, deltalake and sqlglot")
    locator, copy = site["locator"], site["root"] / "dqd"
    for name in ("measurement", "observation", "procedure_occurrence"):
        read_table(spark, locator, name).join(allocated_ids(spark, locator, name, f"{name}_id"), f"{name}_id",
                                              "left_semi").write.format("delta").save(str(copy / name))
    for name in ("person", "death", "visit_occurrence", "concept"):
        read_table(spark, locator, name).write.format("delta").save(str(copy / name))
    report = site["root"] / "dqd.json"
    subprocess.run([sys.executable, str(shared / "tools" / "dqd" / "run_dqd.py"), "--delta-root", str(copy),
                    "--tables", "measurement,observation,procedure_occurrence", "--json", str(report)],
                   check=True, capture_output=True, timeout=600)
    theirs = {(c["checkName"], c["cdmTableName"].lower(), (c["cdmFieldName"] or "").lower() or None,
               str(c["conceptId"]) if c.get("conceptId") else None): c
              for c in json.loads(report.read_text())["checks"]}
    ours = read_table(spark, locator, "dq_result").where(
        F.col("table_name").isin("measurement", "observation", "procedure_occurrence")).toPandas()
    compared = 0
    for row in ours[ours["check_level"] != "TABLE"].itertuples():  # table level: the whole table (see quality.py)
        concept = None if row.concept_id != row.concept_id or row.concept_id is None else str(int(row.concept_id))
        check = theirs.get((row.check_name, row.table_name, row.field_name, concept))
        assert check is not None, f"DQD has no {row.check_name} on {row.table_name}.{row.field_name}"
        where = f"{row.check_name} {row.table_name}.{row.field_name}"
        if row.status == "not_evaluated":
            assert check["status"] == "not-applicable" or check["numDenominatorRows"] == 0, where
            continue
        assert (check["status"], check["numViolatedRows"], check["numDenominatorRows"]) == (
            "FAILED" if row.status == "failed" else "passed", row.rows_violated, row.rows_checked), where
        compared += 1
    assert compared > 50
