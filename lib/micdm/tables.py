"""Table naming, creation and writes: the only module that knows where tables live.

With a Unity Catalog catalog configured, tables are ``catalog.schema.table``. Without one, each table
is a Delta folder under the local warehouse (``<warehouse>/<schema>/<table>``), addressed by path, so
the tables persist across sessions without a metastore.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from micdm.concurrency import run_concurrently
from micdm.config import Settings, StorageSettings
from micdm.errors import ConfigError, SchemaMismatchError
from micdm.schema import CDM_TABLES, TABLES, TableDef, with_header_format

if TYPE_CHECKING:
    from deltalake import DeltaTable as RustDeltaTable

__all__ = ["COMPACT_ABOVE_FILES", "Keys", "TableLocator", "aggregate", "append", "as_frame", "as_stored",
           "bloom_filter_properties", "clustering_clause", "column_ceiling", "compact_small_files", "conform",
           "create_table", "data_file", "delete_keys", "delta_table", "has_rows", "init_tables", "keep_change_feed",
           "key_count", "listed", "listed_or_kept", "load_csv", "may_have_rows", "merge_into", "merge_or_delete",
           "narrowed", "overwrite", "read_id_span", "read_table", "row_count", "row_digest", "schema_problems",
           "set_table_properties", "site_table", "small_table_rows", "sql_in", "sql_literal", "sql_name",
           "stored_schema", "sync_rows", "table_problems", "table_properties", "within"]

log = logging.getLogger(__name__)

_CDM_NAMES = frozenset(t.name for t in CDM_TABLES)


@dataclass(frozen=True)
class TableLocator:
    """Maps a table name to its SQL reference and its definition, from the settings."""

    storage: StorageSettings
    header_format: str = "json"
    """extract.header_format: how dicom_instance keeps each header (it decides that table's columns)."""

    @classmethod
    def of(cls, settings: Settings) -> TableLocator:
        return cls(settings.storage, settings.extract.header_format)

    def definition(self, name: str) -> TableDef:
        """The table micdm creates and writes under this name."""
        return with_header_format(TABLES[name], self.header_format)

    def schema_of(self, name: str) -> str:
        if name in _CDM_NAMES and self.storage.cdm_schema:
            return self.storage.cdm_schema
        return self.storage.schema

    def path(self, name: str) -> str | None:
        """The table's Delta folder (in the local warehouse, or where storage.cdm_tables puts it), None when
        the table lives in a catalog."""
        named = self.storage.cdm_tables.get(name)
        if named is not None:
            return named if "/" in named else None
        return self._folder(self.schema_of(name), name)

    def ref(self, name: str) -> str:
        """What SQL statements use to name the table."""
        named = self.storage.cdm_tables.get(name)
        if named is not None:
            return f"delta.`{named}`" if "/" in named else ".".join(f"`{part}`" for part in named.split("."))
        return self._sql_ref(self.schema_of(name), name)

    def site_ref(self, name: str) -> str:
        """SQL reference of a table the site keeps beside its CDM (a crosswalk), in the CDM schema."""
        return self._sql_ref(self.storage.cdm_schema or self.storage.schema, name)

    def site_path(self, name: str) -> str | None:
        """The Delta folder of a table of the site's beside its CDM (a crosswalk), None in a catalog."""
        return self._folder(self.storage.cdm_schema or self.storage.schema, name)

    def _folder(self, schema: str, name: str) -> str | None:
        if self.storage.catalog:
            return None
        return str(Path(self.storage.warehouse).expanduser().resolve() / schema / name)

    def _sql_ref(self, schema: str, name: str) -> str:
        folder = self._folder(schema, name)
        return f"delta.`{folder}`" if folder is not None else f"`{self.storage.catalog}`.`{schema}`.`{name}`"

    def where(self, name: str) -> str:
        """Human-readable location for summaries."""
        return self.path(name) or self.storage.cdm_tables.get(name) or \
            f"{self.storage.catalog}.{self.schema_of(name)}.{name}"


class _Absent(Exception):
    """No Delta table where the locator puts one."""


def _open_local_delta_log(locator: TableLocator, name: str) -> RustDeltaTable | None:
    """The table's Delta log read with delta-rs (the ``deltalake`` package, in micdm's ``spark`` extra):
    for a table in a local folder, when delta-rs is installed and can read it; else None, and Spark reads.

    A Spark process's first Delta queries cost seconds of JVM warm-up; checking micdm's tables and reading
    its bookkeeping this way lets a run that finds nothing new skip them. Raises _Absent when the folder
    holds no Delta table.
    """
    folder = locator.path(name)
    if folder is None or "://" in folder:
        return None
    try:
        from deltalake import DeltaTable as RustDeltaTable
        from deltalake.exceptions import TableNotFoundError
    except ImportError:
        return None
    try:
        return RustDeltaTable(folder)
    except TableNotFoundError:
        raise _Absent(name) from None
    except Exception as error:  # a table feature delta-rs does not read: Spark reads the table instead
        log.debug("%s is read with Spark: %s", name, error)
        return None


def _local_delta_log(locator: TableLocator, name: str) -> RustDeltaTable | None:
    """As _open_local_delta_log, but None for a missing table too: Spark then says it is missing."""
    try:
        return _open_local_delta_log(locator, name)
    except _Absent:
        return None


def stored_schema(spark: SparkSession, locator: TableLocator, name: str) -> StructType | None:
    """The schema of the table as stored; None when there is no table."""
    try:
        local = _open_local_delta_log(locator, name)
    except _Absent:
        return None
    if local is not None:
        return _logged_schema(local)
    path = locator.path(name)
    exists = DeltaTable.isDeltaTable(spark, path) if path is not None else \
        spark.catalog.tableExists(locator.where(name))
    return spark.table(locator.ref(name)).schema if exists else None


def _logged_schema(local: RustDeltaTable) -> StructType:
    """The table's schema as its Delta log holds it, in Spark's types."""
    return StructType.fromJson(json.loads(local.schema().to_json()))


def delta_table(spark: SparkSession, locator: TableLocator, name: str) -> DeltaTable:
    path = locator.path(name)
    return DeltaTable.forPath(spark, path) if path is not None else DeltaTable.forName(spark, locator.where(name))


def create_table(spark: SparkSession, locator: TableLocator, table: TableDef) -> bool:
    """Create ``table`` if absent, with its NOT NULL columns and VARCHAR lengths enforced by Delta. In a
    catalog its schema must exist (init_tables makes micdm's schemas first).

    Returns True when the table was created. An existing table with other columns raises
    SchemaMismatchError rather than being altered behind the user's back.
    """
    ref = locator.ref(table.name)
    stored = stored_schema(spark, locator, table.name)
    if stored is None:
        settings = {_CHANGE_FEED: "true"} if table.layer in CHANGE_FEED_LAYERS else {}
        settings.update(bloom_filter_properties(table))
        if table.stats_columns:
            settings["delta.dataSkippingStatsColumns"] = ",".join(table.stats_columns)
        properties = f" TBLPROPERTIES ({_property_list(settings)})" if settings else ""
        layout = clustering_clause(locator.storage.clustering, table)
        spark.sql(f"CREATE TABLE IF NOT EXISTS {ref} ({table.ddl_columns()}) USING DELTA{layout}{properties}")
        return True
    added = _add_new_columns(spark, ref, table, stored)
    if added:
        stored = spark.table(ref).schema
        for column, expression in table.filled_from:
            if column in added:
                spark.sql(f"UPDATE {ref} SET `{column}` = {expression} WHERE `{column}` IS NULL")
    problems = schema_problems(table, stored)
    if problems:
        raise SchemaMismatchError(_mismatch_message(locator, table, problems))
    return False


#: A bloom filter's false positive rate per value looked up: a night's list of thousands of keys still
#: rules out most row groups that hold none of them (at Parquet's 1 %, a list of a few hundred reads them).
_BLOOM_FPP = "0.00001"
#: The largest filter per column and row group, and how many sizes below it the writer tries (each half the
#: one before), keeping the smallest that holds the values written: 16 KB for a few, 2 MB for about 570,000.
_BLOOM_MAX_BYTES, _BLOOM_SIZES = str(2 << 20), "8"


def bloom_filter_properties(table: TableDef) -> dict[str, str]:
    """The table properties that make Delta's Parquet writer keep a bloom filter of each of the table's
    ``bloom_columns`` per row group (Delta passes a table's properties to its writer, in every write and
    compaction), sized to the values each row group holds."""
    if not table.bloom_columns:
        return {}
    per_column = {"enabled": "true", "fpp": _BLOOM_FPP, "candidates.number": _BLOOM_SIZES}
    return {**{f"parquet.bloom.filter.{name}#{column}": value for column in table.bloom_columns
               for name, value in per_column.items()},
            "parquet.bloom.filter.adaptive.enabled": "true", "parquet.bloom.filter.max.bytes": _BLOOM_MAX_BYTES}


#: The layers of micdm's own tables that keep a Change Data Feed, so the stages reading them redo only
#: the rows that changed (micdm.changes); the site's tables are never altered.
CHANGE_FEED_LAYERS = frozenset({"bronze", "silver", "gold"})
_CHANGE_FEED = "delta.enableChangeDataFeed"


def keep_change_feed(spark: SparkSession, locator: TableLocator, name: str) -> bool:
    """Turn the change feed on for one of micdm's tables created without it (by an older micdm); True
    when it was off. Called when a feed cannot be read, rather than on every run: reading a table's
    properties rebuilds its Delta state, a Spark job."""
    if locator.definition(name).layer not in CHANGE_FEED_LAYERS or \
            table_properties(spark, locator, name).get(_CHANGE_FEED) == "true":
        return False
    set_table_properties(spark, locator, name, {_CHANGE_FEED: "true"})
    return True


def _keep_bloom_filters(spark: SparkSession, locator: TableLocator, name: str, configuration: dict[str, str]) -> None:
    """Give a table created by an older micdm its bloom filter properties, before a compaction rewrites its
    files with them."""
    wanted = {k: v for k, v in bloom_filter_properties(locator.definition(name)).items() if configuration.get(k) != v}
    if wanted:
        set_table_properties(spark, locator, name, wanted)


def _property_list(properties: dict[str, str]) -> str:
    """``'key' = 'value', ...`` as TBLPROPERTIES takes them."""
    return ", ".join(f"{k!r} = {v!r}" for k, v in properties.items())


def set_table_properties(spark: SparkSession, locator: TableLocator, name: str, properties: dict[str, str]) -> None:
    """Set properties on one of micdm's tables (one Delta commit that changes no row)."""
    spark.sql(f"ALTER TABLE {locator.ref(name)} SET TBLPROPERTIES ({_property_list(properties)})")


#: micdm compacts one of its own local tables once it holds more small data files than this. Every
#: incremental run adds a file or two to each table it writes, and read_table gives a local table's files to
#: Spark, which lists more than 32 of them in a job of its own, in every scan of every later run.
COMPACT_ABOVE_FILES = 32
#: Files OPTIMIZE rewrites are those smaller than this Delta setting (its default: 1 GiB).
_OPTIMIZE_MIN_FILE_SIZE = ("spark.databricks.delta.optimize.minFileSize", str(1 << 30))


def compact_small_files(spark: SparkSession, locator: TableLocator, names: Iterable[str]) -> list[str]:
    """Compact those of ``names`` that are micdm's own local tables holding more than COMPACT_ABOVE_FILES
    files that OPTIMIZE would rewrite (Delta's OPTIMIZE); returns the tables compacted. Files large enough
    to be left by OPTIMIZE do not count, so a table of many large files is not rewritten at every run.

    The compaction's commit changes no row (its files are marked dataChange false), so the change feed
    holds nothing for it. A stage compacts what it wrote before any later stage reads the tables' versions,
    so no watermark takes the compaction for a change. The site's tables are never compacted by micdm, nor
    is a table in a catalog or an object store, whose files Delta itself tracks (Databricks compacts them).
    Delta's own auto compaction is not used: in a new process it compacts after every write.
    """
    compacted = []
    for name in names:
        local = None if locator.definition(name).layer == "cdm" else _local_delta_log(locator, name)
        if local is None or len(local.file_uris()) <= COMPACT_ABOVE_FILES:
            continue
        below = int(spark.conf.get(*_OPTIMIZE_MIN_FILE_SIZE) or _OPTIMIZE_MIN_FILE_SIZE[1])
        small = sum(size < below for size in pa.table(local.get_add_actions()).column("size_bytes").to_pylist())
        if small > COMPACT_ABOVE_FILES:
            _keep_bloom_filters(spark, locator, name, local.metadata().configuration)
            delta_table(spark, locator, name).optimize().executeCompaction()
            log.info("%s compacted: it held %d small files", name, small)
            compacted.append(name)
    return compacted


def clustering_clause(clustering: str, table: TableDef) -> str:
    """The CLUSTER BY clause micdm creates a table with, from storage.clustering."""
    if clustering == "none" or not table.cluster_by:
        return ""
    if clustering == "auto":
        return " CLUSTER BY AUTO"
    return f" CLUSTER BY ({', '.join(f'`{c}`' for c in table.cluster_by)})"


def _add_new_columns(spark: SparkSession, ref: str, table: TableDef, schema: StructType) -> list[str]:
    """Columns a newer micdm appends to one of its own tables (nullable, after the stored ones) are added
    to an existing table in place, so an upgrade keeps the rows; the site's tables are never altered.
    Returns the columns added."""
    stored = [f.name for f in schema.fields]
    declared = table.schema.fields
    new = declared[len(stored):]
    if table.layer == "cdm" or not new or [f.name for f in declared[:len(stored)]] != stored \
            or not all(f.nullable for f in new):
        return []
    spark.sql(f"ALTER TABLE {ref} ADD COLUMNS ({', '.join(f'`{f.name}` {f.dataType.simpleString()}' for f in new)})")
    return [f.name for f in new]


#: Stored types micdm reads and writes in place of its own: the widths a site's DDL may choose (the
#: official OHDSI Spark DDL declares the CDM's float as FLOAT; some sites use BIGINT ids).
_COMPATIBLE = {"double": {"float", "double"}, "float": {"float", "double"}, "int": {"int", "bigint"},
               "bigint": {"int", "bigint"}}


def schema_problems(table: TableDef, stored: StructType) -> list[str]:
    """What keeps micdm from using a stored table as ``table``: one line per missing, extra or
    incompatible column. For the site's CDM tables, numeric widths may differ (values are cast on write);
    micdm's own tables must match exactly."""
    expected = {f.name: f.dataType.simpleString() for f in table.schema.fields}
    actual = {f.name: f.dataType.simpleString() for f in stored.fields}
    tolerant = table.layer == "cdm"
    problems = [f"{name}: missing (micdm expects {kind})" for name, kind in expected.items() if name not in actual]
    problems += [f"{name}: {actual[name]}, micdm expects {kind}" for name, kind in expected.items()
                 if name in actual and actual[name] != kind
                 and not (tolerant and actual[name] in _COMPATIBLE.get(kind, ()))]
    if not tolerant:
        problems += [f"{name}: not a column micdm knows ({kind})" for name, kind in actual.items()
                     if name not in expected]
    if not problems and not tolerant and list(actual) != list(expected):
        problems.append(f"columns in another order: {list(actual)}")
    return problems


def _mismatch_message(locator: TableLocator, table: TableDef, problems: list[str]) -> str:
    if table.layer == "cdm":
        fix = ("point storage.cdm_schema at the schema holding the site's CDM, or add the missing columns "
               "to the site's table (ALTER TABLE ... ADD COLUMNS); micdm changes nothing of the site's")
    else:
        fix = (f"this is one of micdm's own tables: point storage.schema elsewhere, or drop "
               f"{locator.where(table.name)} and let micdm create it again")
    if {p.split(":")[0] for p in problems} & {"header", "header_json"}:
        fix = ("set extract.header_format to the format the table was created with (json: header_json, "
               f"variant: header), or {fix}")
    return f"{locator.where(table.name)} cannot be used as {table.name}: {'; '.join(problems)}. Fix: {fix}"


def table_problems(spark: SparkSession, locator: TableLocator) -> list[str]:
    """What create_table would refuse, for every table that exists: one message per unusable table."""
    problems = []
    for table in map(locator.definition, TABLES):
        stored = stored_schema(spark, locator, table.name)
        if stored is not None:
            found = schema_problems(table, stored)
            if found:
                problems.append(_mismatch_message(locator, table, found))
    return problems


def init_tables(spark: SparkSession, locator: TableLocator, names: Iterable[str] | None = None) -> dict[str, bool]:
    """Create every table (or the named ones) idempotently; returns name -> created now.

    The tables are created side by side (micdm.concurrency): each CREATE TABLE is a Delta commit whose
    driver work overlaps the others', and a new warehouse's tables take about half the time. A catalog's
    schemas are made first, one at a time, so no two threads race to create the same one.
    """
    names = list(names or TABLES)
    if locator.storage.catalog:
        for schema in sorted({locator.schema_of(name) for name in names if name not in locator.storage.cdm_tables}):
            spark.sql(f"CREATE SCHEMA IF NOT EXISTS `{locator.storage.catalog}`.`{schema}`")
    created = run_concurrently(*[partial(create_table, spark, locator, locator.definition(name))
                                 for name in names])
    return dict(zip(names, created, strict=True))


def may_have_rows(spark: SparkSession, locator: TableLocator, name: str) -> bool:
    """False only when the table holds no row: read from its log, without a Spark job where delta-rs reads
    it, else from its last commit alone (False while the table is as its CREATE TABLE left it): DESCRIBE
    DETAIL would count its files by rebuilding the table's state, a Spark job per table.
    """
    local = _local_delta_log(locator, name)
    if local is not None:
        return bool(local.file_uris())
    last = delta_table(spark, locator, name).history(1).select("version", "operation").first()
    return last is None or last["version"] > 0 or last["operation"] != "CREATE TABLE"


def table_properties(spark: SparkSession, locator: TableLocator, name: str) -> dict[str, str]:
    """The properties set on the table (TBLPROPERTIES)."""
    local = _local_delta_log(locator, name)
    if local is not None:
        return dict(local.metadata().configuration)
    return {row["key"]: row["value"] for row in spark.sql(f"SHOW TBLPROPERTIES {locator.ref(name)}").collect()}


def site_table(spark: SparkSession, locator: TableLocator, name: str) -> DataFrame:
    """A table of the site's named in the settings (a crosswalk); a missing one is a ConfigError."""
    try:
        return spark.table(locator.site_ref(name))
    except AnalysisException as error:
        raise ConfigError(f"table {name!r} named in the settings cannot be read at {locator.site_ref(name)}: "
                          f"{str(error).splitlines()[0]}") from None


def has_rows(frame: DataFrame) -> bool:
    """Whether ``frame`` has a row, in one Spark job: ``take(1)`` starts another job for each wave of
    partitions it finds empty, and an empty answer is the common one where micdm asks."""
    return frame.limit(1).count() > 0


def aggregate(frame: DataFrame, *columns: Column) -> Row:
    """The one row of an aggregation without grouping (Spark gives one even for an empty frame)."""
    row = frame.agg(*columns).first()
    assert row is not None, "an aggregation without grouping has one row"
    return row


def read_table(spark: SparkSession, locator: TableLocator, name: str) -> DataFrame:
    """A table's rows as its current version holds them.

    A table in a local folder whose files hold its rows as they are (reader version 1: no deletion vectors,
    column mapping or other reader feature; no partition columns) is read as those Parquet files, listed
    from its log by delta-rs: Delta's own read lists them in a Spark job for every scan of every query,
    which costs more than the scan of a small table (bench/results/query_cost.md). The frame keeps the
    files of the version it was made at, so a frame read before its table is written reads what the table
    held then; micdm checkpoints what it reads before writing the same table. Any other table (in a
    catalog or object store) is read by Delta. Where micdm's rows lie in a site's table, read_id_span.
    """
    return _files_or_delta(spark, locator, name)


def read_id_span(spark: SparkSession, locator: TableLocator, name: str, span: tuple[int, int],
                 column: str | None = None) -> DataFrame:
    """The rows of a table whose ``column`` (its id, ``<name>_id``, by default) lies within ``span`` (both ends
    included): in a site's CDM table, where micdm's rows are, in a block of ids of their own. Only the files
    whose statistics can hold such a value are read (delta-rs reads them from the log, as read_table lists
    files; else Delta skips the others), so a site's table of billions of rows is not read beside micdm's."""
    column = column or f"{name}_id"
    return _files_or_delta(spark, locator, name, (column, *span)).where(F.col(column).between(*span))


def _files_or_delta(spark: SparkSession, locator: TableLocator, name: str,
                    span: tuple[str, int, int] | None = None) -> DataFrame:
    """The table read as its Parquet files (those _plain_files gives for ``span``), else by Delta."""
    local = _local_delta_log(locator, name)
    files = None if local is None else _plain_files(local, locator.path(name) or "", span)
    if local is None or files is None:
        return spark.table(locator.ref(name))
    schema = _logged_schema(local)
    if not files:  # as Spark reads files: every column nullable
        return spark.createDataFrame(spark.sparkContext.emptyRDD(), _nullable(schema))
    return spark.read.schema(schema).parquet(*files)


def _nullable(schema: StructType) -> StructType:
    """``schema`` with every field, element and value nullable, as Spark makes a file's schema."""
    text = schema.json()
    for flag in ("nullable", "containsNull", "valueContainsNull"):
        text = text.replace(f'"{flag}":false', f'"{flag}":true')
    return StructType.fromJson(json.loads(text))


def _plain_files(local: RustDeltaTable, folder: str, span: tuple[str, int, int] | None = None) -> list[str] | None:
    """The data files of the table's current version, when reading them as plain Parquet gives its rows;
    None when it does not, or when Spark would take the folder's name for a pattern. With ``span`` (a column,
    its lowest and highest value wanted), only the files whose statistics can hold such a value."""
    if local.protocol().min_reader_version != 1 or local.metadata().partition_columns \
            or any(character in folder for character in "*?[{\\"):
        return None
    if span is None:
        return local.file_uris()
    column, low, high = span
    actions = pa.table(local.get_add_actions(flatten=True))
    bounds = [f"min.{column}", f"max.{column}"]
    if not set(bounds) <= set(actions.column_names):  # no statistics of that column: every file
        return local.file_uris()
    return [data_file(folder, path) for path, least, most in zip(
        *(actions.column(name).to_pylist() for name in ("path", *bounds)), strict=True)
        if least is None or most is None or (least <= high and most >= low)]


def data_file(folder: str, path: str) -> str:
    """A data file's full path from its Delta log entry, which holds it relative to the table's folder
    (URI-encoded), or whole."""
    path = unquote(path)
    return path if "://" in path or path.startswith("/") else f"{folder.rstrip('/')}/{path}"


def small_table_rows(spark: SparkSession, locator: TableLocator, name: str) -> list[dict[str, Any]]:
    """Every row of one of micdm's small tables (a few rows per stage or per run), without a Spark job
    where delta-rs can read it."""
    local = _local_delta_log(locator, name)
    folder = locator.path(name)
    if local is not None and folder is not None:
        # Pyarrow's own file system, not delta-rs's default (a Python one): a scan through Python files
        # leaves arrow threads that need the GIL after the interpreter has gone, and the process aborts
        # at exit ("terminate called without an active exception") though its work is done.
        files = pa_fs.SubTreeFileSystem(str(Path(folder).resolve()), pa_fs.LocalFileSystem())
        from deltalake.exceptions import DeltaProtocolError
        try:
            rows = local.to_pyarrow_table(filesystem=files).to_pylist()
        except DeltaProtocolError as error:  # deletion vectors or column mapping: Spark reads those
            log.debug("%s is read with Spark: %s", name, error)
        else:  # timestamps as PySpark collects them: naive, in the local time zone
            return [{k: v.astimezone().replace(tzinfo=None) if isinstance(v, dt.datetime) and v.tzinfo else v
                     for k, v in row.items()} for row in rows]
    return [row.asDict() for row in read_table(spark, locator, name).collect()]


def row_count(spark: SparkSession, locator: TableLocator, name: str) -> int:
    """Rows in a table, for a summary: added up from the Delta log's file statistics where delta-rs reads a
    local table (no Spark job), else counted by Spark (deletion vectors, a catalog, files without statistics)."""
    local = _local_delta_log(locator, name)
    if local is not None and "deletionVectors" not in (local.protocol().reader_features or ()):
        records = pa.table(local.get_add_actions(flatten=True)).column("num_records")
        if records.null_count == 0:
            return int(pc.sum(records).as_py() or 0)
    return read_table(spark, locator, name).count()


def column_ceiling(spark: SparkSession, locator: TableLocator, name: str, column: str) -> Any:
    """A value that no row's ``column`` (a number) exceeds, None for an empty table: the highest of the Delta
    log's file statistics where delta-rs reads a local table, so that a site's table of billions of rows is
    not scanned for it, else the column's maximum as Spark counts it. A file's statistics still count rows a
    deletion vector removed, so the value can lie above every row left: a bound, not always the maximum."""
    local = _local_delta_log(locator, name)
    if local is not None:
        files = pa.table(local.get_add_actions(flatten=True))
        if not files.num_rows:
            return None
        highest = f"max.{column}"
        if highest in files.column_names and files.column(highest).null_count == 0:  # else a file lacks them
            return pc.max(files.column(highest)).as_py()
    return aggregate(read_table(spark, locator, name), F.max(column))[0]


def sql_name(column: str) -> str:
    """A column's name as SQL text.

    An expression written as SQL text crosses to the JVM in one call, where a Column built in Python costs
    a round trip for each function, operator, name and literal: thousands in a stage that builds many.
    """
    return "`" + column.replace("`", "``") + "`"


def sql_literal(value: str | int | float) -> str:
    """A value as an SQL literal of its type (see sql_name)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"CAST('{value!r}' AS DOUBLE)"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__} {value!r}")


def sql_in(column: str, values: Sequence[str | int | float]) -> str:
    """Whether ``column`` holds one of ``values``, as SQL text that Column.isin would give."""
    if not values:
        return "false"  # as isin: NULL is in no empty list
    return f"{sql_name(column)} IN ({', '.join(map(sql_literal, values))})"


def _selected(frame: DataFrame, columns: Sequence[str]) -> DataFrame:
    """``frame.select(*columns)``, the names given as SQL text (see sql_name): one call, not one per name."""
    return frame.selectExpr(*map(sql_name, columns))


def conform(df: DataFrame, table: TableDef, carry: Sequence[str] = ()) -> DataFrame:
    """Select and cast ``df`` to the table's columns, in order; missing nullable columns become NULL.

    ``carry`` names extra columns kept after the table's (e.g. a flag a MERGE condition reads).
    """
    present = set(df.columns)
    return df.selectExpr(*(f"CAST({sql_name(f.name) if f.name in present else 'NULL'} AS {f.dataType.simpleString()})"
                           f" AS {sql_name(f.name)}" for f in table.schema.fields), *map(sql_name, carry))


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
    compared: bool = False,
    target_only: str | None = None,
    by_list: bool = False,
) -> int:
    """MERGE ``updates`` into a table on natural ``keys``: re-running with the same input changes nothing.

    Only rows the table lacks, or holds with other values, are merged: an unchanged row's file is not
    rewritten, and when nothing changed there is no commit at all (a later stage's watermark stays).
    When every such row is a key the table lacks, they are appended: a MERGE would read the whole table
    again only to find no match. ``compared`` says the caller kept only such rows already (with
    ``update_existing`` False: only keys the table lacks). ``delete_unmatched`` makes the table equal
    ``updates``: rows no update matches are deleted (every update is then merged). ``target_only``, a
    condition on the table's columns alone (``t.<column>``), is added to the keys' so that Delta reads only
    the files whose statistics can match it. ``by_list`` (``updates`` are a night's few keys, cheap to read
    twice) compares them with the stored rows of the listed values of the first key (``listed``): the files
    whose statistics, dictionaries or bloom filters hold none of them are not read. Returns the number of
    rows inserted (from the commit's metrics).
    """
    source = as_stored(spark, locator, name, conform(updates, locator.definition(name)))
    if _empty_by_its_log(locator, name):
        return _fill(locator, name, source.localCheckpoint(eager=False))  # kept by _fill's count
    if not delete_unmatched and not compared:
        stored = read_table(spark, locator, name)
        if by_list:
            stored = narrowed(stored, keys[0], listed(source.select(keys[0])))
        # Kept by the counts, the one job before the write.
        source = _changed_rows(source, stored, keys, update_existing).localCheckpoint(eager=False)
        counted = aggregate(source, F.count(F.lit(1)).alias("rows"), F.count_if(~F.col("_new")).alias("held"))
        if not counted["held"]:
            return _fill(locator, name, source.drop("_new"), counted["rows"])
        source = source.drop("_new")
    elif not update_existing and not delete_unmatched:  # compared: every row is a key the table lacks
        return _fill(locator, name, source.localCheckpoint(eager=False))
    condition = _key_condition(keys) if target_only is None else f"{target_only} AND {_key_condition(keys)}"
    builder = delta_table(spark, locator, name).alias("t").merge(source.alias("s"), condition)
    if update_existing:
        builder = builder.whenMatchedUpdateAll()
    builder = builder.whenNotMatchedInsertAll()
    if delete_unmatched:
        builder = builder.whenNotMatchedBySourceDelete()
    metrics = builder.execute().first()
    return int(metrics["num_inserted_rows"]) if metrics is not None else 0


def row_digest(columns: Iterable[str]) -> Column:
    """A 64-bit hash of a row's values in ``columns``: how micdm tells whether a stored row changed."""
    return F.expr(f"xxhash64({', '.join(map(sql_name, columns))})")


def _changed_rows(source: DataFrame, stored: DataFrame, keys: Sequence[str], compare_values: bool,
                  ignored: Sequence[str] = ()) -> DataFrame:
    """The rows of ``source`` whose key ``stored`` lacks, or (``compare_values``) holds with other values
    (other than in the ``ignored`` columns), with ``_new`` true for the first kind: rows that can be
    appended rather than merged.

    Values are compared through row_digest, as ownership.py fingerprints the site's rows.
    """
    if not compare_values:
        return source.alias("s").join(_selected(stored, keys).alias("t"), _matching(keys), "left_anti").withColumn(
            "_new", F.lit(True))
    digest = row_digest([c for c in source.columns if c not in ignored])
    held = _selected(stored, source.columns).select(*keys, digest.alias("_held"))
    return source.withColumn("_digest", digest).alias("s").join(held.alias("t"), _matching(keys), "left").where(
        F.col("t._held").isNull() | (F.col("t._held") != F.col("s._digest"))).select(
        "s.*", F.col("t._held").isNull().alias("_new")).drop("_digest")


def _matching(columns: Sequence[str]) -> Column:
    """Join condition of frames aliased ``s`` and ``t`` on ``columns``, NULL-safe (as _key_condition in SQL)."""
    return F.expr(_key_condition(columns))


#: Keys to look up: a one-column frame, or its values as ``listed`` gives them.
Keys = DataFrame | list[Any]


def within(frame: DataFrame, column: str, keys: Keys | None) -> DataFrame:
    """The rows of ``frame`` whose ``column`` is one of ``keys`` (a one-column frame, or its values as
    ``listed`` gives them); all when None."""
    if keys is None:
        return frame
    if isinstance(keys, list):
        return frame.where(sql_in(column, keys))
    return frame.join(as_frame(frame.sparkSession, keys, column), column, "left_semi")


def narrowed(frame: DataFrame, column: str, keys: Keys | None) -> DataFrame:
    """The rows of ``frame`` whose ``column`` is one of ``keys`` when they are a list (``listed``), else every
    row: for a read whose rows are joined with the keys anyway, which a list narrows in the Parquet reader
    and a frame of many keys would only join twice."""
    return within(frame, column, keys) if isinstance(keys, list) else frame


@overload
def listed(keys: DataFrame, most: int = ...) -> Keys: ...
@overload
def listed(keys: list[Any], most: int = ...) -> list[Any]: ...
@overload
def listed(keys: None, most: int = ...) -> None: ...
def listed(keys: Keys | None, most: int = 10_000) -> Keys | None:
    """The values of ``keys`` (a one-column frame) where there are at most ``most``, else the frame (None
    stays None: every key; a list, listed already, stays as it is).

    ``within`` reads a table by a list of values as a filter that the Parquet reader also checks against
    each row group's dictionary, bloom filter (schema.TableDef.bloom_columns) and statistics: the files of
    the runs before a night's series, paths or natural keys were first seen hold none of them and are not
    read, where a semi-join reads every row of the table (UIDs are random, so no statistics narrow it). The
    list costs a Spark job to collect.
    """
    if keys is None or isinstance(keys, list):
        return keys
    # one partition: a limit over several collects them one job at a time until it has enough
    values = [row[0] for row in keys.distinct().coalesce(1).limit(most + 1).collect()]
    return keys if len(values) > most else sorted(value for value in values if value is not None)


def listed_or_kept(keys: DataFrame, most: int = 10_000) -> Keys:
    """``listed`` for keys computed from other tables, in the one job that lists them; beyond ``most`` the
    frame is checkpointed instead, so the stage's later reads do not compute it again."""
    found = listed(keys, most)
    return found if isinstance(found, list) else keys.localCheckpoint()


def as_frame(spark: SparkSession, keys: Keys, column: str) -> DataFrame:
    """``keys`` as a one-column frame named ``column``, for a join: a list becomes rows of the plan (no job)."""
    if isinstance(keys, list):
        return spark.createDataFrame([(key,) for key in keys], f"`{column}` string")
    return keys.select(F.col(keys.columns[0]).alias(column))


def key_count(keys: Keys) -> int:
    """How many ``keys`` there are: a list's length, a frame's rows (a Spark job)."""
    return len(keys) if isinstance(keys, list) else keys.count()


def delete_keys(spark: SparkSession, locator: TableLocator, name: str, keys: DataFrame, on: Sequence[str]) -> None:
    """Delete every row of a table whose ``on`` columns equal a row of ``keys`` (one MERGE commit)."""
    (delta_table(spark, locator, name).alias("t").merge(keys.select(*on).distinct().alias("s"), _key_condition(on))
     .whenMatchedDelete().execute())


def merge_or_delete(spark: SparkSession, locator: TableLocator, name: str, rows: DataFrame, keys: Sequence[str],
                    keep: Column) -> None:
    """One MERGE that upserts the rows where ``keep`` holds and deletes the matching rows where it does not.

    Used where each input decides which of two tables a key belongs in, so that moving a key from one
    table to the other is one commit per table.
    """
    table = locator.definition(name)
    source = conform(rows.withColumn("_keep", keep), table, carry=["_keep"])
    condition = _key_condition(keys)
    values: dict[str, str | Column] = {f"`{f.name}`": f"s.`{f.name}`" for f in table.schema.fields}
    (
        delta_table(spark, locator, name).alias("t").merge(source.alias("s"), condition)
        .whenMatchedUpdate(condition="s._keep", set=values)
        .whenMatchedDelete(condition="NOT s._keep")
        .whenNotMatchedInsert(condition="s._keep", values=values)
        .execute()
    )


def sync_rows(spark: SparkSession, locator: TableLocator, name: str, rows: DataFrame, keys: Sequence[str] | None,
              scope: tuple[str, DataFrame | list[Any]] | None = None, ignored: Sequence[str] = ()) -> int:
    """Make a table hold exactly ``rows``, writing only what differs, in one MERGE; returns the rows written.

    With ``scope`` (a column and a one-column frame of its values, or their list) only the stored rows with one of those
    values are compared, so a stage redoing some series leaves every other row alone. Rows that are new or
    differ (outside the ``ignored`` columns, such as a timestamp) are upserted and stored rows ``rows``
    lacks are deleted; an unchanged row is not rewritten, so the table's change feed holds real changes
    only and a run that changes nothing makes no commit. ``keys`` None: a table without a natural key,
    whose rows are told apart by all their columns but the ``ignored``.
    """
    source = as_stored(spark, locator, name, conform(rows, locator.definition(name))).localCheckpoint()
    if _empty_by_its_log(locator, name):
        return _fill(locator, name, source)
    keyed = keys is not None
    keys = keys if keys is not None else [c for c in source.columns if c not in ignored]
    stored = read_table(spark, locator, name) if scope is None else within(read_table(spark, locator, name), *scope)
    upserts = _changed_rows(source, stored, keys, keyed, ignored)  # keyless: the key is every compared value
    gone = _selected(stored, keys).distinct().alias("t").join(_selected(source, keys).alias("s"), _matching(keys),
                                                             "left_anti")
    changed = upserts.withColumn("_keep", F.lit(True)).unionByName(
        gone.withColumn("_keep", F.lit(False)), allowMissingColumns=True).localCheckpoint(eager=False)
    # A key a scope by that key lists is compared above already: only keys beyond the list are looked for
    # elsewhere in the table (counted here, in the same job).
    listed_keys = scope[1] if scope is not None and list(keys) == [scope[0]] and isinstance(scope[1], list) else None
    beyond = [] if listed_keys is None else [F.expr(f"count_if(NOT {sql_in(keys[0], listed_keys)}) AS beyond")]
    # kept by the counts; a stored row to replace or delete needs the MERGE, new rows alone an append
    counted = aggregate(changed, F.count(F.lit(1)).alias("rows"),
                        F.count_if(~F.coalesce("_new", F.lit(False))).alias("merged"), *beyond)
    unseen = keyed and scope is not None and (listed_keys is None or counted["beyond"] > 0)
    if not counted["merged"] and not (unseen and _held_outside(spark, locator, name, changed.select(*keys), keys)):
        return _fill(locator, name, changed.drop("_keep", "_new"), counted["rows"])
    merge_or_delete(spark, locator, name, changed, keys, F.col("_keep"))
    written: int = counted["rows"]
    return written


def _held_outside(spark: SparkSession, locator: TableLocator, name: str, keys: DataFrame,
                  columns: Sequence[str]) -> bool:
    """Whether the table holds any of ``keys`` at all: a key new to a sync's scope may be stored outside it
    (a series filed under another study until now), and its row is then merged, never added twice."""
    stored = read_table(spark, locator, name).select(*columns)
    if len(columns) == 1:  # a night's few keys: read by their list, as within() reads them
        stored = narrowed(stored, columns[0], listed(keys))
    return has_rows(stored.alias("t").join(keys.alias("s"), _matching(columns), "left_semi"))


def _empty_by_its_log(locator: TableLocator, name: str) -> bool:
    """True when delta-rs reads the table's log and finds no data file. Elsewhere False without asking:
    there, telling would cost every write a Spark job, to spare one in a table's first write."""
    local = _local_delta_log(locator, name)
    return local is not None and not local.file_uris()


def _fill(locator: TableLocator, name: str, rows: DataFrame, written: int | None = None) -> int:
    """Append every row of ``rows`` (checkpointed; ``written`` of them, when counted already), rows whose
    keys the table lacks: what a MERGE would do, in one append rather than a MERGE that reads the table
    for matches it cannot find. Returns the rows written."""
    written = rows.count() if written is None else written
    if written:
        append(locator, name, rows)
    return written


def overwrite(locator: TableLocator, name: str, rows: DataFrame, table: TableDef | None = None) -> None:
    """Replace a table's rows in one Delta commit (for tables rebuilt whole from their inputs).

    ``table`` gives the definition of a table that is not one of TABLES (the published-name tables).
    """
    _write(locator, name, rows, "overwrite", table)


def append(locator: TableLocator, name: str, rows: DataFrame) -> None:
    """Add rows in one Delta commit; only for rows whose keys the caller knows the table does not hold."""
    _write(locator, name, rows, "append")


def as_stored(spark: SparkSession, locator: TableLocator, name: str, rows: DataFrame) -> DataFrame:
    """``rows`` cast to the stored table's column types where a site chose other numeric widths."""
    if TABLES[name].layer != "cdm":
        return rows
    stored = {f.name: f.dataType for f in spark.table(locator.ref(name)).schema.fields}
    return rows.selectExpr(*(f"CAST({sql_name(f.name)} AS {stored[f.name].simpleString()}) AS {sql_name(f.name)}"
                             if f.name in stored and stored[f.name] != f.dataType else sql_name(f.name)
                             for f in rows.schema.fields))


def _write(locator: TableLocator, name: str, rows: DataFrame, mode: str, table: TableDef | None = None) -> None:
    shaped = conform(rows, table or locator.definition(name))
    if table is None:
        shaped = as_stored(shaped.sparkSession, locator, name, shaped)
    writer = shaped.write.format("delta").mode(mode)
    if mode == "overwrite":
        # A plain overwrite redefines the table's layout (Delta drops its clustering); replacing every row
        # keeps the table as created: its clustering, properties and constraints.
        writer = writer.option("replaceWhere", "true")
    path = locator.path(name)
    if path is not None:
        writer.save(path)
    else:
        writer.saveAsTable(locator.where(name))


def load_csv(spark: SparkSession, locator: TableLocator, name: str, path: str) -> int:
    """Replace a CDM table's rows with a CSV export of it (header row, CDM column names)."""
    raw = spark.read.option("header", True).option("inferSchema", False).csv(path)
    overwrite(locator, name, raw)
    return row_count(spark, locator, name)
