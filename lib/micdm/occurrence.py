"""image_occurrence (gold): one row per linked series, ids stable across runs, MERGE on the series UID."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.config import Settings
from micdm.ids import assign_ids
from micdm.tables import TableLocator, merge_into, read_table
from micdm.vocab import body_part_sites, normalise_body_part

__all__ = ["build_image_occurrence", "run_occurrence"]


def build_image_occurrence(series: DataFrame, links: DataFrame, ids: DataFrame, sites: DataFrame,
                           settings: Settings) -> DataFrame:
    """Spec rows from silver series, their links and their ids; unlinked series are left out (see series_link)."""
    linked = links.where(F.col("person_id").isNotNull() & F.col("procedure_occurrence_id").isNotNull())
    root = settings.occurrence.wadors_root
    wadors = F.concat(F.lit(root.rstrip("/") + "/studies/"), F.col("study_instance_uid")) if root else F.lit(None)
    return (
        series.join(linked, series["series_instance_uid"] == linked["image_series_uid"])
        .join(ids, F.col("series_instance_uid") == F.col("natural_key"))
        .withColumn("body_part", normalise_body_part(F.col("body_part_examined")))
        .join(sites, "body_part", "left")
        .select(
            F.col("id").alias("image_occurrence_id"),
            "person_id",
            "procedure_occurrence_id",
            "visit_occurrence_id",
            F.coalesce("anatomic_site_concept_id", F.lit(0)).alias("anatomic_site_concept_id"),
            wadors.alias("wadors_uri"),
            "local_path",
            F.col("image_date").alias("image_occurrence_date"),
            F.col("study_instance_uid").alias("image_study_uid"),
            F.col("series_instance_uid").alias("image_series_uid"),
            F.coalesce("modality", F.lit("OT")).alias("modality"),
        )
    )


def run_occurrence(spark: SparkSession, locator: TableLocator, settings: Settings) -> int:
    """MERGE image_occurrence from dicom_series + series_link; returns the table's row count."""
    series = read_table(spark, locator, "dicom_series")
    ids = assign_ids(spark, locator, "image_occurrence",
                     series.select(F.col("series_instance_uid").alias("natural_key")))
    rows = build_image_occurrence(series, read_table(spark, locator, "series_link"), ids, body_part_sites(spark),
                                  settings)
    merge_into(spark, locator, "image_occurrence", rows, ["image_series_uid"])
    return read_table(spark, locator, "image_occurrence").count()
