"""Table naming, creation and writes: the only module that knows where tables live.

With a Unity Catalog catalog configured, tables are ``catalog.schema.table``. Without one, each table
is a Delta folder under the local warehouse (``<warehouse>/<schema>/<table>``), addressed by path, so
the tables persist across sessions without a metastore.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.config import StorageSettings
from micdm.errors import ConfigError, SchemaMismatchError
from micdm.schema import CDM_TABLES, TABLES, TableDef

__all__ = [
    "TableLocator",
    "append",
    "conform",
    "create_table",
    "delta_table",
    "init_tables",
    "load_csv",
    "may_have_rows",
    "merge_into",
    "merge_or_delete",
    "overwrite",
    "read_table",
    "site_table",
    "table_properties",
]

_CDM_NAMES = frozenset(t.name for t in CDM_TABLES)


@dataclass(frozen=True)
class TableLocator:
    """Maps a table name to its SQL reference, from the storage settings."""

    storage: StorageSettings

    def schema_of(self, name: str) -> str:
        if name in _CDM_NAMES and self.storage.cdm_schema:
            return self.storage.cdm_schema
        return self.storage.schema

    def path(self, name: str) -> str | None:
        """The table's folder in the local warehouse, None when tables live in a catalog."""
        return self._folder(self.schema_of(name), name)

    def ref(self, name: str) -> str:
        """What SQL statements use to name the table."""
        return self._sql_ref(self.schema_of(name), name)

    def site_ref(self, name: str) -> str:
        """SQL reference of a table the site keeps beside its CDM (a crosswalk), in the CDM schema."""
        return self._sql_ref(self.storage.cdm_schema or self.storage.schema, name)

    def _folder(self, schema: str, name: str) -> str | None:
        if self.storage.catalog:
            return None
        return str(Path(self.storage.warehouse).expanduser().resolve() / schema / name)

    def _sql_ref(self, schema: str, name: str) -> str:
        folder = self._folder(schema, name)
        return f"delta.`{folder}`" if folder is not None else f"`{self.storage.catalog}`.`{schema}`.`{name}`"

    def where(self, name: str) -> str:
        """Human-readable location for summaries."""
        return self.path(name) or f"{self.storage.catalog}.{self.schema_of(name)}.{name}"


def _exists(spark: SparkSession, locator: TableLocator, name: str) -> bool:
    path = locator.path(name)
    if path is not None:
        return DeltaTable.isDeltaTable(spark, path)
    return spark.catalog.tableExists(locator.where(name))


def delta_table(spark: SparkSession, locator: TableLocator, name: str) -> DeltaTable:
    path = locator.path(name)
    return DeltaTable.forPath(spark, path) if path is not None else DeltaTable.forName(spark, locator.where(name))


def create_table(spark: SparkSession, locator: TableLocator, table: TableDef) -> bool:
    """Create ``table`` if absent, with its NOT NULL columns and VARCHAR lengths enforced by Delta.

    Returns True when the table was created. An existing table with other columns raises
    SchemaMismatchError rather than being altered behind the user's back.
    """
    ref = locator.ref(table.name)
    created = not _exists(spark, locator, table.name)
    if created:
        if locator.storage.catalog:
            spark.sql(f"CREATE SCHEMA IF NOT EXISTS `{locator.storage.catalog}`.`{locator.schema_of(table.name)}`")
        properties = ""
        if table.stats_columns:
            properties = f" TBLPROPERTIES ('delta.dataSkippingStatsColumns' = '{','.join(table.stats_columns)}')"
        spark.sql(f"CREATE TABLE IF NOT EXISTS {ref} ({table.ddl_columns()}) USING DELTA{properties}")
    else:
        actual = [(f.name, f.dataType.simpleString()) for f in spark.table(ref).schema.fields]
        expected = [(f.name, f.dataType.simpleString()) for f in table.schema.fields]
        if actual != expected:
            raise SchemaMismatchError(
                f"{locator.where(table.name)} exists with columns {actual}, micdm expects {expected}; "
                "drop it or point storage.schema elsewhere"
            )
    return created


def init_tables(spark: SparkSession, locator: TableLocator, names: Iterable[str] | None = None) -> dict[str, bool]:
    """Create every table (or the named ones) idempotently; returns name -> created now."""
    return {name: create_table(spark, locator, TABLES[name]) for name in (names or TABLES)}


def may_have_rows(spark: SparkSession, locator: TableLocator, name: str) -> bool:
    """False only while the table is as its CREATE TABLE left it.

    Read from its last commit alone: DESCRIBE DETAIL would count its files by rebuilding the table's
    state, a Spark job per table.
    """
    last = delta_table(spark, locator, name).history(1).select("version", "operation").first()
    return last is None or last["version"] > 0 or last["operation"] != "CREATE TABLE"


