"""image_feature: acquisition parameters, structured reports, segmentations and imported algorithm results.

Every feature becomes one row of a clinical table (NUM values and acquisition parameters in measurement,
coded SR evaluations in observation) and one image_feature row pointing at it (table_concept_id +
table_row_id). Following the DataQualityDashboard convention, *_concept_id holds a standard concept (0
when there is none) and the source concept (a DICOM attribute, an SR code) goes to *_source_concept_id,
with its code in *_source_value. Ids are allocated once per natural key (id_map), above the site's own.
"""

from __future__ import annotations

import functools
import logging

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.acquisition import acquisition_features
from micdm.changes import Changes, changed_keys
from micdm.concurrency import run_concurrently
from micdm.config import FeatureSettings, Settings
from micdm.errors import ConfigError
from micdm.ids import assign_ids_by_namespace
from micdm.ownership import release_clashing_ids, remove_site_rows, site_floor, write_site_rows
from micdm.reasons import FeatureDomain, FeatureReason
from micdm.reports import ReportFeatures, is_report_or_segmentation, report_features, write_sr_tables
from micdm.schema import FEATURE_ROW, KEY_SOURCE
from micdm.series import present_instances, series_of_paths
from micdm.stage import StageCounts
from micdm.tables import (
    Keys,
    TableLocator,
    aggregate,
    as_frame,
    conform,
    delete_keys,
    key_count,
    listed,
    merge_into,
    read_table,
    row_count,
    sync_rows,
    within,
)
from micdm.vocab import concepts, site_relationships, table_concept_id

__all__ = ["ALGORITHM_RESULT_COLUMNS", "algorithm_features", "read_algorithm_results", "reports_to_redo", "run"]

log = logging.getLogger(__name__)

#: Columns of an algorithm-results file (CSV with a header row, or Parquet); see the README.
ALGORITHM_RESULT_COLUMNS = {
    "series_instance_uid": True, "feature_vocabulary": True, "feature_code": True, "value_as_number": False,
    "value_vocabulary": False, "value_code": False, "unit": False, "finding_id": False, "alg_system": True,
    "alg_datetime": True,
}


def read_algorithm_results(spark: SparkSession, path: str) -> DataFrame:
    """An algorithm-results file or folder (Parquet when the name says so, else CSV), columns checked."""
    reader = spark.read.parquet if path.rstrip("/").endswith(".parquet") else spark.read.option("header", True).csv
    results = reader(path)
    missing = [c for c, required in ALGORITHM_RESULT_COLUMNS.items() if required and c not in results.columns]
    if missing:
        raise ConfigError(f"features.algorithm_results: {path} lacks the columns {missing}; expected "
                          f"{list(ALGORITHM_RESULT_COLUMNS)}")
    for column in ALGORITHM_RESULT_COLUMNS:
        if column not in results.columns:
            results = results.withColumn(column, F.lit(None).cast("string"))
    return results.select(*[F.col(c).cast("string") for c in ALGORITHM_RESULT_COLUMNS]).withColumn(
        "_file", F.lit(path))


