"""Vocabulary lookups: the site's CONCEPT table first, the mappings shipped in resources/ after it.

Concept ids are always found by (vocabulary_id, concept_code) or through a mapping table, never
written into code: the DICOM vocabulary's ids changed in every release.
"""

from __future__ import annotations

import csv
import io
import re
from functools import cache
from importlib import resources

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.schema import CONCEPT
from micdm.tables import TableLocator, conform, read_table

__all__ = [
    "body_part_sites",
    "concepts",
    "dicom_attributes",
    "modality_procedures",
    "normalise_body_part",
    "resource_rows",
    "table_concept_id",
]


@cache
def resource_rows(name: str) -> tuple[dict[str, str], ...]:
    """Rows of a CSV shipped in micdm/resources."""
    text = resources.files("micdm.resources").joinpath(name).read_text(encoding="utf-8")
    return tuple(csv.DictReader(io.StringIO(text)))


def _resource_frame(spark: SparkSession, name: str, types: dict[str, str]) -> DataFrame:
    rows = [tuple(row[c] or None for c in types) for row in resource_rows(name)]
    frame = spark.createDataFrame(rows, schema=", ".join(f"{c} string" for c in types))
    return frame.select(*[F.col(c).cast(t).alias(c) for c, t in types.items()])


def concepts(spark: SparkSession, locator: TableLocator) -> DataFrame:
    """The site's concept rows plus the shipped ones it lacks (by concept_id)."""
    shipped = _resource_frame(spark, "concept.csv", {f.name: "string" for f in CONCEPT.schema.fields})
    shipped = conform(
        shipped.withColumns({c: F.to_date(c, "yyyyMMdd") for c in ("valid_start_date", "valid_end_date")}), CONCEPT
    )
    site = read_table(spark, locator, "concept")
    return site.unionByName(shipped.join(site.select("concept_id"), "concept_id", "left_anti"))


def modality_procedures(spark: SparkSession) -> DataFrame:
    """DICOM modality -> standard procedure concept (see the project's CONCEPTS notes)."""
    return _resource_frame(spark, "modality_procedure.csv", {"modality": "string", "procedure_concept_id": "int"})


def body_part_sites(spark: SparkSession) -> DataFrame:
    """Normalised BodyPartExamined -> SNOMED 'Spec Anatomic Site' concept, via the DICOM value sets."""
    return _resource_frame(spark, "body_part_site.csv", {"body_part": "string", "anatomic_site_concept_id": "int"})


def normalise_body_part(column: Column) -> Column:
    """'Abdomen / Pelvis', 'abdomen_pelvis' and 'ABDOMENPELVIS' all become 'ABDOMENPELVIS'."""
    return F.nullif(F.regexp_replace(F.upper(F.trim(column)), r"[^A-Z0-9]", ""), F.lit(""))


def table_concept_id(table_name: str) -> int:
    """The CDM 'Table' concept of a clinical table (measurement, observation)."""
    for row in resource_rows("table_concepts.csv"):
        if row["table_name"] == table_name:
            return int(row["concept_id"])
    raise KeyError(f"no table concept shipped for {table_name!r}")


_KEYWORD = re.compile(r"[A-Za-z]+")


def dicom_attributes() -> dict[str, tuple[str, str | None]]:
    """DICOM keyword -> (8-hex tag, UCUM unit or None) for the attributes micdm can store as features."""
    return {row["keyword"]: (row["tag"], row["ucum_unit"] or None) for row in resource_rows("dicom_attributes.csv")}
