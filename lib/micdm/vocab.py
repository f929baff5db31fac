"""Vocabulary lookups through the site's CONCEPT and CONCEPT_RELATIONSHIP (micdm's own DICOM concepts are
merged into them first, by the vocabulary stage), and the mappings shipped in resources/.

Concept ids are always found by (vocabulary_id, concept_code) or through a mapping table, never
written into code: the DICOM vocabulary's ids changed in every release. A standard concept is written
into a *_concept_id field only when the site's CONCEPT holds it as valid and standard, in the domain
that field takes (the DataQualityDashboard's fkDomain); otherwise the field gets 0.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from micdm.errors import VocabularyError
from micdm.resources import rows as resource_rows
from micdm.tables import TableLocator, read_table

__all__ = [
    "anatomy_sites",
    "body_part_sites",
    "coding_scheme_vocabularies",
    "compatible_procedures",
    "concepts",
    "in_domain",
    "modality_concepts",
    "modality_procedures",
    "normalise_body_part",
    "resource_frame",
    "resource_rows",
    "site_anatomy",
    "site_relationships",
    "table_concept_id",
]


def resource_frame(spark: SparkSession, name: str, types: dict[str, str]) -> DataFrame:
    """A CSV shipped in micdm/resources as a DataFrame, its columns cast to ``types``."""
    rows = [tuple(row[c] or None for c in types) for row in resource_rows(name)]
    frame = spark.createDataFrame(rows, schema=", ".join(f"{c} string" for c in types))
    return frame.select(*[F.col(c).cast(t).alias(c) for c, t in types.items()])


def concepts(spark: SparkSession, locator: TableLocator) -> DataFrame:
    """The site's CONCEPT rows (micdm's own concepts included once the vocabulary stage has run)."""
    return read_table(spark, locator, "concept")


def in_domain(spark: SparkSession, locator: TableLocator, domain: str) -> DataFrame:
    """concept_id of every valid standard concept of ``domain`` in the site's CONCEPT."""
    return concepts(spark, locator).where(
        (F.col("domain_id") == domain) & (F.col("standard_concept") == "S") & F.col("invalid_reason").isNull()
    ).select("concept_id")


def modality_concepts() -> dict[str, int]:
    """DICOM modality -> its standard procedure concept (see the project's CONCEPTS notes), one per modality."""
    return {row["modality"]: int(row["procedure_concept_id"]) for row in resource_rows("modality_procedure.csv")}


def modality_procedures(spark: SparkSession, locator: TableLocator) -> DataFrame:
    """modality_concepts() as a DataFrame (modality, procedure_concept_id), for the concepts the site's
    CONCEPT holds as standard Procedure concepts (a procedure micdm creates gets 0 otherwise)."""
    pairs = spark.createDataFrame(list(modality_concepts().items()), schema="modality string, procedure_concept_id int")
    return pairs.join(in_domain(spark, locator, "Procedure").withColumnRenamed("concept_id", "procedure_concept_id"),
                      "procedure_concept_id", "left_semi")


def compatible_procedures(spark: SparkSession, locator: TableLocator, configured: dict[str, tuple[int, ...]],
                          roots: tuple[int, ...] = ()) -> DataFrame:
    """(modality, procedure_concept_id) pairs a date-window link accepts.

    A modality named in ``configured`` (occurrence.procedure_concepts) gets exactly those concepts; every
    other modality keeps the concept shipped for it. Where the site's CONCEPT_ANCESTOR holds rows, the
    descendants of those concepts count too, and the descendants of ``roots`` (imaging procedures of any
    modality) count for every modality.
    """
    pairs = [(m, c) for m, ids in configured.items() for c in ids]
    pairs += [(m, c) for m, c in modality_concepts().items() if m not in configured]
    direct = spark.createDataFrame(pairs, schema="modality string, procedure_concept_id int")
    modalities = sorted({m for m, _ in pairs})
    ancestors = direct.unionByName(spark.createDataFrame(
        [(m, r) for m in modalities for r in roots], schema="modality string, procedure_concept_id int"))
    descendants = ancestors.join(read_table(spark, locator, "concept_ancestor").select(
        F.col("ancestor_concept_id").alias("procedure_concept_id"), "descendant_concept_id"), "procedure_concept_id"
    ).select("modality", F.col("descendant_concept_id").alias("procedure_concept_id"))
    return direct.unionByName(descendants).distinct()


def body_part_sites(spark: SparkSession) -> DataFrame:
    """Normalised BodyPartExamined -> SNOMED 'Spec Anatomic Site' concept, via the DICOM value sets."""
    return resource_frame(spark, "body_part_site.csv", {"body_part": "string", "anatomic_site_concept_id": "int"})


