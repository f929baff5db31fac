"""Structured reports and segmentations as features, and the SR tables for analysts (Spark).

Each report's content items (sr_content_item, kept whole by extract) are read as one tree by
dicom/sr.py; segmentations' segments come from their stored header (dicom/seg.py). Every group of values
is then put on the image_occurrence of the images it describes, found in this order: its own image
references (direct or under SCOORD / SCOORD3D), its 121232 source series, the source series of the
segmentation it references, the report's evidence, and only for a report that names no images at all,
the report's own series. The first of these that a group names decides: a group whose images were not
ingested is quarantined (series_not_in_image_occurrence), never put on another series.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StructType

from micdm.concurrency import run_concurrently
from micdm.config import FeatureSettings
from micdm.dicom.seg import segment_items
from micdm.dicom.sr import analyse_report
from micdm.dicom.sr_content import SR_CLASS_PREFIX
from micdm.reasons import FeatureDomain, FeatureReason
from micdm.schema import FEATURE_ROW, REPORT_GROUP, REPORT_ITEM, REPORT_PROBLEM
from micdm.tables import Keys, TableLocator, conform, listed, narrowed, read_table, row_count, sync_rows, within
from micdm.vocab import coding_scheme_vocabularies

__all__ = ["SEG_CLASSES", "ReportFeatures", "is_report_or_segmentation", "report_features", "write_sr_tables"]

#: SOP classes of segmentations (.66.4, label maps .66.7).
SEG_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
#: How a group found its series, by precedence (the sr_measurement_group.placed_by values).
PLACED_BY = {1: "image_reference", 2: "source_series", 3: "segmentation", 4: "evidence", 5: "report"}


def is_report_or_segmentation(sop_class_uid: Column) -> Column:
    """The instances whose content the features stage reads beyond their header's attributes."""
    return sop_class_uid.startswith(SR_CLASS_PREFIX) | sop_class_uid.isin(*SEG_CLASSES)


_ANALYSIS = (StructType().add("items", ArrayType(REPORT_ITEM)).add("groups", ArrayType(REPORT_GROUP))
             .add("problems", ArrayType(REPORT_PROBLEM)))


def _refused(reason: str, message: str) -> dict[str, Any]:
    return {"items": [], "groups": [], "problems": [{"position": "1", "reason": reason, "message": message}]}


@F.udf(returnType=_ANALYSIS)
def _analyse(content: list[Row] | None, reason: str | None, message: str | None) -> dict[str, Any]:
    if reason:
        return _refused(reason, message or reason)
    if not content:
        return _refused(FeatureReason.SR_NO_CONTENT.value, "no content items stored for this report; re-extract it "
                                         "(extract.full_refresh) if it was read by an older micdm")
    return analyse_report(row.asDict(recursive=True) for row in content).as_row()


@F.udf(returnType=_ANALYSIS)
def _segments(header_json: str | None) -> dict[str, Any]:
    items, reason, message = segment_items(header_json)
    return _refused(reason, message or reason) if reason else {"items": items, "groups": [], "problems": []}


@dataclass(frozen=True)
class ReportFeatures:
    """What the reports of one run give: feature rows, quarantine rows, and the parts of the SR tables."""

    features: DataFrame
    quarantine: DataFrame
    groups: DataFrame
    """Every group of every report, with the occurrence it was put on (NULL when it could not be)."""
    items: DataFrame
    """The placed values of structured reports (not segmentations), with their natural and finding keys."""


def _analysed(spark: SparkSession, locator: TableLocator, instances: DataFrame, redone: Keys | None
              ) -> DataFrame:
    is_report = F.col("sop_class_uid").startswith(SR_CLASS_PREFIX)
    keep = ["path", "sop_instance_uid", "series_instance_uid", "study_instance_uid", "referenced_series",
            "content_date", "content_time"]
    # kept: the reports' content, their analysis and the segmentations' all start from them
    few = listed(redone)
    reports = within(instances.where(is_report_or_segmentation(F.col("sop_class_uid"))), "sop_instance_uid",
                     few).select(*keep, "sop_class_uid", "header_json", "sr_content_reason",
                                 "sr_content_message").localCheckpoint(eager=False)
    content = narrowed(read_table(spark, locator, "sr_content_item"), "sop_instance_uid", few).join(
        reports.where(is_report).select("path", "sop_instance_uid"), ["path", "sop_instance_uid"], "left_semi")
    columns = [c for c in content.columns if c not in ("path", "sop_instance_uid", "run_id")]
    trees = content.groupBy("path", "sop_instance_uid").agg(F.collect_list(F.struct(*columns)).alias("content"))
    reported = reports.where(is_report).join(trees, ["path", "sop_instance_uid"], "left").withColumns({
        "a": _analyse("content", "sr_content_reason", "sr_content_message"), "is_sr": F.lit(True)})
    segmented = reports.where(~is_report).withColumns({"a": _segments("header_json"), "is_sr": F.lit(False)})
    return reported.select(*keep, "is_sr", "a").unionByName(segmented.select(*keep, "is_sr", "a")).localCheckpoint()


