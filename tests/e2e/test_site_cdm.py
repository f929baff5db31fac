"""A real site's CDM: OHDSI's Synthea27Nj (Eunomia) created with the official OHDSI Spark DDL, DICOM written
for its imaging procedures, the whole pipeline run with site settings, and micdm's rows held against the
DataQualityDashboard's own check SQL (run by ../shared/tools/dqd/run_dqd.py in DuckDB).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pyspark.sql import functions as F

from micdm.concurrency import run_concurrently
from micdm.config import Settings, load_settings
from micdm.ids import allocated_ids
from micdm.link import WARNING_CREATED_ON_PROCEDURE_DAY
from micdm.pipeline import run_pipeline, run_stage
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
#: Where the site's imaging procedure concepts are not the ones shipped per modality, a site names them.
SITE_CONCEPTS = "occurrence.procedure_concepts={CR: [4163872], DX: [4195803], US: [4060626, 4230911], MR: [44784284]}"
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
    """Every CDM table micdm reads, created with the official DDL and loaded from the Synthea27Nj CSVs (the
    tables side by side, as they do not depend on each other)."""
    ddl = _official_ddl(shared)

    def create(name: str) -> None:
        path = folder / name
        spark.sql(ddl[name].replace(f"@cdmDatabaseSchema.{name}", f"delta.`{path}`", 1))
        stored = spark.read.format("delta").load(str(path)).schema
        rows = spark.read.option("header", True).csv(str(shared / "data" / "omop" / "synthea27nj" /
                                                         f"{name.upper()}.csv"))
        rows.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in stored.fields]) \
            .write.format("delta").mode("append").save(str(path))

    run_concurrently(*[functools.partial(create, table.name) for table in CDM_TABLES])


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


@dataclass(frozen=True)
class SiteExport:
    """The site's CDM as its DDL and CSVs left it (a template to copy), and the DICOM its PACS holds."""

    cdm: Path
    dicom: Path
    imaging: list
    """The site's imaging procedure rows, each with a DICOM study."""
    mr: tuple[int, dt.date]
    """(person_id, date) of the MR study no site procedure was recorded for."""

    def warehouse(self, target: Path, *overrides: str) -> Settings:
        """A warehouse holding a fresh copy of the site's CDM, and site-style settings pointing at it."""
        shutil.copytree(self.cdm, target / "cdm")
        return load_settings(REPO / "conf" / "local.yml", [
            f"storage.warehouse={target}", "storage.cdm_schema=cdm", f"sources.roots=[{self.dicom}]", *overrides])


@pytest.fixture(scope="module")
def export(spark, shared: Path, tmp_path_factory) -> SiteExport:
    root = tmp_path_factory.mktemp("site_export")
    _create_site(spark, shared, root / "cdm")

    def table(name: str):
        return spark.read.format("delta").load(str(root / "cdm" / name))

    persons = {r.person_id: r.person_source_value for r in table("person").collect()}
    imaging = table("procedure_occurrence").where(F.col("procedure_concept_id").isin(*IMAGING)).collect()
    for row in imaging:
        modality, body_part = IMAGING[row.procedure_concept_id]
        _write_series(root / "dicom", persons[row.person_id], str(row.procedure_date), modality, body_part,
                      f"p{row.procedure_occurrence_id}")
    # an MR study the site has no procedure for, on the day of one of the person's visits
    visit = table("visit_occurrence").orderBy("visit_occurrence_id").first()
    _write_series(root / "dicom", persons[visit.person_id], str(visit.visit_start_date), "MR", "BRAIN", "mr")
    return SiteExport(root / "cdm", root / "dicom", imaging, (visit.person_id, visit.visit_start_date))


