"""The spec tables under the published MI-CDM 1.0 names, in a schema of their own, as views or tables
(settings ``publish``): for tools that expect those names."""

from __future__ import annotations

import dataclasses

from pyspark.sql import SparkSession

from micdm.changes import Changes
from micdm.config import Settings
from micdm.schema import PUBLISHED_IMAGE_FEATURE, PUBLISHED_IMAGE_OCCURRENCE, PUBLISHED_TABLES, TableDef
from micdm.stage import StageCounts
from micdm.tables import TableLocator, create_table, overwrite
from micdm.vocab import modality_concepts

__all__ = ["publish", "published_sql", "run"]


def published_sql(locator: TableLocator, table: TableDef) -> str:
    """The SELECT giving a published-name table from micdm's spec tables (a view's text, or a table's rows).

    modality_concept_id comes from the modality's shipped procedure concept (0 when there is none).
    """
    source = {PUBLISHED_IMAGE_OCCURRENCE.name: "image_occurrence", PUBLISHED_IMAGE_FEATURE.name: "image_feature"}
    renamed = {"image_feature_event_field_concept_id": "table_concept_id", "image_feature_event_id": "table_row_id",
               "modality_concept_id": "coalesce(m.concept_id, 0)"}
    columns = ", ".join(f"{renamed.get(f.name, 't.' + f.name)} AS {f.name}" for f in table.schema.fields)
    sql = f"SELECT {columns} FROM {locator.ref(source[table.name])} t"
    if table is PUBLISHED_IMAGE_OCCURRENCE:
        values = ", ".join(f"('{m}', {c})" for m, c in sorted(modality_concepts().items()))
        sql += f" LEFT JOIN (VALUES {values}) AS m(modality, concept_id) ON t.modality = m.modality"
    return sql


def publish(spark: SparkSession, locator: TableLocator, settings: Settings) -> list[str]:
    """Write (mode table) or define (mode view) the published-name tables in ``publish.schema``.

    Returns where they are. Views follow the spec tables without a copy; tables are rebuilt each run.
    """
    mode = settings.publish.mode
    if mode == "none":
        return []
    target = TableLocator(dataclasses.replace(settings.storage, schema=settings.publish.schema, cdm_schema=None))
    if settings.storage.catalog:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS `{settings.storage.catalog}`.`{settings.publish.schema}`")
    for table in PUBLISHED_TABLES:
        if mode == "view":
            spark.sql(f"CREATE OR REPLACE VIEW {target.ref(table.name)} AS {published_sql(locator, table)}")
        else:
            create_table(spark, target, table)
            overwrite(target, table.name, spark.sql(published_sql(locator, table)), table)
    return [target.where(table.name) for table in PUBLISHED_TABLES]


def run(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str,
        changes: Changes | None = None) -> StageCounts:
    """The publish stage: where the published tables are, or that publishing is off."""
    written = publish(spark, locator, settings)
    return {"published": ", ".join(written) if written else f"off (publish.mode={settings.publish.mode})"}