def _candidates(analysed: DataFrame, groups: DataFrame, keys: DataFrame, instances: DataFrame) -> DataFrame:
    """(sop_instance_uid, group, tier, rank, series) for every series a group could be put on."""
    named = groups.select(F.explode("image_sops")).unionByName(groups.select(F.explode("seg_sops")))
    known = narrowed(instances, "sop_instance_uid", listed(named)).select(
        F.col("sop_instance_uid").alias("_ref"), F.col("series_instance_uid").alias("_series"),
        F.col("referenced_series").alias("_sources"))
    key = ["sop_instance_uid", "group"]
    images = groups.select(*key, F.posexplode(F.arrays_zip("image_sops", "image_series")).alias("rank", "r")) \
        .join(known, F.col("r.image_sops") == F.col("_ref"), "left") \
        .select(*key, F.lit(1).alias("tier"), "rank", F.coalesce("_series", "r.image_series").alias("series"))
    sources = groups.select(*key, F.lit(2).alias("tier"), F.posexplode("source_series").alias("rank", "series"))
    segmentations = groups.select(*key, F.posexplode("seg_sops").alias("rank", "_seg")) \
        .join(known, F.col("_seg") == F.col("_ref"), "left") \
        .select(*key, F.lit(3).alias("tier"), "rank", F.explode_outer("_sources").alias("series"))
    reports = analysed.select("sop_instance_uid", "referenced_series", F.col("series_instance_uid").alias("_own"))
    evidence = keys.join(reports, "sop_instance_uid").select(
        *key, F.lit(4).alias("tier"), F.posexplode("referenced_series").alias("rank", "series"))
    own = keys.join(reports, "sop_instance_uid").select(*key, F.lit(5).alias("tier"), F.lit(0).alias("rank"),
                                                        F.col("_own").alias("series"))
    return images.unionByName(sources).unionByName(segmentations).unionByName(evidence).unionByName(own)


