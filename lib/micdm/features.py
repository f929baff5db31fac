"""image_feature from acquisition parameters: one measurement row per series and attribute.

Following the DataQualityDashboard convention, measurement_concept_id holds a standard concept (0 when
there is none) and the DICOM attribute concept goes to measurement_source_concept_id, with the tag in
measurement_source_value. Each measurement is linked to its image_occurrence by an image_feature row.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.config import Settings
from micdm.dicom.header import HEADER_ATTRIBUTES
from micdm.errors import ConfigError
from micdm.ids import assign_ids
from micdm.tables import TableLocator, merge_into, read_table
from micdm.vocab import concepts, dicom_attributes, table_concept_id

__all__ = ["acquisition_parameters", "run_features"]


def acquisition_parameters(instances: DataFrame, keywords: tuple[str, ...]) -> DataFrame:
    """Long form (series UID, keyword, tag, unit, number, text): the first non-NULL value per series."""
    known = dicom_attributes()
    unknown = [k for k in keywords if k not in known or k not in HEADER_ATTRIBUTES]
    if unknown:
        raise ConfigError(f"features.acquisition_attributes: {unknown} are not supported; choose from "
                          f"{sorted(set(known) & set(HEADER_ATTRIBUTES))}")
    per_series = instances.groupBy("series_instance_uid").agg(
        *[F.first(HEADER_ATTRIBUTES[k][0], ignorenulls=True).alias(k) for k in keywords]
    )
    dtypes = dict(per_series.dtypes)
    stacked = F.explode(F.array(*[
        F.struct(
            F.lit(k).alias("keyword"),
            F.lit(known[k][0]).alias("tag"),
            F.lit(known[k][1]).alias("unit"),
            (F.col(k).cast("double") if dtypes[k] in ("double", "int", "bigint") else F.lit(None).cast("double"))
            .alias("number"),
            F.col(k).cast("string").alias("text"),
        )
        for k in keywords
    ]))
    return per_series.select("series_instance_uid", stacked.alias("p")).select("series_instance_uid", "p.*").where(
        F.col("text").isNotNull())


def run_features(spark: SparkSession, locator: TableLocator, settings: Settings) -> int:
    """MERGE measurement + image_feature rows for every image_occurrence; returns image_feature's row count."""
    cfg = settings.features
    occurrences = read_table(spark, locator, "image_occurrence")
    params = acquisition_parameters(read_table(spark, locator, "dicom_instance"), cfg.acquisition_attributes).join(
        occurrences, F.col("series_instance_uid") == F.col("image_series_uid"))
    params = params.withColumn("natural_key", F.concat_ws("|", "series_instance_uid", "tag"))
    vocabulary = concepts(spark, locator)
    attribute_concepts = vocabulary.where(F.col("vocabulary_id") == "DICOM").select(
        F.col("concept_code").alias("tag"), F.col("concept_id").alias("attribute_concept_id"))
    unit_concepts = vocabulary.where(F.col("vocabulary_id") == "UCUM").select(
        F.col("concept_code").alias("unit"), F.col("concept_id").alias("unit_concept_id"))
    params = params.join(attribute_concepts, "tag", "left").join(unit_concepts, "unit", "left").localCheckpoint()

    floor = read_table(spark, locator, "measurement").agg(F.max("measurement_id")).first()[0] or 0
    measurement_ids = assign_ids(spark, locator, "measurement", params, floor=floor)
    feature_ids = assign_ids(spark, locator, "image_feature", params)
    rows = params.join(measurement_ids.withColumnRenamed("id", "measurement_id"), "natural_key").join(
        feature_ids.withColumnRenamed("id", "image_feature_id"), "natural_key")
    measurements = rows.select(
        "measurement_id",
        "person_id",
        F.lit(0).alias("measurement_concept_id"),
        F.col("image_occurrence_date").alias("measurement_date"),
        F.lit(cfg.measurement_type_concept_id).alias("measurement_type_concept_id"),
        F.col("number").alias("value_as_number"),
        F.coalesce("unit_concept_id", F.lit(0)).alias("unit_concept_id"),
        "visit_occurrence_id",
        F.col("tag").alias("measurement_source_value"),
        F.coalesce("attribute_concept_id", F.lit(0)).alias("measurement_source_concept_id"),
        F.col("unit").alias("unit_source_value"),
        F.substring("text", 1, 50).alias("value_source_value"),
    )
    features = rows.select(
        "image_feature_id",
        "person_id",
        "image_occurrence_id",
        F.lit(table_concept_id("measurement")).alias("table_concept_id"),
        F.col("measurement_id").alias("table_row_id"),
        F.coalesce("attribute_concept_id", F.lit(0)).alias("image_feature_concept_id"),
        F.lit(cfg.feature_type_concept_id).alias("image_feature_type_concept_id"),
        "anatomic_site_concept_id",
    )
    merge_into(spark, locator, "measurement", measurements, ["measurement_id"])
    merge_into(spark, locator, "image_feature", features, ["image_feature_id"])
    return read_table(spark, locator, "image_feature").count()