def table_properties(spark: SparkSession, locator: TableLocator, name: str) -> dict[str, str]:
    return {row["key"]: row["value"] for row in spark.sql(f"SHOW TBLPROPERTIES {locator.ref(name)}").collect()}


def site_table(spark: SparkSession, locator: TableLocator, name: str) -> DataFrame:
    """A table of the site's named in the settings (a crosswalk); a missing one is a ConfigError."""
    try:
        return spark.table(locator.site_ref(name))
    except AnalysisException as error:
        raise ConfigError(f"table {name!r} named in the settings cannot be read at {locator.site_ref(name)}: "
                          f"{str(error).splitlines()[0]}") from None


def read_table(spark: SparkSession, locator: TableLocator, name: str) -> DataFrame:
    return spark.table(locator.ref(name))


def conform(df: DataFrame, table: TableDef, carry: Sequence[str] = ()) -> DataFrame:
    """Select and cast ``df`` to the table's columns, in order; missing nullable columns become NULL.

    ``carry`` names extra columns kept after the table's (e.g. a flag a MERGE condition reads).
    """
    columns: list[Column] = []
    for field in table.schema.fields:
        source = F.col(f"`{field.name}`") if field.name in df.columns else F.lit(None)
        columns.append(source.cast(field.dataType).alias(field.name))
    return df.select(*columns, *carry)


def _key_condition(keys: Sequence[str]) -> str:
    """MERGE condition matching target ``t`` and source ``s`` on natural keys (NULL-safe)."""
    return " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)


def merge_into(
    spark: SparkSession,
    locator: TableLocator,
    name: str,
    updates: DataFrame,
    keys: Sequence[str],
    update_existing: bool = True,
    delete_unmatched: bool = False,
) -> None:
    """MERGE ``updates`` into a table on natural ``keys``: re-running with the same input changes nothing.

    ``delete_unmatched`` makes the table equal ``updates``: rows no update matches are deleted.
    """
    target = delta_table(spark, locator, name)
    condition = _key_condition(keys)
    builder = target.alias("t").merge(conform(updates, TABLES[name]).alias("s"), condition)
    if update_existing:
        builder = builder.whenMatchedUpdateAll()
    builder = builder.whenNotMatchedInsertAll()
    if delete_unmatched:
        builder = builder.whenNotMatchedBySourceDelete()
    builder.execute()


def merge_or_delete(spark: SparkSession, locator: TableLocator, name: str, rows: DataFrame, keys: Sequence[str],
                    keep: Column) -> None:
    """One MERGE that upserts the rows where ``keep`` holds and deletes the matching rows where it does not.

    Used where each input decides which of two tables a key belongs in, so that moving a key from one
    table to the other is one commit per table.
    """
    table = TABLES[name]
    source = conform(rows.withColumn("_keep", keep), table, carry=["_keep"])
    condition = _key_condition(keys)
    values = {f"`{f.name}`": f"s.`{f.name}`" for f in table.schema.fields}
    (
        delta_table(spark, locator, name).alias("t").merge(source.alias("s"), condition)
        .whenMatchedUpdate(condition="s._keep", set=values)
        .whenMatchedDelete(condition="NOT s._keep")
        .whenNotMatchedInsert(condition="s._keep", values=values)
        .execute()
    )


def overwrite(locator: TableLocator, name: str, rows: DataFrame, table: TableDef | None = None) -> None:
    """Replace a table's rows in one Delta commit (for tables rebuilt whole from their inputs).

    ``table`` gives the definition of a table that is not one of TABLES (the published-name tables).
    """
    _write(locator, name, rows, "overwrite", table)


def append(locator: TableLocator, name: str, rows: DataFrame) -> None:
    """Add rows in one Delta commit; only for rows whose keys the caller knows the table does not hold."""
    _write(locator, name, rows, "append")


def _write(locator: TableLocator, name: str, rows: DataFrame, mode: str, table: TableDef | None = None) -> None:
    writer = conform(rows, table or TABLES[name]).write.format("delta").mode(mode)
    path = locator.path(name)
    if path is not None:
        writer.save(path)
    else:
        writer.saveAsTable(locator.where(name))


def load_csv(spark: SparkSession, locator: TableLocator, name: str, path: str) -> int:
    """Replace a CDM table's rows with a CSV export of it (header row, CDM column names)."""
    raw = spark.read.option("header", True).option("inferSchema", False).csv(path)
    overwrite(locator, name, raw)
    return read_table(spark, locator, name).count()