def _placements(analysed: DataFrame, groups: DataFrame, items: DataFrame, instances: DataFrame,
                occurrences: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(placed, unplaced): per (report, group) the occurrence its values go to, or the series it named."""
    key = ["sop_instance_uid", "group"]
    keys = groups.select(*key).unionByName(items.select(*key)).distinct()
    candidates = _candidates(analysed, groups, keys, instances)
    # the candidates of each group's lowest tier, in one pass over them (a join with their minima reads them twice)
    decisive = F.min("tier").over(Window.partitionBy(*key))
    named = candidates.where(F.col("sop_instance_uid").isNotNull() & F.col("group").isNotNull()).withColumn(
        "_decisive", decisive).where(F.col("tier") == F.col("_decisive")).drop("_decisive").localCheckpoint()
    placed = named.join(occurrences, F.col("series") == F.col("image_series_uid")).groupBy(*key).agg(
        F.min_by(F.struct("tier", *[F.col(c) for c in occurrences.columns]), "rank").alias("o")) \
        .select(*key, "o.*").withColumn("placed_by", _placed_by(F.col("tier"))).drop("tier").localCheckpoint()
    unplaced = named.join(placed.select(*key), key, "left_anti").groupBy(*key, "tier").agg(
        F.array_join(F.array_sort(F.collect_set("series")), ", ").alias("series"))
    return placed, unplaced


def _placed_by(tier: Column) -> Column:
    return F.element_at(F.create_map(*[F.lit(v) for pair in PLACED_BY.items() for v in pair]), tier)


def _content_datetime(date: Column, time: Column) -> Column:
    digits = F.rpad(F.substring(F.regexp_replace(F.coalesce(time, F.lit("")), "[^0-9]", ""), 1, 6), 6, "0")
    return F.try_to_timestamp(F.concat(F.date_format(date, "yyyyMMdd"), digits), F.lit("yyyyMMddHHmmss"))


def _quarantine(analysed: DataFrame, unplaced: DataFrame) -> DataFrame:
    problems = analysed.select("path", "sop_instance_uid", "series_instance_uid",
                               F.explode("a.problems").alias("p")).select(
        "path", "sop_instance_uid", "series_instance_uid", "p.reason", "p.message")
    lost = unplaced.join(analysed.select("path", "sop_instance_uid", "series_instance_uid"), "sop_instance_uid") \
        .select("path", "sop_instance_uid", "series_instance_uid",
                F.lit(FeatureReason.SERIES_NOT_IN_IMAGE_OCCURRENCE.value).alias("reason"),
                F.concat(F.when(F.col("group") > 0, F.concat(F.lit("group "), F.col("group").cast("string")))
                         .otherwise(F.lit("report")), F.lit(": "), _placed_by(F.col("tier")),
                         F.lit(" names series not in image_occurrence: "),
                         F.when(F.col("series") == "", F.lit("(images not ingested, series unknown)"))
                .otherwise(F.col("series"))).alias("message"))
    return problems.unionByName(lost)


def report_features(spark: SparkSession, locator: TableLocator, instances: DataFrame, occurrences: DataFrame,
                    cfg: FeatureSettings, redone: Keys | None = None) -> ReportFeatures:
    """Features, quarantine rows and SR-table parts from the structured reports and segmentations whose SOP
    instance UID is in ``redone`` (every one when None); ``instances`` and ``occurrences`` whole, as a
    report may name any of them."""
    analysed = _analysed(spark, locator, instances, redone)
    reports = analysed.select("sop_instance_uid", "series_instance_uid", "study_instance_uid",
                              _content_datetime(F.col("content_date"), F.col("content_time")).alias("created"))
    groups = analysed.select("sop_instance_uid", F.explode("a.groups").alias("g")).select(
        "sop_instance_uid", "g.*").withColumn("group", F.col("finding_group"))
    items = analysed.select("sop_instance_uid", F.explode("a.items").alias("i")).select(
        "sop_instance_uid", "i.*").withColumn("group", F.coalesce("finding_group", F.lit(0)))
    placed, unplaced = _placements(analysed, groups, items, instances, occurrences)
    # Kept: the features and two of the SR tables read it, each of which would join it again.
    located = items.join(placed, ["sop_instance_uid", "group"]).join(reports, "sop_instance_uid").withColumns({
        "natural_key": F.concat_ws("|", F.lit("sr"), "sop_instance_uid", F.regexp_replace("position", r"^1\.", "")),
        "finding_key": F.when(F.col("finding_group").isNotNull(),
                              F.concat_ws("|", "sop_instance_uid", F.col("finding_group").cast("string")))}
    ).localCheckpoint(eager=False)
    vocabulary = coding_scheme_vocabularies()
    is_num = F.col("value_type") == "NUM"
    features = conform(located.select(
        "natural_key", F.when(is_num, F.lit(FeatureDomain.MEASUREMENT.value))
        .otherwise(F.lit(FeatureDomain.OBSERVATION.value)).alias("domain"),
        "person_id", "image_occurrence_id", "visit_occurrence_id",
        F.coalesce(F.to_date("created"), "image_occurrence_date").alias("event_date"),
        F.col("created").alias("event_datetime"),
        vocabulary[F.col("concept_scheme")].alias("concept_vocabulary"), "concept_code",
        F.concat_ws(":", "concept_scheme", "concept_code").alias("source_value"),
        "number", "unit_code",
        vocabulary[F.col("value_scheme")].alias("value_vocabulary"), "value_code",
        # a NUM's text is how it was derived ('Mean', 'Mean, Right'), a CODE's the meaning of its value
        F.coalesce("modifier", "value_meaning", "value_code").alias("value_text"),
        "finding_key", vocabulary[F.col("finding_scheme")].alias("finding_vocabulary"), "finding_code",
        vocabulary[F.col("site_scheme")].alias("site_vocabulary"), "site_code",
        F.col("anatomic_site_concept_id").alias("occurrence_site_concept_id"),
        F.lit(cfg.sr_type_concept_id).alias("type_concept_id"),
        F.lit(cfg.sr_feature_type_concept_id).alias("feature_type_concept_id"),
        F.col("algorithm").alias("alg_system"),
        F.when(F.col("algorithm").isNotNull(), F.col("created")).alias("alg_datetime"),
    ), FEATURE_ROW)
    sr_reports = analysed.where("is_sr").select("sop_instance_uid")
    # Kept: sr_measurement_group and both item tables read it.
    sr_groups = groups.join(placed, ["sop_instance_uid", "group"], "left").join(reports, "sop_instance_uid") \
        .localCheckpoint(eager=False)
    return ReportFeatures(features, _quarantine(analysed, unplaced), sr_groups,
                          located.join(sr_reports, "sop_instance_uid", "left_semi"))


def write_sr_tables(spark: SparkSession, locator: TableLocator, reported: ReportFeatures, ids: DataFrame,
                    redone: Keys | None = None) -> dict[str, int]:
    """Bring sr_measurement_group, sr_quantitative and sr_qualitative in line (rows that changed only) for
    the reports in ``redone`` (every report when None); ``ids`` maps natural_key to the measurement_id /
    observation_id and finding_key to the image_finding_id the features got."""
    now = F.current_timestamp()
    placement: list[Column | str] = ["person_id", "image_occurrence_id", "image_series_uid",
                 F.col("series_instance_uid").alias("report_series_uid"), "study_instance_uid"]
    context: list[Column | str] = ["tracking_id", "tracking_uid", "finding_scheme", "finding_code", "finding_meaning",
               F.try_element_at("source_series", F.lit(1)).alias("source_series_uid"),
               F.try_element_at("seg_sops", F.lit(1)).alias("segmentation_sop_uid"), "segment_numbers"]
    findings = ids.where(F.col("finding_key").isNotNull()).select("finding_key", "image_finding_id").distinct()
    groups = reported.groups.withColumn(
        "finding_key", F.concat_ws("|", "sop_instance_uid", F.col("finding_group").cast("string"))).join(
        findings, "finding_key", "left")
    group_rows = groups.select(
        "sop_instance_uid", "finding_group", "image_finding_id", *placement, *context, "placed_by", "position",
        F.col("concept_code").alias("group_concept_code"), F.col("concept_meaning").alias("group_concept_meaning"),
        "template_id", "finding_category_scheme", "finding_category_code", "finding_category_meaning",
        "site_scheme", "site_code", "site_meaning", "site_laterality", "method", "algorithm_name", "algorithm_version",
        F.col("image_sops").alias("referenced_sop_uids"), "frame_of_reference_uid",
        F.to_date("created").alias("content_date"), now.alias("updated_at"))
    group_context = groups.select("sop_instance_uid", "finding_group", *context[:2],
                                  *[F.col(c).alias(f"_group_{c}") for c in ("finding_scheme", "finding_code")],
                                  "finding_meaning", *context[5:])
    items = reported.items.drop("tracking_id").join(group_context, ["sop_instance_uid", "finding_group"], "left") \
        .join(ids.select("natural_key", "measurement_id", "observation_id", "image_finding_id"), "natural_key") \
        .localCheckpoint(eager=False)  # both item tables read it
    item_columns: list[Column | str] = [
        "sop_instance_uid", "finding_group", "image_finding_id", *placement, "tracking_id", "tracking_uid",
        F.col("_group_finding_scheme").alias("finding_scheme"), F.col("_group_finding_code").alias("finding_code"),
        "finding_meaning", "source_series_uid", "segmentation_sop_uid", "segment_numbers", "position",
        "concept_scheme", "concept_code", "concept_meaning", "site_scheme", "site_code", "site_meaning", "derivation",
        "laterality", "method", "modifier", "algorithm", now.alias("updated_at")]
    quantitative = items.where(F.col("value_type") == "NUM").select(
        *item_columns, F.col("number").alias("value"), "unit_code", "unit_meaning", "measurement_id")
    qualitative = items.where(F.col("value_type") == "CODE").select(
        *item_columns, "value_scheme", "value_code", "value_meaning", "observation_id")
    written = {"sr_measurement_group": group_rows, "sr_quantitative": quantitative, "sr_qualitative": qualitative}
    scope = None if redone is None else ("sop_instance_uid", redone)
    run_concurrently(*[functools.partial(sync_rows, spark, locator, name, rows, None, scope, ignored=("updated_at",))
                       for name, rows in written.items()])
    return {name: row_count(spark, locator, name) for name in written}