def anatomy_sites(spark: SparkSession, locator: TableLocator, vocabulary: str) -> DataFrame:
    """(anatomy_key, anatomic_site_concept_id): the site's vocabulary first when ``vocabulary`` is 'site',
    the shipped body-part table for every key it leaves out; only concepts the site's CONCEPT holds as
    standard 'Spec Anatomic Site' concepts."""
    shipped = body_part_sites(spark).withColumnRenamed("body_part", "anatomy_key")
    if vocabulary == "site":
        site = site_anatomy(spark, locator)
        shipped = site.unionByName(shipped.join(site, "anatomy_key", "left_anti"))
    sites = in_domain(spark, locator, "Spec Anatomic Site").withColumnRenamed("concept_id", "anatomic_site_concept_id")
    return shipped.join(sites, "anatomic_site_concept_id", "left_semi").select(
        "anatomy_key", "anatomic_site_concept_id")


#: DICOM coding scheme designators -> OMOP vocabulary_id (AnatomicRegionSequence, SR codes).
_CODING_SCHEMES = {"SCT": "SNOMED", "SNM3": "SNOMED", "SRT": "SNOMED", "LN": "LOINC", "RADLEX": "RadLex",
                   "UCUM": "UCUM"}


def coding_scheme_vocabularies() -> Column:
    """A map column: DICOM coding scheme designator -> OMOP vocabulary_id (look up with ``[column]``)."""
    return F.create_map(*[F.lit(x) for pair in _CODING_SCHEMES.items() for x in pair])


def site_relationships(spark: SparkSession, locator: TableLocator, relationship_id: str) -> DataFrame:
    """Valid (concept_id_1, concept_id_2) pairs of one relationship in the site's CONCEPT_RELATIONSHIP."""
    return read_table(spark, locator, "concept_relationship").where(
        (F.col("relationship_id") == relationship_id) & F.col("invalid_reason").isNull()).select(
        "concept_id_1", "concept_id_2")


def site_anatomy(spark: SparkSession, locator: TableLocator) -> DataFrame:
    """(anatomy_key, anatomic_site_concept_id) through the site's CONCEPT and CONCEPT_RELATIONSHIP.

    Keys are normalised BodyPartExamined terms (the DICOM vocabulary's value-set concepts, 'Maps to' a
    standard concept) and ``SCHEME:CODE`` of AnatomicRegionSequence items (the code's own concept when it
    is standard, else what it 'Maps to'). Only valid standard targets count.
    """
    concept = read_table(spark, locator, "concept").where(F.col("invalid_reason").isNull())
    maps_to = site_relationships(spark, locator, "Maps to")
    standard = concept.where(F.col("standard_concept") == "S").select(F.col("concept_id").alias("target"))
    keyed = concept.select(
        "concept_id", "standard_concept",
        F.explode(F.array(
            F.when((F.col("vocabulary_id") == "DICOM") & (F.col("concept_class_id") == "DICOM Value Sets"),
                   normalise_body_part(F.col("concept_code"))),
            *[F.when(F.col("vocabulary_id") == F.lit(vocabulary), F.concat(F.lit(f"{scheme}:"), "concept_code"))
              for scheme, vocabulary in _CODING_SCHEMES.items()],
        )).alias("anatomy_key"),
    ).where(F.col("anatomy_key").isNotNull())
    direct = keyed.where(F.col("standard_concept") == "S").select("anatomy_key", F.col("concept_id").alias("target"))
    mapped = keyed.join(maps_to, F.col("concept_id") == F.col("concept_id_1")).select(
        "anatomy_key", F.col("concept_id_2").alias("target"))
    candidates = direct.withColumn("_order", F.lit(0)).unionByName(mapped.withColumn("_order", F.lit(1)))
    best = Window.partitionBy("anatomy_key").orderBy("_order", "target")
    return (candidates.join(standard, "target").withColumn("_rank", F.row_number().over(best))
            .where("_rank = 1").select("anatomy_key", F.col("target").alias("anatomic_site_concept_id")))


def normalise_body_part(column: Column) -> Column:
    """'Abdomen / Pelvis', 'abdomen_pelvis' and 'ABDOMENPELVIS' all become 'ABDOMENPELVIS'."""
    return F.nullif(F.regexp_replace(F.upper(F.trim(column)), r"[^A-Z0-9]", ""), F.lit(""))


def table_concept_id(table_name: str) -> int:
    """The CDM 'Table' concept of a clinical table (measurement, observation)."""
    for row in resource_rows("table_concepts.csv"):
        if row["table_name"] == table_name:
            return int(row["concept_id"])
    raise VocabularyError(f"no table concept shipped for {table_name!r} (resources/table_concepts.csv)")