def algorithm_features(results: DataFrame, occurrences: DataFrame, cfg: FeatureSettings
                       ) -> tuple[DataFrame, DataFrame]:
    """(features, quarantine) from imported algorithm results: numbers become measurements, codes
    observations; a result whose series has no image_occurrence is quarantined."""
    number = F.col("value_as_number").cast("double")
    missing_key = F.col("series_instance_uid").isNull() | F.col("feature_code").isNull()
    bad = (F.when(missing_key, F.lit(FeatureReason.ALG_MISSING_KEY.value))
           .when(F.col("alg_system").isNull(), F.lit(FeatureReason.ALG_MISSING_SYSTEM.value))
           .when(F.col("value_as_number").isNotNull() & number.isNull(), F.lit(FeatureReason.ALG_BAD_VALUE.value))
           .when(F.col("image_occurrence_id").isNull(), F.lit(FeatureReason.SERIES_NOT_IN_IMAGE_OCCURRENCE.value)))
    joined = results.join(occurrences, F.col("series_instance_uid") == F.col("image_series_uid"), "left").withColumn(
        "_reason", bad)
    quarantine = joined.where(F.col("_reason").isNotNull()).select(
        F.col("_file").alias("path"), "series_instance_uid",
        F.col("_reason").alias("reason"),
        F.concat_ws(" ", F.lit("feature"), F.concat_ws(":", "feature_vocabulary", "feature_code"), F.lit("from"),
                    "alg_system").alias("message"))
    good = joined.where(F.col("_reason").isNull())
    alg_datetime = F.to_timestamp("alg_datetime")
    coded = F.col("value_code").isNotNull() & number.isNull()
    features = conform(good.select(
        F.concat_ws("|", F.lit("alg"), "alg_system", "series_instance_uid", "feature_vocabulary", "feature_code",
                    F.coalesce("finding_id", F.lit(""))).alias("natural_key"),
        F.when(coded, F.lit(FeatureDomain.OBSERVATION.value))
        .otherwise(F.lit(FeatureDomain.MEASUREMENT.value)).alias("domain"),
        "person_id", "image_occurrence_id", "visit_occurrence_id",
        F.coalesce(F.to_date(alg_datetime), "image_occurrence_date").alias("event_date"),
        alg_datetime.alias("event_datetime"),
        F.col("feature_vocabulary").alias("concept_vocabulary"), F.col("feature_code").alias("concept_code"),
        F.concat_ws(":", "feature_vocabulary", "feature_code").alias("source_value"),
        number.alias("number"), F.col("unit").alias("unit_code"),
        "value_vocabulary", "value_code", F.col("value_code").alias("value_text"),
        F.when(F.col("finding_id").isNotNull(), F.concat_ws("|", "alg_system", "series_instance_uid", "finding_id"))
        .alias("finding_key"),
        F.col("anatomic_site_concept_id").alias("occurrence_site_concept_id"),
        F.lit(cfg.algorithm_type_concept_id).alias("type_concept_id"),
        F.lit(cfg.algorithm_feature_type_concept_id).alias("feature_type_concept_id"),
        "alg_system", alg_datetime.alias("alg_datetime"),
    ), FEATURE_ROW)
    return features, quarantine


#: The (vocabulary, code) column pairs of a feature row that _resolve_concepts looks up.
_CODED = (("concept_vocabulary", "concept_code"), ("value_vocabulary", "value_code"),
          ("finding_vocabulary", "finding_code"), ("site_vocabulary", "site_code"))


def _codes_used(features: DataFrame) -> DataFrame:
    pairs = [features.select(F.col(v).alias("vocabulary_id"), F.col(c).alias("concept_code")) for v, c in _CODED]
    pairs.append(features.select(F.lit("UCUM").alias("vocabulary_id"), F.col("unit_code").alias("concept_code")))
    return functools.reduce(DataFrame.unionByName, pairs).where(F.col("concept_code").isNotNull()).distinct()


#: The domains a standard concept may have in the fields micdm fills (the DataQualityDashboard's fkDomain);
#: each looked-up code gets the lowest standard concept of each, in columns ``<role>_<slug>``.
_DOMAINS = {"measurement": "Measurement", "unit": "Unit", "meas_value": "Meas Value", "condition": "Condition",
            "site": "Spec Anatomic Site"}