@pytest.fixture(scope="module")
def site(spark, export: SiteExport, tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    settings = export.warehouse(root / "warehouse", SITE_CONCEPTS)
    run_pipeline(spark, settings)  # raises QualityError if a fatal check failed
    return dict(settings=settings, locator=TableLocator.of(settings), imaging=export.imaging, root=root)


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
    tag = {r.measurement_source_value: r.measurement_source_value.partition(":")[0] for r in rows.collect()}
    units = {tag[r.measurement_source_value]: (r.unit_source_value, r.unit_concept_id) for r in rows.collect()}
    assert units["00180050"] == ("mm", 8588) and units["00280030"] == ("mm", 8588)  # SliceThickness, PixelSpacing
    assert units["00180080"] == ("ms", 9593) and units["00180081"] == ("ms", 9593)  # RepetitionTime, EchoTime
    assert units["00180087"] == ("T", 9646) and units["00181314"] == ("deg", 9484)  # field strength, flip angle
    assert units["00180060"] == ("kV", 0), "kV is not in this vocabulary subset: 0, with the unit kept"
    values = {tag[r.measurement_source_value]: r.value_source_value for r in rows.collect()}
    assert values["00180060"] in ("110", "76") and values["00180050"] == "5.0", "the header's own text"


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


# --- the site's ETL reloads its tables between two runs --------------------------------------------------

SITE_TABLES = ("procedure_occurrence", "measurement", "observation")


def _micdm_ids(spark, locator: TableLocator, table: str) -> set[int]:
    return {r.id for r in allocated_ids(spark, locator, table).collect()}


def _site_rows(spark, locator: TableLocator, table: str, micdms: set[int] | None = None):
    """The rows of a site table but those at ``micdms`` (default: the ids micdm now holds), sorted, in pandas."""
    key = f"{table}_id"
    ids = _micdm_ids(spark, locator, table) if micdms is None else micdms
    rows = read_table(spark, locator, table).where(~F.col(key).isin(*ids) if ids else F.lit(True))
    return rows.toPandas().sort_values(key).reset_index(drop=True)


def _reload(spark, locator: TableLocator, export: SiteExport, taken_id: int) -> int:
    """What a site's ETL does: truncate and insert its tables from its sources, new rows taking ids after its
    old highest. Its procedure table gains the MR procedure an ordering system recorded late; its measurement
    table also hands out one id micdm had used (an ETL numbering after the table's highest, micdm's rows
    included). Returns the new procedure's id."""
    original = {name: spark.read.format("delta").load(str(export.cdm / name)) for name in SITE_TABLES}
    new_procedure = original["procedure_occurrence"].agg(F.max("procedure_occurrence_id")).first()[0] + 1
    person, date = export.mr
    procedure = original["procedure_occurrence"].limit(1).select(
        F.lit(new_procedure).alias("procedure_occurrence_id"), F.lit(person).alias("person_id"),
        F.lit(44784284).alias("procedure_concept_id"), F.lit(date).alias("procedure_date"),
        *[F.lit(None).cast(f.dataType).alias(f.name) for f in original["procedure_occurrence"].schema.fields
          if f.name not in ("procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date")])
    measurement = original["measurement"].orderBy("measurement_id").limit(1).withColumn(
        "measurement_id", F.lit(taken_id)).withColumn("value_source_value", F.lit("the site's own row"))
    reloaded = {"procedure_occurrence": original["procedure_occurrence"].unionByName(procedure),
                "measurement": original["measurement"].unionByName(measurement),
                "observation": original["observation"]}
    for name, rows in reloaded.items():
        stored = read_table(spark, locator, name).schema
        rows.select(*[F.col(f.name).cast(f.dataType) for f in stored.fields]).localCheckpoint() \
            .write.format("delta").mode("overwrite").save(locator.path(name))
    return new_procedure


@pytest.fixture(scope="module")
def reloaded(spark, export: SiteExport, tmp_path_factory):
    root = tmp_path_factory.mktemp("reloaded")
    settings = export.warehouse(root / "warehouse", SITE_CONCEPTS.replace(", MR: [44784284]", ""),
                                "occurrence.missing_procedure=exception")
    locator = TableLocator.of(settings)
    schemas = {name: read_table(spark, locator, name).schema for name in SITE_TABLES}
    first = {r.stage: r.counts for r in run_pipeline(spark, settings)}
    after_first = {name: _site_rows(spark, locator, name) for name in SITE_TABLES}
    ids_first = {name: _micdm_ids(spark, locator, name) for name in SITE_TABLES}
    taken = min(ids_first["measurement"])
    taken_key = allocated_ids(spark, locator, "measurement").join(read_table(spark, locator, "id_map").where(
        "namespace = 'measurement'"), "id").where(F.col("id") == taken).first().natural_key
    new_procedure = _reload(spark, locator, export, taken)
    before_second = {name: _site_rows(spark, locator, name, ids_first[name] - {taken}) for name in SITE_TABLES}
    # the site now records MR procedures too, and names their concept
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={root / 'warehouse'}", "storage.cdm_schema=cdm", f"sources.roots=[{export.dicom}]",
        SITE_CONCEPTS, "occurrence.missing_procedure=exception"])
    second = {r.stage: r.counts for r in run_pipeline(spark, settings)}
    return dict(locator=locator, schemas=schemas, first=first, second=second, after_first=after_first,
                before_second=before_second, taken=taken, taken_key=taken_key, new_procedure=new_procedure,
                original={name: spark.read.format("delta").load(str(export.cdm / name)).toPandas()
                          .sort_values(f"{name}_id").reset_index(drop=True) for name in SITE_TABLES})


