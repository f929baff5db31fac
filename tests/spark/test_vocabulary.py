"""The vocabulary stage: micdm's concepts go into the site's vocabulary, and no site row changes."""

from __future__ import annotations

import datetime as dt

from micdm import vocabulary
from micdm.config import VocabularySettings
from micdm.tables import TableLocator, overwrite, read_table
from micdm.vocab import resource_rows
from micdm.vocabulary import micdm_concepts

from support.warehouse import new_tables

SLICE_THICKNESS = 2128000817  # the DICOM vocabulary's concept for (0018,0050)


def test_only_missing_rows_are_added_and_a_second_run_adds_none(spark, settings) -> None:
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    day = dt.date(2020, 1, 1)
    site_rows = [(SLICE_THICKNESS, "Slice thickness, as the site loaded it", "Measurement", "DICOM",
                  "DICOM Attributes", None, "00180050", day, day, None),
                 (8588, "millimeter", "Unit", "UCUM", "Unit", "S", "mm", day, day, None)]
    overwrite(locator, "concept", spark.createDataFrame(site_rows, read_table(spark, locator, "concept").schema))
    first = vocabulary.run(spark, locator, settings, "v1")
    shipped = len(resource_rows("concept.csv")) + len(resource_rows("reference_concepts.csv"))
    assert first["concept added"] == shipped - 1, "every shipped concept but the one the site holds"
    concept = {r.concept_id: r for r in read_table(spark, locator, "concept").collect()}
    assert concept[SLICE_THICKNESS].concept_name == "Slice thickness, as the site loaded it"
    assert concept[8588].concept_name == "millimeter" and concept[0].concept_name == "No matching concept"
    assert {r.vocabulary_id for r in read_table(spark, locator, "vocabulary").collect()} >= {"DICOM", "CDM"}
    relationships = read_table(spark, locator, "concept_relationship")
    shipped_relationships = len(resource_rows("concept_relationship.csv"))
    assert relationships.count() == first["concept_relationship added"] == shipped_relationships
    second = vocabulary.run(spark, locator, settings, "v2")
    assert set(second.values()) == {0}


def test_attribute_concepts_can_be_registered_as_standard(spark) -> None:
    nonstandard = micdm_concepts(spark, VocabularySettings()).where("concept_class_id = 'DICOM Attributes'")
    assert {r.standard_concept for r in nonstandard.collect()} == {None}
    standard = micdm_concepts(spark, VocabularySettings(attribute_concepts="standard", reference_concepts=False))
    classes = {(r.concept_class_id, r.standard_concept) for r in standard.collect()}
    assert classes == {("DICOM Attributes", "S"), ("DICOM Value Sets", None)}
