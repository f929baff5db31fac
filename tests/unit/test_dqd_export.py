"""The imaging tables' checks exported as DataQualityDashboard threshold files."""

from __future__ import annotations

import csv
from pathlib import Path

from micdm.quality import controls, export_dqd_thresholds


def test_export_writes_the_imaging_checks_in_the_dashboards_columns(tmp_path: Path) -> None:
    field_path, table_path = export_dqd_thresholds(tmp_path)
    with field_path.open(newline="", encoding="utf-8") as handle:
        rows = {(r["cdmTableName"], r["cdmFieldName"]): r for r in csv.DictReader(handle)}
    person = rows[("IMAGE_OCCURRENCE", "person_id")]
    assert (person["isRequired"], person["isForeignKey"], person["fkTableName"], person["fkFieldName"]) == (
        "Yes", "Yes", "PERSON", "PERSON_ID")
    site = rows[("IMAGE_FEATURE", "anatomic_site_concept_id")]
    assert (site["fkDomain"], site["fkDomainThreshold"], site["isStandardValidConcept"]) == (
        "Spec Anatomic Site", "0", "Yes")
    date = rows[("IMAGE_OCCURRENCE", "image_occurrence_date")]
    assert (date["plausibleValueLow"], date["withinVisitDatesThreshold"]) == ("'19500101'", "5")
    imaging = {(c.table, c.field) for c in controls() if c.table.startswith("image_")}
    assert {(t.lower(), f) for t, f in rows} == imaging
    with table_path.open(newline="", encoding="utf-8") as handle:
        assert [r["cdmTableName"] for r in csv.DictReader(handle)] == ["IMAGE_OCCURRENCE", "IMAGE_FEATURE"]
