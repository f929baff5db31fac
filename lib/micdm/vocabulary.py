"""Vocabulary stage: micdm's own concepts go into the site's vocabulary tables before any row names them.

micdm writes DICOM attribute and value-set concepts (a custom vocabulary, ids in the 2,128,000,000 range)
into *_source_concept_id and value fields, and a few OMOP concepts its settings name by id (0, type and
table concepts). The DataQualityDashboard's isForeignKey checks want every one of them in CONCEPT, so
this stage MERGEs them in, with the VOCABULARY, DOMAIN and CONCEPT_CLASS rows they need and their
'Maps to' / 'Maps to value' relationships. Only rows whose key the site's tables lack are inserted:
a row the site already holds, however it differs, is left as it is.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.changes import Changes
from micdm.concurrency import run_concurrently
from micdm.config import Settings, VocabularySettings
from micdm.schema import CONCEPT
from micdm.stage import StageCounts
from micdm.tables import TableLocator, conform, merge_into
from micdm.vocab import resource_frame

__all__ = ["micdm_concepts", "run"]

log = logging.getLogger(__name__)

_VALID_FROM, _VALID_TO = "1970-01-01", "2099-12-31"
#: Names of the vocabularies, domains and classes micdm's concepts belong to, for a site that lacks them.
_NAMES = {"DICOM": "DICOM attributes and value sets (micdm)", "None": "OMOP Standardized Vocabularies",
          "Type Concept": "OMOP Type Concept", "CDM": "OMOP Common Data Model"}


def micdm_concepts(spark: SparkSession, settings: VocabularySettings) -> DataFrame:
    """The CONCEPT rows micdm may write: its DICOM concepts, plus the reference ones when enabled."""
    columns = {f.name: "string" for f in CONCEPT.schema.fields}
    frames = [resource_frame(spark, "concept.csv", columns)]
    if settings.reference_concepts:
        frames.append(resource_frame(spark, "reference_concepts.csv", columns))
    rows = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    if settings.attribute_concepts == "standard":
        rows = rows.withColumn("standard_concept", F.when(
            F.col("concept_class_id") == "DICOM Attributes", F.lit("S")).otherwise(F.col("standard_concept")))
    dates = {c: F.to_date(c, "yyyyMMdd") for c in ("valid_start_date", "valid_end_date")}
    return conform(rows.withColumns(dates), CONCEPT)


def _named(concepts: DataFrame, column: str, name_column: str, id_column: str) -> DataFrame:
    """One row per distinct ``column`` of the concepts, for VOCABULARY / DOMAIN / CONCEPT_CLASS."""
    names = F.create_map(*[F.lit(x) for pair in _NAMES.items() for x in pair])
    return concepts.select(column).distinct().select(
        column, F.coalesce(names[F.col(column)], F.col(column)).alias(name_column), F.lit(0).alias(id_column))


def run(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str,
        changes: Changes | None = None) -> StageCounts:
    """Insert the concepts micdm writes, and what they need, where the site's vocabulary lacks them."""
    if not settings.vocabulary.merge:
        return {"vocabulary": "off (vocabulary.merge=false)"}
    concepts = micdm_concepts(spark, settings.vocabulary).localCheckpoint()
    relationships = resource_frame(spark, "concept_relationship.csv",
                                   {"concept_id_1": "int", "concept_id_2": "int", "relationship_id": "string"})
    relationships = relationships.withColumns({"valid_start_date": F.lit(_VALID_FROM).cast("date"),
                                               "valid_end_date": F.lit(_VALID_TO).cast("date")})
    merges = {
        "concept": lambda: merge_into(spark, locator, "concept", concepts, ["concept_id"], update_existing=False),
        "concept_relationship": lambda: merge_into(spark, locator, "concept_relationship", relationships,
                                                   ["concept_id_1", "concept_id_2", "relationship_id"],
                                                   update_existing=False),
        "vocabulary": lambda: merge_into(spark, locator, "vocabulary", _named(
            concepts, "vocabulary_id", "vocabulary_name", "vocabulary_concept_id"), ["vocabulary_id"],
            update_existing=False),
        "domain": lambda: merge_into(spark, locator, "domain", _named(concepts, "domain_id", "domain_name",
                                                                      "domain_concept_id"), ["domain_id"],
                                     update_existing=False),
        "concept_class": lambda: merge_into(spark, locator, "concept_class", _named(
            concepts, "concept_class_id", "concept_class_name", "concept_class_concept_id"), ["concept_class_id"],
            update_existing=False),
    }
    added = dict(zip(merges, run_concurrently(*merges.values()), strict=True))
    log.info("vocabulary: rows added where the site lacked them: %s", added)
    return {f"{table} added": count for table, count in added.items()}
