"""Series stage: dicom_instance (one row per file) -> dicom_series (one row per SeriesInstanceUID)."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.changes import Changes, KeyOf, changed_keys
from micdm.config import OccurrenceSettings, Settings
from micdm.inventory import present
from micdm.stage import StageCounts
from micdm.tables import Keys, TableLocator, listed, read_table, row_count, sync_rows, within

__all__ = ["build_series", "changed_series", "image_date", "present_instances", "rewrite_prefix", "run",
           "series_of_paths"]


def image_date(date_order: tuple[str, ...]) -> tuple[Column, Column]:
    """The first non-NULL date in the configured order, and the name of the column it came from."""
    value = F.coalesce(*[F.col(c) for c in date_order])
    source = F.coalesce(*[F.when(F.col(c).isNotNull(), F.lit(c)) for c in date_order])
    return value, source


def _parent(path: Column) -> Column:
    return F.regexp_replace(path, r"/[^/]*$", "")


def rewrite_prefix(path: Column, rewrites: dict[str, str]) -> Column:
    """Replace the longest matching prefix, so storage URIs read the way the site names its archive."""
    rewritten = path
    for prefix, replacement in sorted(rewrites.items(), key=lambda item: len(item[0])):
        tail = path.substr(F.lit(len(prefix) + 1), F.length(path))
        rewritten = F.when(path.startswith(prefix), F.concat(F.lit(replacement), tail)).otherwise(rewritten)
    return rewritten


def build_series(instances: DataFrame, settings: OccurrenceSettings) -> DataFrame:
    """Group instances by series; the representative values are the most common non-NULL ones."""
    def mode(name: str) -> Column:
        return F.mode(F.col(name)).alias(name)

    grouped = instances.groupBy("series_instance_uid").agg(
        mode("study_instance_uid"),
        mode("patient_id"),
        mode("issuer_of_patient_id"),
        mode("accession_number"),
        mode("modality"),
        F.array_sort(F.collect_set("modality")).alias("modalities"),
        F.count(F.lit(1)).cast("int").alias("instance_count"),
        F.sum("file_size").alias("total_bytes"),
        F.min("study_date").alias("study_date"),
        F.min("series_date").alias("series_date"),
        F.min("acquisition_date").alias("acquisition_date"),
        F.min("content_date").alias("content_date"),
        mode("body_part_examined"),
        mode("anatomic_region_code"),
        mode("study_description"),
        mode("series_description"),
        mode("manufacturer"),
        mode("manufacturer_model_name"),
        F.array_sort(F.collect_set(_parent(F.col("path")))).alias("_folders"),
    )
    date, source = image_date(settings.date_order)
    # The folder holding the series; when it is spread over folders, their common parent.
    folder = F.when(F.size("_folders") == 1, F.col("_folders")[0]).otherwise(F.expr(_COMMON_FOLDER_SQL))
    return grouped.withColumns({
        "image_date": date,
        "image_date_source": source,
        "local_path": rewrite_prefix(folder, settings.local_path_rewrite),
        "updated_at": F.current_timestamp(),
    }).drop("_folders")


# Longest common leading run of folders over the series' folders (whole path components only).
_COMMON_FOLDER_SQL = """
    aggregate(_folders, _folders[0], (acc, p) -> array_join(slice(split(acc, '/'), 1,
        aggregate(sequence(1, least(size(split(acc, '/')), size(split(p, '/')))),
                  named_struct('n', 0, 'ok', true),
                  (s, i) -> IF(s.ok AND split(acc, '/')[i - 1] = split(p, '/')[i - 1],
                               named_struct('n', s.n + 1, 'ok', true), named_struct('n', s.n, 'ok', false))).n),
        '/'))
"""


def present_instances(spark: SparkSession, locator: TableLocator) -> DataFrame:
    """dicom_instance without the files the last listing no longer found (their rows stay, marked missing)."""
    instances = present(spark, locator, read_table(spark, locator, "dicom_instance"))
    if "header" in instances.columns:  # kept as a VARIANT (extract.header_format): readers take the JSON text
        instances = instances.withColumn("header_json", F.to_json("header"))
    return instances


def _gone_or_back(inventory_feed: DataFrame) -> DataFrame:
    """file_inventory's changes -> the files that went missing or came back."""
    return inventory_feed.where(F.col("missing_since").isNotNull() | (F.col("_change_type") == "delete"))


def series_of_paths(spark: SparkSession, locator: TableLocator,
                    paths: Callable[[DataFrame], DataFrame] = _gone_or_back) -> KeyOf:
    """A change feed -> the series of the instances at the paths ``paths`` picks from it (by default
    file_inventory's files that went missing or came back)."""
    def series(feed: DataFrame) -> DataFrame:
        return within(read_table(spark, locator, "dicom_instance"), "path", listed(paths(feed).select("path"))
                      ).select("series_instance_uid")
    return series


def changed_series(spark: SparkSession, locator: TableLocator, changes: Changes | None) -> Keys | None:
    """The series whose instances changed since ``changes`` was taken (None: every series), listed."""
    return changed_keys(spark, locator, changes, {
        "dicom_instance": lambda feed: feed.select("series_instance_uid"),
        "file_inventory": series_of_paths(spark, locator)})


def run(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str,
        changes: Changes | None = None) -> StageCounts:
    """Bring dicom_series in line with the present instances of the series that changed (every series
    without ``changes``), in one commit; counts the series and the rows written."""
    keys = changed_series(spark, locator, changes)
    instances = within(present_instances(spark, locator), "series_instance_uid", keys)
    written = sync_rows(spark, locator, "dicom_series", build_series(instances, settings.occurrence),
                        ["series_instance_uid"], None if keys is None else ("series_instance_uid", keys),
                        ignored=("updated_at",))
    return {"series": row_count(spark, locator, "dicom_series"), "series written": written}