def _concept_lookup(features: DataFrame, spark: SparkSession, locator: TableLocator) -> DataFrame:
    """Per (vocabulary, code) the features use: its concept (the source concept) and the standard concepts
    it is or 'Maps to', as valid standard rows of the site's CONCEPT, lowest id per domain and overall."""
    vocabulary = concepts(spark, locator).where(F.col("invalid_reason").isNull())
    by_code = vocabulary.join(_codes_used(features), ["vocabulary_id", "concept_code"], "left_semi").select(
        "vocabulary_id", "concept_code", "concept_id", "standard_concept", "domain_id").localCheckpoint()
    standard = vocabulary.where(F.col("standard_concept") == "S").select(
        F.col("concept_id").alias("_target"), F.col("domain_id").alias("_domain"))
    direct = by_code.where(F.col("standard_concept") == "S").select(
        "vocabulary_id", "concept_code", F.col("concept_id").alias("_target"), F.col("domain_id").alias("_domain"))
    mapped = by_code.join(site_relationships(spark, locator, "Maps to"), F.col("concept_id") == F.col("concept_id_1")) \
        .join(standard, F.col("concept_id_2") == F.col("_target")).select("vocabulary_id", "concept_code", "_target",
                                                                          "_domain")
    targets = direct.unionByName(mapped)
    return by_code.groupBy("vocabulary_id", "concept_code").agg(F.min("concept_id").alias("source")).join(
        targets.groupBy("vocabulary_id", "concept_code").agg(
            F.min("_target").alias("standard"),
            *[F.min(F.when(F.col("_domain") == domain, F.col("_target"))).alias(slug)
              for slug, domain in _DOMAINS.items()]),
        ["vocabulary_id", "concept_code"], "left").localCheckpoint()


def _resolve_concepts(features: DataFrame, spark: SparkSession, locator: TableLocator) -> DataFrame:
    """Adds ``<role>_source``, ``<role>_standard`` and ``<role>_<domain slug>`` for the feature's concept,
    value, finding, site and unit codes."""
    lookup = _concept_lookup(features, spark, locator)

    def resolve(frame: DataFrame, prefix: str, vocabulary_column: Column, code_column: str) -> DataFrame:
        keyed = F.broadcast(lookup).select(
            F.col("vocabulary_id").alias(f"{prefix}_v"), F.col("concept_code").alias(f"{prefix}_c"),
            *[F.col(c).alias(f"{prefix}_{c}") for c in ("source", "standard", *_DOMAINS)])
        matches = (F.col(f"{prefix}_v") == vocabulary_column) & (F.col(f"{prefix}_c") == F.col(code_column))
        return frame.join(keyed, matches, "left").drop(f"{prefix}_v", f"{prefix}_c")

    for vocabulary_column, code_column in _CODED:
        features = resolve(features, code_column.removesuffix("_code"), F.col(vocabulary_column), code_column)
    features = resolve(features, "unit", F.lit("UCUM"), "unit_code")
    # A DICOM defined term counts only as a value its attribute 'Maps to value' (Modality CT, not CT anywhere).
    allowed = site_relationships(spark, locator, "Maps to value").select(
        F.col("concept_id_1").alias("concept_source"), F.col("concept_id_2").alias("value_source"),
        F.lit(True).alias("_allowed"))
    outside = (F.col("value_vocabulary") == "DICOM") & F.col("_allowed").isNull()
    resolved = [f"value_{c}" for c in ("source", "standard", *_DOMAINS)]
    return features.join(allowed, ["concept_source", "value_source"], "left").withColumns({
        c: F.when(outside, F.lit(None)).otherwise(F.col(c)) for c in resolved}).drop("_allowed")


_CLINICAL = {"measurement": "measurement_id", "observation": "observation_id"}
#: What made a feature, by the start of its natural key (a segment's position starts with 'segment.').
_KINDS = {"acquisition": "header|", "segmentation": "sr|%|segment.%", "structured_report": "sr|", "algorithm": "alg|"}


def _by_kind(features: DataFrame) -> dict[str, int]:
    """Features written per kind (acquisition, structured_report, segmentation, algorithm): what the run made."""
    key = F.col("natural_key")
    segment = key.like(_KINDS["segmentation"])
    counted = aggregate(features, *[F.count_if(segment if kind == "segmentation" else key.startswith(prefix)
                                               & ~segment).alias(kind) for kind, prefix in _KINDS.items()])
    return {kind: counted[kind] for kind in _KINDS}


