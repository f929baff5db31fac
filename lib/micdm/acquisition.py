"""Acquisition parameters: the selected header attributes of each series, folded by their rule into features.

Headers are read once: instance_attribute keeps the values of the selected attributes per instance and
header_digest, so a run reads only the headers of instances it has not seen (or whose file changed) and
re-reads everything only when the selection changes. Each series' values then become rows by the rule
of their attribute (dicom/attributes.py): ``first``, ``min``, ``max``, ``min_max`` or ``distinct``; the
rule that made a row follows the attribute's tag path in its source value (``00181151:max``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

import orjson
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.config import FeatureSettings
from micdm.dicom.attributes import Attribute, Rule, select_attributes, values_of
from micdm.reasons import FeatureDomain
from micdm.schema import FEATURE_ROW, INSTANCE_ATTRIBUTE
from micdm.tables import (
    Keys,
    TableLocator,
    aggregate,
    append,
    conform,
    delete_keys,
    has_rows,
    listed,
    overwrite,
    read_table,
    within,
)
from micdm.vocab import normalise_body_part

__all__ = ["acquisition_features", "refresh_instance_attributes", "selection_id", "series_values"]

log = logging.getLogger(__name__)

_BODY_PART = "00180015"
_VALUE_COLUMNS = [f.name for f in INSTANCE_ATTRIBUTE.schema.fields]


def selection_id(attributes: tuple[Attribute, ...]) -> str:
    """Names the set of attribute paths read from headers: values read for another set are read again."""
    return hashlib.sha256("\n".join(sorted(a.source for a in attributes)).encode()).hexdigest()[:16]


def _header(header_json: Any, acquisition_text: Any) -> tuple[dict[str, Any], dict[str, str] | None]:
    """The header as DICOM JSON, and the header's own text of its DS / IS values (keyword -> text).

    A header too large to keep (header_json dropped 'all') still has those texts: its numbers count.
    """
    texts = orjson.loads(acquisition_text) if isinstance(acquisition_text, str) else None
    return (orjson.loads(header_json) if isinstance(header_json, str) else {}), texts


def _read_values(instances: DataFrame, attributes: tuple[Attribute, ...], selection: str) -> DataFrame:
    """instance_attribute rows of ``instances``: one per value found, or one of NULLs for an instance with none."""
    by_keyword = {a.keywords[0]: a for a in attributes if len(a.keys) == 1 and a.kind == "number"}

    def read(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        for batch in batches:
            rows: list[tuple[Any, ...]] = []
            for row in batch.to_dict("records"):
                header, texts = _header(row["header_json"], row["acquisition_text"])
                if not header and texts:  # only the texts survived: read the numbers from them
                    header = {by_keyword[k].tag: {"Value": [float(v) for v in t.split("\\") if v.strip()]}
                              for k, t in texts.items() if k in by_keyword}
                number = None if pd.isna(row["instance_number"]) else int(row["instance_number"])
                base = (row["path"], row["header_digest"], row["series_instance_uid"], number, selection)
                found = values_of(header, attributes, texts)
                rows.extend((*base, v.source, v.ordinal, v.text, v.number) for v in found)
                if not found:
                    rows.append((*base, None, None, None, None))
            frame = pd.DataFrame(rows, columns=_VALUE_COLUMNS)
            yield frame.astype({"instance_number": "Int64", "ordinal": "Int64"})

    columns = ["path", "header_digest", "series_instance_uid", "instance_number", "header_json", "acquisition_text"]
    return instances.select(*columns).mapInPandas(read, INSTANCE_ATTRIBUTE.schema)


def refresh_instance_attributes(spark: SparkSession, locator: TableLocator, instances: DataFrame,
                                attributes: tuple[Attribute, ...], series: Keys | None = None
                                ) -> tuple[int, DataFrame]:
    """Bring instance_attribute in line with the present instances of ``series`` (a frame of
    series_instance_uid; every series when None); returns how many headers were read and the rows of those
    series as the table now holds them.

    Only those series are compared, both sides: a nightly run whose new, changed and vanished files
    belong to a few series compares those, not the archive. Rows of vanished or changed files go first,
    then the new values are appended: a crash in between leaves those instances unread, and the next run
    (whose changes still name those series) reads them. A few series are looked up by their list
    (tables.listed), so the files of earlier runs that hold none of them are not read; their stored rows
    are read once, and those kept with those appended are returned as held rather than read again. Every
    series' rows are read back instead, not held.
    """
    selection = selection_id(attributes)
    stored = read_table(spark, locator, "instance_attribute")
    if has_rows(stored.where(F.col("selection") != selection)):
        log.info("features: the attribute selection changed; reading every header again")
        overwrite(locator, "instance_attribute", _read_values(instances, attributes, selection))
        now = read_table(spark, locator, "instance_attribute")
        return now.select("path").distinct().count(), within(now, "series_instance_uid", series)
    keys = listed(series)
    scoped = stored if keys is None else within(stored, "series_instance_uid", keys).localCheckpoint()
    present = within(instances, "series_instance_uid", keys).select(
        "path", "header_digest", "extracted_at").alias("p")
    held = scoped.select("path", "header_digest").distinct().alias("h")
    same = (F.col("p.path") == F.col("h.path")) & F.col("p.header_digest").eqNullSafe(F.col("h.header_digest"))
    unread_now = F.col("h.path").isNull()
    # One pass finds both sides: the instances not read yet and the rows of files no longer present.
    differing = present.join(held, same, "full_outer").where(unread_now | F.col("p.path").isNull()).select(
        F.coalesce("p.path", "h.path").alias("path"), F.col("p.header_digest").alias("header_digest"),
        "p.extracted_at", unread_now.alias("unread")).localCheckpoint(eager=False)  # kept by the counts
    counted = aggregate(differing, F.count_if("unread").alias("unread"), F.count_if(~F.col("unread")).alias("gone"),
                        F.min(F.when(F.col("unread"), F.col("extracted_at"))).alias("since"))
    unread, since = counted["unread"], counted["since"]
    if not unread and not counted["gone"]:
        return 0, scoped
    if counted["gone"]:  # stored rows of vanished or changed files; new files alone have none to delete
        delete_keys(spark, locator, "instance_attribute", differing.select("path"), ["path"])
    kept = scoped.join(differing.select("path"), "path", "left_anti")
    if unread:
        todo = differing.where("unread")
        wanted = instances.where(F.col("extracted_at") >= since).alias("i").join(
            todo.alias("t"), (F.col("i.path") == F.col("t.path"))
            & F.col("i.header_digest").eqNullSafe(F.col("t.header_digest")), "left_semi")
        read = _read_values(wanted, attributes, selection)
        if series is not None:
            read = read.localCheckpoint()
            kept = kept.unionByName(read)
        append(locator, "instance_attribute", read)
    return unread, read_table(spark, locator, "instance_attribute") if series is None else kept


def _rows(rule: Column, kind: Column, cap: int) -> Column:
    """The rows (label, text, number) a series' values become under its attribute's rule."""
    def row(label: str, value: str) -> Column:
        return F.struct(F.lit(label).alias("label"), F.col(f"{value}.text").alias("text"),
                        F.col(f"{value}.number").alias("number"))

    min_max = F.array(row("min", "low"), row("max", "high"))
    each = F.transform("values", lambda v: F.struct(F.lit("distinct").alias("label"), v["text"].alias("text"),
                                                    v["number"].alias("number")))
    overflow = F.when(kind == "number", min_max).otherwise(F.slice(each, 1, cap))
    return (F.when(rule == Rule.FIRST.value, F.array(row("first", "first")))
            .when(rule == Rule.MIN.value, F.array(row("min", "low")))
            .when(rule == Rule.MAX.value, F.array(row("max", "high")))
            .when(rule == Rule.MIN_MAX.value, min_max)
            .otherwise(F.when(F.size("values") <= cap, each).otherwise(overflow)))


def series_values(spark: SparkSession, stored: DataFrame, attributes: tuple[Attribute, ...], cap: int,
                  series: DataFrame | None = None) -> DataFrame:
    """(series_instance_uid, source, tag, kind, unit, label, text, number): each series' rows by rule, from
    ``stored`` instance_attribute rows, for every series or those in ``series`` (a frame with
    series_instance_uid).

    Values are first made distinct (numbers by value, other values by text), keeping the first
    instance's text of each; ``first``, ``min``, ``max`` and the distinct list are taken from those.
    """
    described = spark.createDataFrame([(a.source, a.tag, a.rule.value, a.kind, a.unit) for a in attributes],
                                      "source string, tag string, rule string, kind string, unit string")
    values = stored.where((F.col("selection") == selection_id(attributes)) & F.col("source").isNotNull())
    if series is not None:
        values = values.join(series.select("series_instance_uid"), "series_instance_uid", "left_semi")
    values = values.join(F.broadcast(described), "source")
    order = F.struct(F.coalesce("instance_number", F.lit(2**31 - 1)), "path", "ordinal")
    value = F.struct(F.col("value_text").alias("text"), F.col("value_number").alias("number"))
    distinct_key = F.when(F.col("kind") == "number", F.col("value_number").cast("string")).otherwise(
        F.col("value_text"))
    group = ["series_instance_uid", "source", "tag", "rule", "kind", "unit"]
    distinct = values.groupBy(*group, distinct_key.alias("_key")).agg(
        F.min_by(value, order).alias("v"), F.min(order).alias("o"))
    folded = distinct.groupBy(*group).agg(
        F.min_by("v", "o").alias("first"), F.min_by("v", "v.number").alias("low"),
        F.max_by("v", "v.number").alias("high"),
        F.array_sort(F.collect_list(F.struct(F.col("v.number").alias("number"), F.col("v.text").alias("text"))))
        .alias("values"))
    return folded.select(*group[:2], "tag", "kind", "unit", F.explode(_rows(F.col("rule"), F.col("kind"), cap))
                         .alias("r")).select("series_instance_uid", "source", "tag", "kind", "unit", "r.*")


def acquisition_features(spark: SparkSession, locator: TableLocator, instances: DataFrame, occurrences: DataFrame,
                         settings: FeatureSettings, changed: Keys | None = None) -> DataFrame:
    """FEATURE_ROW rows of the selected attributes for every series with an image_occurrence; the headers
    of the ``changed`` series (every series when None) are compared with instance_attribute first."""
    attributes = select_attributes(settings.acquisition_attributes)
    read, stored = refresh_instance_attributes(spark, locator, instances, attributes, changed)
    log.info("features: %d header(s) read for %d acquisition attribute(s)", read, len(attributes))
    rows = series_values(spark, stored, attributes, settings.max_distinct_values, occurrences.select(
        F.col("image_series_uid").alias("series_instance_uid"))).join(
        occurrences, F.col("series_instance_uid") == F.col("image_series_uid"))
    coded = F.col("kind") == "code"
    code = F.when(F.col("tag") == _BODY_PART, normalise_body_part(F.col("text"))).otherwise(
        F.upper(F.trim("text")))
    text_only = F.col("kind") == "text"
    as_observation = text_only & F.lit(settings.text_attributes == FeatureDomain.OBSERVATION.value)
    domain = F.when(as_observation, F.lit(FeatureDomain.OBSERVATION.value)).otherwise(
        F.lit(FeatureDomain.MEASUREMENT.value))
    # a row of rule 'first' keeps the natural key of micdm's earlier single-value rows, so its ids stay
    suffix = F.when(F.col("label") == "distinct", F.concat(F.lit("|="), "text")).when(
        F.col("label") != "first", F.concat(F.lit("|"), "label"))
    return conform(rows.select(
        F.concat(F.lit("header|"), "series_instance_uid", F.lit("|"), "source", F.coalesce(suffix, F.lit("")))
        .alias("natural_key"),
        domain.alias("domain"),
        "person_id", "image_occurrence_id", "visit_occurrence_id",
        F.col("image_occurrence_date").alias("event_date"),
        F.lit("DICOM").alias("concept_vocabulary"), F.col("tag").alias("concept_code"),
        F.concat_ws(":", "source", "label").alias("source_value"),
        "number", F.col("unit").alias("unit_code"),
        F.when(coded, F.lit("DICOM")).alias("value_vocabulary"), F.when(coded, code).alias("value_code"),
        F.col("text").alias("value_text"),
        F.col("anatomic_site_concept_id").alias("occurrence_site_concept_id"),
        F.lit(settings.measurement_type_concept_id).alias("type_concept_id"),
        F.lit(settings.feature_type_concept_id).alias("feature_type_concept_id"),
    ), FEATURE_ROW)