def test_no_site_row_changes_in_either_run(spark, reloaded) -> None:
    for name in SITE_TABLES:
        assert reloaded["after_first"][name].equals(reloaded["original"][name]), f"{name}, first run"
        assert _site_rows(spark, reloaded["locator"], name).equals(reloaded["before_second"][name]), \
            f"{name}, second run"
        assert read_table(spark, reloaded["locator"], name).schema == reloaded["schemas"][name], name


def test_a_reload_that_dropped_micdms_rows_gets_them_back(spark, reloaded) -> None:
    locator = reloaded["locator"]
    assert reloaded["second"]["features"]["restored"] > 0
    for name in ("measurement", "observation"):
        present = {r[0] for r in read_table(spark, locator, name).select(f"{name}_id").collect()}
        assert _micdm_ids(spark, locator, name) <= present, name
    features = read_table(spark, locator, "image_feature")
    for name, concept in (("measurement", 1147330), ("observation", 1147304)):
        rows = read_table(spark, locator, name)
        pointing = features.where(F.col("table_concept_id") == concept)
        assert pointing.join(rows, pointing.table_row_id == rows[f"{name}_id"], "left_anti").count() == 0


def test_an_id_the_site_took_is_left_to_the_site(spark, reloaded) -> None:
    locator = reloaded["locator"]
    assert reloaded["second"]["features"]["reallocated"] == 1 and "reallocated" not in reloaded["first"]["features"]
    row = read_table(spark, locator, "measurement").where(F.col("measurement_id") == reloaded["taken"]).first()
    assert row.value_source_value == "the site's own row"
    moved = read_table(spark, locator, "id_map").where(
        (F.col("namespace") == "measurement") & (F.col("natural_key") == reloaded["taken_key"])).first()
    assert moved.id != reloaded["taken"] and moved.id > reloaded["taken"]


def test_no_id_micdm_holds_is_a_site_id(spark, reloaded) -> None:
    for name in SITE_TABLES:
        site_ids = set(_site_rows(spark, reloaded["locator"], name)[f"{name}_id"])
        assert not _micdm_ids(spark, reloaded["locator"], name) & site_ids, name
        assert min(_micdm_ids(spark, reloaded["locator"], name) or {2_000_000_000}) >= 2_000_000_000, name


def test_the_new_site_procedure_links_the_excepted_study(spark, reloaded) -> None:
    assert reloaded["first"]["link"].get("no_matching_procedure") == 1
    assert "no_matching_procedure" not in reloaded["second"]["link"]
    occurrences = read_table(spark, reloaded["locator"], "image_occurrence").where(F.col("modality") == "MR")
    assert [r.procedure_occurrence_id for r in occurrences.collect()] == [reloaded["new_procedure"]]


def test_default_settings_warn_of_procedures_created_beside_the_sites(spark, export: SiteExport, tmp_path,
                                                                       caplog) -> None:
    """Without the site's concepts, the window rule finds no compatible procedure and micdm creates one per
    study: on the day of the site's own imaging procedure for all of them, which the run warns of."""
    settings = export.warehouse(tmp_path / "warehouse")
    for stage in ("vocabulary", "extract", "series"):
        run_stage(spark, settings, stage)
    with caplog.at_level(logging.WARNING, logger="micdm.link"):
        counts = run_stage(spark, settings, "link").counts
    procedures = spark.read.format("delta").load(str(export.cdm / "procedure_occurrence"))
    person, date = export.mr
    mr_beside = procedures.where((F.col("person_id") == person) & (F.col("procedure_date") == date)).count() > 0
    expected = len({(r.person_id, r.procedure_date) for r in export.imaging}) + int(mr_beside)
    assert counts[WARNING_CREATED_ON_PROCEDURE_DAY] == expected
    assert f"link: {expected} procedure(s) created on a day the site has a procedure" in caplog.text
    assert "occurrence.procedure_concepts" in caplog.text