def _with_ids(spark: SparkSession, locator: TableLocator, features: DataFrame) -> tuple[DataFrame, int]:
    """measurement_id / observation_id (in micdm's block of the site's table), image_feature_id and
    image_finding_id. An id the site has since taken for a row of its own is given up for a new one; the
    second value counts those."""
    def allocate() -> dict[str, DataFrame]:
        requests = {domain: (features.where(F.col("domain") == domain), site_floor(spark, locator, domain))
                    for domain in _CLINICAL}
        requests["image_feature"] = (features, 0)
        requests["image_finding"] = (features.select(F.col("finding_key").alias("natural_key")), 0)
        return assign_ids_by_namespace(spark, locator, requests)

    ids = allocate()
    reallocated = release_clashing_ids(spark, locator, {domain: ids[domain] for domain in _CLINICAL})
    if reallocated:
        ids = allocate()
    rows = features
    for domain, id_column in _CLINICAL.items():
        rows = rows.join(ids[domain].withColumnRenamed("id", id_column), "natural_key", "left")
    return rows.join(ids["image_feature"].withColumnRenamed("id", "image_feature_id"), "natural_key").join(
        ids["image_finding"].select(F.col("natural_key").alias("finding_key"), F.col("id").alias("image_finding_id")),
        "finding_key", "left"), reallocated


def _source_of_key() -> Column:
    """The second part of a feature's natural key: the series of an acquisition parameter
    (header|<series UID>|<attribute>...), the report of a report's value (sr|<SOP instance UID>|<position>):
    what id_map.source holds, computed as its writer computes it for rows stored without one."""
    return F.expr(KEY_SOURCE)


def _drop_stale(spark: SparkSession, locator: TableLocator, rows: DataFrame, scope: Keys | None,
                reports: Keys | None, algorithm: bool) -> int:
    """Remove the features this run no longer makes among those it redid: acquisition parameters of the
    series in ``scope`` (every series when None; an attribute left the selection, a value left its series,
    the series went), those of the reports in ``reports`` (every report when None; a report went, a group
    lost its series, a value moved between measurement and observation) and, when ``algorithm`` results
    are read, every algorithm feature (a result row went). Their image_feature rows go, and their
    measurement and observation rows where those are still as micdm wrote them; their ids stay in id_map
    for a feature that comes back, but for an id at which the site has put a row of its own (left to the
    site, ownership.remove_site_rows). Returns how many features went.

    Without results to read, no algorithm feature is left from earlier runs: reading them was a setting,
    and a change of settings redoes every series (scope None), which drops them all."""
    made = read_table(spark, locator, "id_map").where(F.col("namespace").isin("image_feature", *_CLINICAL))
    key = F.col("natural_key")
    by_source = made
    if isinstance(scope, list) and isinstance(reports, list):
        # A night's series and reports are few: the rows made from them are looked up by their list, which
        # id_map.source's bloom filters rule out of the files of earlier runs. Rows an older micdm stored
        # without a source (none once the column is filled in) are read besides.
        by_source = within(made, "source", scope + reports).unionByName(
            made.where(F.col("source").isNull()))
    acquired = by_source.where(key.startswith(_KINDS["acquisition"]))
    if scope is not None:
        acquired = acquired.join(as_frame(spark, scope, "_series"), _source_of_key() == F.col("_series"),
                                 "left_semi")
    reported = within(by_source.where(key.startswith(_KINDS["structured_report"])).withColumn(
        "sop_instance_uid", _source_of_key()), "sop_instance_uid", reports).drop("sop_instance_uid")
    redone = acquired.unionByName(reported)
    if algorithm or scope is None:
        redone = redone.unionByName(made.where(key.startswith(_KINDS["algorithm"])))
    kept = rows.select("natural_key", F.col("domain").alias("namespace")).unionByName(
        rows.select("natural_key", F.lit("image_feature").alias("namespace")))
    stale = redone.join(kept, ["namespace", "natural_key"], "left_anti").select("namespace", "id").localCheckpoint()
    # ids of features dropped by an earlier run stay stale: only namespaces with such ids are looked at
    namespaces = {row.namespace for row in stale.select("namespace").distinct().collect()}
    removed = sum(remove_site_rows(spark, locator, table, stale.where(F.col("namespace") == table).select("id"))
                  for table in _CLINICAL if table in namespaces)
    held = 0
    if "image_feature" in namespaces:
        features = stale.where(F.col("namespace") == "image_feature").select(F.col("id").alias("image_feature_id"))
        held = read_table(spark, locator, "image_feature").join(features, "image_feature_id", "left_semi").count()
        if held:
            delete_keys(spark, locator, "image_feature", features, ["image_feature_id"])
    if held or removed:
        log.info("features: %d feature(s) and %d clinical row(s) no longer made were removed", held, removed)
    return held


