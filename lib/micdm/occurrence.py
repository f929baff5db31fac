"""image_occurrence (gold): one row per linked series, ids stable across runs, MERGE on the series UID."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.changes import Changes, changed_keys
from micdm.config import OccurrenceSettings, Settings
from micdm.ids import assign_ids
from micdm.stage import StageCounts
from micdm.tables import TableLocator, read_table, row_count, sync_rows, within
from micdm.vocab import anatomy_sites, normalise_body_part

__all__ = ["build_image_occurrence", "run"]


def build_image_occurrence(series: DataFrame, links: DataFrame, ids: DataFrame, sites: DataFrame,
                           settings: OccurrenceSettings) -> DataFrame:
    """Spec rows from silver series, their links and their ids; unlinked series are left out (see link_exception).

    ``sites`` maps anatomy keys (normalised BodyPartExamined, or ``SCHEME:CODE`` of AnatomicRegionSequence)
    to concepts; a coded region wins over the free-text body part, and nothing mapped gives 0.
    """
    linked = links.where(F.col("exception_reason").isNull())
    root = settings.wadors_root
    wadors = F.concat(F.lit(root.rstrip("/") + "/studies/"), F.col("study_instance_uid")) if root else F.lit(None)
    by_body_part = sites.select(F.col("anatomy_key").alias("body_part"), F.col("anatomic_site_concept_id")
                                .alias("body_part_site"))
    by_region = sites.select(F.col("anatomy_key").alias("anatomic_region_code"), F.col("anatomic_site_concept_id")
                             .alias("region_site"))
    return (
        series.join(linked, series["series_instance_uid"] == linked["image_series_uid"])
        .join(ids, F.col("series_instance_uid") == F.col("natural_key"))
        .withColumn("body_part", normalise_body_part(F.col("body_part_examined")))
        .join(by_body_part, "body_part", "left")
        .join(by_region, "anatomic_region_code", "left")
        .select(
            F.col("id").alias("image_occurrence_id"),
            "person_id",
            "procedure_occurrence_id",
            "visit_occurrence_id",
            F.coalesce("region_site", "body_part_site", F.lit(0)).alias("anatomic_site_concept_id"),
            wadors.alias("wadors_uri"),
            "local_path",
            F.col("image_date").alias("image_occurrence_date"),
            F.col("study_instance_uid").alias("image_study_uid"),
            F.col("series_instance_uid").alias("image_series_uid"),
            F.coalesce("modality", F.lit("OT")).alias("modality"),
        )
    )


def run(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str,
        changes: Changes | None = None) -> StageCounts:
    """Bring image_occurrence in line with dicom_series + series_link for the series whose row changed in
    either (``changes``; every series without it); counts the table's rows.

    A series that lost its link (its person left the CDM, say) is removed, so the table always equals
    what the current links give.
    """
    # A night's few series come listed: dicom_series, series_link and image_occurrence are read by the list,
    # which their bloom filters rule out of the files of earlier runs.
    scope = changed_keys(spark, locator, changes, {
        "dicom_series": lambda feed: feed.select("series_instance_uid"),
        "series_link": lambda feed: feed.select("image_series_uid")})
    series = within(read_table(spark, locator, "dicom_series"), "series_instance_uid", scope)
    links = within(read_table(spark, locator, "series_link"), "image_series_uid", scope)
    linked_series = series.join(links.where(F.col("exception_reason").isNull()).select(
        F.col("image_series_uid").alias("series_instance_uid")), "series_instance_uid", "left_semi")
    ids = assign_ids(spark, locator, "image_occurrence",
                     linked_series.select(F.col("series_instance_uid").alias("natural_key")))
    sites = anatomy_sites(spark, locator, settings.occurrence.anatomy_vocabulary)
    rows = build_image_occurrence(linked_series, links, ids, sites, settings.occurrence)
    sync_rows(spark, locator, "image_occurrence", rows, ["image_series_uid"],
              None if scope is None else ("image_series_uid", scope))
    return {"image_occurrence": row_count(spark, locator, "image_occurrence")}