def _series_of_site_rows(spark: SparkSession, locator: TableLocator, table: str, rows: DataFrame) -> DataFrame:
    """The series whose features made micdm's rows among ``rows`` (rows of the site's ``table`` that one of its
    versions holds and the other does not): a reload of the site's table that dropped or altered micdm's rows,
    or put a row of the site's at one of micdm's ids, redoes the features made there, which writes micdm's
    rows again or gives the id up. An acquisition parameter's key names its series, a report's value its
    instance; algorithm results are read whole in every run."""
    made = read_table(spark, locator, "id_map").where(F.col("namespace") == table).join(
        rows.select(F.col(f"{table}_id").alias("id")), "id", "left_semi").select(
        "natural_key", F.coalesce("source", _source_of_key()).alias("source"))
    key = F.col("natural_key")
    reported = made.where(key.startswith(_KINDS["structured_report"])).select(F.col("source").alias("sop_instance_uid"))
    return made.where(key.startswith(_KINDS["acquisition"])).select("source").unionByName(
        read_table(spark, locator, "dicom_instance").join(reported, "sop_instance_uid", "left_semi").select(
            F.col("series_instance_uid").alias("source")))


def reports_to_redo(spark: SparkSession, locator: TableLocator, scope: Keys | None,
                    changes: Changes | None = None) -> DataFrame | None:
    """SOP instance UIDs of the reports and segmentations to redo (None: all): every one of a patient one of
    whose series is in ``scope`` (a report names images of its own patient, priors included), every one that
    names a series in ``scope`` (images filed under another PatientID, as after a merge in the PACS), and any
    whose instance row ``changes`` removed or rewrote (a report deleted, damaged or re-sent as another
    instance: its features go).

    A report names series in its header (``referenced_series``: evidence, referenced series) and in its
    content items: a source series (UIDREF), an image or a segmentation by its SOP instance UID. Each counts.
    """
    if scope is None:
        return None
    # One read of dicom_instance: the instances of the scope and every report, which are few beside it.
    flagged = read_table(spark, locator, "dicom_instance").select(
        "sop_instance_uid", "referenced_series", F.coalesce("patient_id", F.lit("")).alias("_patient"),
        is_report_or_segmentation(F.col("sop_class_uid")).alias("_report"), "series_instance_uid").join(
        as_frame(spark, scope, "series_instance_uid").distinct().withColumn("_in_scope", F.lit(True)),
        "series_instance_uid", "left")
    instances = flagged.where(F.col("_report") | F.col("_in_scope").isNotNull()).drop(
        "series_instance_uid").localCheckpoint()
    in_scope = instances.where(F.col("_in_scope").isNotNull())
    reports = instances.where("_report")
    theirs = reports.join(in_scope.select("_patient"), "_patient", "left_semi").select("sop_instance_uid")
    by_header = within(reports.select("sop_instance_uid", F.explode("referenced_series").alias("series_instance_uid")),
                       "series_instance_uid", scope).select("sop_instance_uid")
    # A night's series and instances are few: content items are looked up by their list, which the bloom
    # filters of sr_content_item's values and references rule out of the files of earlier runs.
    items = read_table(spark, locator, "sr_content_item")
    by_source = within(items.where(F.col("value_type") == "UIDREF").select(
        "sop_instance_uid", F.col("text_value").alias("series_instance_uid")), "series_instance_uid", listed(scope)
    ).select("sop_instance_uid")
    # Images of the scope, and segmentations naming it: a report pointing at one is placed through it.
    by_pointer = within(items.select("sop_instance_uid", F.col("referenced_sop_instance_uid").alias("_named")),
                        "_named", listed(in_scope.select("sop_instance_uid").unionByName(by_header))
                        ).select("sop_instance_uid")
    return theirs.unionByName(by_header).unionByName(by_source).unionByName(by_pointer).unionByName(
        _reports_removed(spark, locator, changes)).distinct().localCheckpoint()


def _reports_removed(spark: SparkSession, locator: TableLocator, changes: Changes | None) -> DataFrame:
    """The reports and segmentations whose dicom_instance row a change since the stage's last run deleted or
    replaced, as the feed holds them before the change: what a report made stays until it is redone, and
    its old row is all that names it. Read from the night's commits, where looking for every report that
    made a feature would read each one id_map holds."""
    removed = spark.createDataFrame([], "sop_instance_uid string")
    if changes is None or "dicom_instance" not in changes.changed_tables():
        return removed
    feed = changes.rows(spark, locator, "dicom_instance")
    if feed is None:  # the scope would be None too: every report is redone
        return removed
    return feed.where(F.col("_change_type").isin("delete", "update_preimage")
                      & is_report_or_segmentation(F.col("sop_class_uid"))).select("sop_instance_uid")


def _quarantine_scope(spark: SparkSession, locator: TableLocator, reports: Keys | None
                      ) -> tuple[str, DataFrame] | None:
    """The feature_quarantine rows a run redoes, by path: the reports' and every algorithm result's."""
    if reports is None:
        return None
    stored = read_table(spark, locator, "feature_quarantine")
    return "path", stored.where(F.col("sop_instance_uid").isNull()).select("path").unionByName(
        within(stored, "sop_instance_uid", reports).select("path"))


def run(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str,
        changes: Changes | None = None) -> StageCounts:
    """MERGE measurement, observation and image_feature rows for every image_occurrence; rebuild
    feature_quarantine. Returns row counts.

    Acquisition parameters are redone for the series whose occurrence or instances changed (``changes``), or
    whose rows micdm wrote in the site's measurement or observation the site changed; reports and
    segmentations of those series' patients or naming those series; algorithm results whole.
    """
    instances = present_instances(spark, locator)
    occurrences = read_table(spark, locator, "image_occurrence")
    # Listed once (a night's few series, then its reports), for every lookup and join that follows.
    scope = changed_keys(spark, locator, changes, {
        "image_occurrence": lambda feed: feed.select("image_series_uid"),
        "dicom_instance": lambda feed: feed.select("series_instance_uid"),
        "file_inventory": series_of_paths(spark, locator),
        "instance_attribute": lambda feed: feed.select("series_instance_uid"),
        "sr_content_item": series_of_paths(spark, locator, paths=lambda feed: feed),  # the reports' series
        **{table: functools.partial(_series_of_site_rows, spark, locator, table) for table in _CLINICAL}})
    acquired = within(occurrences, "image_series_uid", scope)
    redone = listed(reports_to_redo(spark, locator, scope, changes))
    acquisition: DataFrame
    reported: ReportFeatures
    acquisition, reported = run_concurrently(
        lambda: acquisition_features(spark, locator, instances, acquired, settings.features, scope),
        lambda: report_features(spark, locator, instances, occurrences, settings.features, redone))
    features, quarantine = acquisition.unionByName(reported.features), reported.quarantine
    if settings.features.algorithm_results:
        results = read_algorithm_results(spark, settings.features.algorithm_results)
        imported, rejected = algorithm_features(results, occurrences, settings.features)
        features = features.unionByName(imported)
        quarantine = quarantine.unionByName(rejected, allowMissingColumns=True)  # results have no SOP UID
    features = _resolve_concepts(features.localCheckpoint(), spark, locator).localCheckpoint()
    rows, reallocated = _with_ids(spark, locator, features)
    rows = rows.localCheckpoint()
    zero = F.lit(0)
    measurements = rows.where(F.col("domain") == FeatureDomain.MEASUREMENT.value).select(
        "measurement_id", "person_id",
        F.coalesce("concept_measurement", zero).alias("measurement_concept_id"),
        F.col("event_date").alias("measurement_date"), F.col("event_datetime").alias("measurement_datetime"),
        F.col("type_concept_id").alias("measurement_type_concept_id"),
        F.col("number").alias("value_as_number"),
        F.coalesce("value_meas_value", "value_source", F.when(F.col("value_code").isNotNull(), zero))
        .alias("value_as_concept_id"),
        F.when(F.col("unit_code").isNotNull(), F.coalesce("unit_unit", zero)).alias("unit_concept_id"),
        "visit_occurrence_id",
        F.substring("source_value", 1, 50).alias("measurement_source_value"),
        F.coalesce("concept_source", zero).alias("measurement_source_concept_id"),
        F.substring("unit_code", 1, 50).alias("unit_source_value"),
        F.substring("value_text", 1, 50).alias("value_source_value"),
    )
    observations = rows.where(F.col("domain") == FeatureDomain.OBSERVATION.value).select(
        "observation_id", "person_id",
        F.coalesce("concept_standard", zero).alias("observation_concept_id"),
        F.col("event_date").alias("observation_date"), F.col("event_datetime").alias("observation_datetime"),
        F.col("type_concept_id").alias("observation_type_concept_id"),
        F.substring("value_text", 1, 60).alias("value_as_string"),
        F.coalesce("value_standard", "value_source", zero).alias("value_as_concept_id"),
        "visit_occurrence_id",
        F.substring("source_value", 1, 50).alias("observation_source_value"),
        F.coalesce("concept_source", zero).alias("observation_source_concept_id"),
        F.substring("value_code", 1, 50).alias("value_source_value"),
    )
    measurement_table, observation_table = table_concept_id("measurement"), table_concept_id("observation")
    is_measurement = F.col("domain") == FeatureDomain.MEASUREMENT.value
    features_rows = rows.select(
        "image_feature_id", "person_id", "image_occurrence_id",
        F.when(is_measurement, F.lit(measurement_table)).otherwise(F.lit(observation_table)).alias("table_concept_id"),
        F.when(is_measurement, F.col("measurement_id")).otherwise(F.col("observation_id")).alias("table_row_id"),
        F.coalesce(F.when(is_measurement, F.col("concept_measurement")).otherwise(F.col("concept_standard")),
                   "concept_source", zero).alias("image_feature_concept_id"),
        F.col("feature_type_concept_id").alias("image_feature_type_concept_id"),
        F.when(F.col("finding_key").isNotNull(), F.coalesce("finding_condition", zero))
        .alias("image_finding_concept_id"),
        "image_finding_id",
        F.coalesce("site_site", "occurrence_site_concept_id").alias("anatomic_site_concept_id"),
        "alg_system", "alg_datetime",
    )
    # Tables apart are written side by side (the clinical ones record their rows in site_row together).
    restored, _, _, sr_counts = run_concurrently(
        lambda: write_site_rows(spark, locator, {"measurement": measurements, "observation": observations}),
        lambda: merge_into(spark, locator, "image_feature", features_rows, ["image_feature_id"], by_list=True),
        lambda: sync_rows(spark, locator, "feature_quarantine", quarantine.withColumn(
            "quarantined_at", F.current_timestamp()), None, _quarantine_scope(spark, locator, redone),
            ignored=("quarantined_at",)),
        lambda: write_sr_tables(spark, locator, reported, rows.select(
            "natural_key", "finding_key", "measurement_id", "observation_id", "image_finding_id"), redone))
    dropped = _drop_stale(spark, locator, rows, scope, redone, bool(settings.features.algorithm_results))
    counts = {**_by_kind(rows), "image_feature": row_count(spark, locator, "image_feature"),
              "feature_quarantine": row_count(spark, locator, "feature_quarantine"), **sr_counts}
    events = {"restored": restored, "reallocated": reallocated, "dropped": dropped,
              "series redone": "all" if scope is None else key_count(scope),
              "reports redone": "all" if redone is None else key_count(redone)}
    return {**counts, **{k: v for k, v in events.items() if v}}
