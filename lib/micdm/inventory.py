"""The file inventory: what a listing means against what micdm remembers of the files under the roots.

Each listed or remembered path gets a State (new, changed, to retry, unchanged, missing); the extract
stage reads the first three and records the new, changed and missing ones last, so a crash before that
makes the next run read the same files again. A listing identical to the last one that left nothing to
retry is recognised by its fingerprint alone, without a Spark job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import fnmatch
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StringType, StructField, StructType

from micdm.config import SourceSettings
from micdm.dicom.reader import QuarantineReason
from micdm.errors import ConfigError, SourceError
from micdm.schema import FILE_INVENTORY
from micdm.secrets import resolve_references
from micdm.sources import DiscoveredFile, list_below, list_prefixes, root_prefix
from micdm.spark import cores
from micdm.tables import (
    TableLocator,
    aggregate,
    append,
    conform,
    delete_keys,
    delta_table,
    may_have_rows,
    read_table,
    set_table_properties,
    table_properties,
)

__all__ = ["FILE_FIELDS", "RETRIED_REASONS", "WRITTEN_TABLES", "Listing", "Plan", "Settled", "State",
           "autoloader_listing", "driver_listing", "duplicate_message", "gone_paths", "plan", "present", "record",
           "settle", "settled", "split_listing"]

FILE_FIELDS = ("path", "file_size", "modification_time", "etag")
#: file_inventory property holding the fingerprint of the last listing that left nothing to do again.
_SETTLED_LISTING = "micdm.extract.settledListing"
#: file_inventory property holding the versions of WRITTEN_TABLES when the last extract completed.
_WRITTEN_VERSIONS = "micdm.extract.writtenVersions"
#: The tables extract writes a file's rows to before the inventory records the file.
WRITTEN_TABLES = ("dicom_instance", "dicom_quarantine", "sr_content_item")
#: Quarantine reasons worth another try on the next run, file unchanged or not.
RETRIED_REASONS = (QuarantineReason.STORAGE_ERROR.value, QuarantineReason.UNREADABLE.value)


class State(enum.StrEnum):
    """What one run does with a path it listed or remembers (the plan's ``state`` column)."""

    NEW = "new"
    CHANGED = "changed"
    """Size, modification time or ETag differ from the inventory, or the file came back after going missing."""
    RETRY = "retry"
    """Unchanged, but read again: a full refresh, or its last read failed for a reason worth another try."""
    UNCHANGED = "unchanged"
    MISSING = "missing"
    """Remembered under these roots, no longer listed."""


TO_READ = (State.NEW.value, State.CHANGED.value, State.RETRY.value)




@dataclass(frozen=True)
class Plan:
    """What one run does: the paths it acts on with their state (``frame``), counted per state."""

    frame: DataFrame
    """Every path the run reads or records (all but the unchanged ones)."""
    states: dict[str, int]
    stored: dict[str, bool]
    """Whether file_inventory, dicom_instance and dicom_quarantine may hold rows (False: a first load)."""

    @property
    def to_read(self) -> int:
        return sum(self.states.get(s, 0) for s in TO_READ)

    @property
    def missing(self) -> int:
        return self.states.get(State.MISSING.value, 0)

    def files_to_read(self) -> DataFrame:
        return self.frame.where(F.col("state").isin(*TO_READ)).select(*FILE_FIELDS)


#: How a duplicate's quarantine message begins: the path holding its SOPInstanceUID follows.
_DUPLICATE_OF = "SOPInstanceUID also in "
_SAME, _DIFFERENT = " (identical copy)", " (different content)"
_NAMED_PATH = rf"^{re.escape(_DUPLICATE_OF)}(.*)(?:{re.escape(_SAME)}|{re.escape(_DIFFERENT)})$"


def duplicate_message(kept: Column, same: Column) -> Column:
    """The quarantine message of a duplicate: the path that holds its SOPInstanceUID, and whether the two
    files hold the same header."""
    return F.concat(F.lit(_DUPLICATE_OF), kept, F.when(same, F.lit(_SAME)).otherwise(F.lit(_DIFFERENT)))


def _duplicate_of(message: Column) -> Column:
    """The path a duplicate's message names (duplicate_message's inverse)."""
    return F.regexp_extract(message, _NAMED_PATH, 1)


def _with_duplicates_of(spark: SparkSession, locator: TableLocator, frame: DataFrame, states: dict[str, int]
                        ) -> tuple[DataFrame, dict[str, int]]:
    """The plan, plus the files quarantined as duplicates of a file the plan acts on (missing, changed, read
    again), each to read again: the file holding their SOPInstanceUID may hold it no more (deleted, moved,
    re-sent as another instance), and one of them then does, as a full refresh would find."""
    acted_on = frame.select(F.col("path").alias("kept"))
    duplicates = (read_table(spark, locator, "dicom_quarantine")
                  .where(F.col("reason") == QuarantineReason.DUPLICATE_SOP_INSTANCE.value)
                  .withColumn("kept", _duplicate_of(F.col("message"))).join(acted_on, "kept", "left_semi")
                  .join(frame.select("path"), "path", "left_anti")
                  .join(_missing_earlier(spark, locator), "path", "left_anti")
                  .select(*FILE_FIELDS, F.lit(State.RETRY.value).alias("state"))).localCheckpoint(eager=True)
    found = duplicates.count()
    if not found:
        return frame, states
    return frame.unionByName(duplicates, allowMissingColumns=True), {
        **states, State.RETRY.value: states.get(State.RETRY.value, 0) + found}


def _missing_earlier(spark: SparkSession, locator: TableLocator) -> DataFrame:
    """The paths an earlier listing no longer found (their rows stay, marked)."""
    return read_table(spark, locator, "file_inventory").where(F.col("missing_since").isNotNull()).select("path")


def present(spark: SparkSession, locator: TableLocator, rows: DataFrame) -> DataFrame:
    """``rows`` (keyed by path) of the files the last listing found: a vanished file's rows stay in micdm's
    tables, marked missing in file_inventory, and describe no file of the archive."""
    return rows.join(_missing_earlier(spark, locator), "path", "left_anti")


def gone_paths(spark: SparkSession, locator: TableLocator, plan: Plan) -> DataFrame:
    """The paths no longer listed: missing in this plan, or since an earlier run."""
    return plan.frame.where(F.col("state") == State.MISSING.value).select("path").unionByName(
        _missing_earlier(spark, locator))


_FILE_SCHEMA = StructType([FILE_INVENTORY.schema[c] for c in FILE_FIELDS])
#: What a listing task returns: the files it found, or one row saying why it could not list.
_LISTED_SCHEMA = StructType([*_FILE_SCHEMA.fields, StructField("error", StringType())])
#: Files per batch a listing task returns.
_LISTED_BATCH = 4096


@dataclass(frozen=True)
class Listing:
    """What one listing found: how many files, their fingerprint, and (built on demand) the files."""

    files: int
    fingerprint: str
    frame: Callable[[], DataFrame]
    complete: bool = True
    """False for a listing of what arrived since the last run (Auto Loader): it says nothing of the rest."""
    done: Callable[[], None] = lambda: None
    """Called once the inventory holds what the listing found (Auto Loader's files leave its staging table)."""


def _arrow(files: list[DiscoveredFile], schema: StructType = _FILE_SCHEMA) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [getattr(f, name) for f in files] for name in FILE_FIELDS}
    if "error" in schema.fieldNames():
        columns["error"] = [None] * len(files)
    return pa.Table.from_pydict(columns, schema=to_arrow_schema(schema))


def _listing(spark: SparkSession, files: list[DiscoveredFile]) -> DataFrame:
    """The listing as a DataFrame, built through Arrow (row tuples would cost seconds per 10,000 files)."""
    return spark.createDataFrame(_arrow(files))


def _fingerprint(sources: SourceSettings, files: int, digest: int | str) -> str:
    text = repr((sources.roots, sources.include, sources.exclude, sources.listing, files, digest))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def driver_listing(spark: SparkSession, sources: SourceSettings, files: list[DiscoveredFile]) -> Listing:
    """A listing the driver made: every file's path, size, mtime and ETag in one digest."""
    digest = hashlib.blake2b(digest_size=16)
    for f in files:
        digest.update(f"{f.path}\0{f.file_size}\0{f.modification_time}\0{f.etag}\n".encode())
    return Listing(len(files), _fingerprint(sources, len(files), digest.hexdigest()),
                   lambda: _listing(spark, files))


def split_listing(spark: SparkSession, sources: SourceSettings) -> Listing:
    """A listing made by Spark tasks, each listing a share of the roots' folders ``listing_depth`` levels
    down: the driver holds those folders, never the files, which stay with the executors (checkpointed).
    Counted and fingerprinted by one job; a folder that cannot be listed stops the stage (SourceError)."""
    # Secret references are resolved here, on the driver; the tasks get the values in their closure.
    resolved = dataclasses.replace(sources, storage_options=resolve_references(dict(sources.storage_options)))
    folders, shallow = list_prefixes(resolved)

    def list_task(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            by_root: dict[str, list[str]] = {}
            for root, folder in zip(batch.column("root").to_pylist(), batch.column("folder").to_pylist(),
                                    strict=True):
                by_root.setdefault(root, []).append(folder)
            for root, under in by_root.items():
                try:
                    found = list_below(resolved, root, under)
                    while chunk := list(itertools.islice(found, _LISTED_BATCH)):
                        yield from _arrow(chunk, _LISTED_SCHEMA).to_batches()
                except SourceError as error:
                    yield pa.RecordBatch.from_pydict({**{c: [None] for c in FILE_FIELDS}, "error": [str(error)]},
                                                     schema=to_arrow_schema(_LISTED_SCHEMA))

    tasks = max(1, min(len(folders), cores(spark) * 4))
    listed = (spark.createDataFrame(folders or [("", "")], "root string, folder string").where("folder != ''")
              .repartition(tasks).mapInArrow(list_task, _LISTED_SCHEMA)
              .unionByName(_listing(spark, shallow).withColumn("error", F.lit(None).cast("string")))
              .localCheckpoint(eager=False))
    row = aggregate(listed, F.count("path").alias("files"), F.first("error", ignorenulls=True).alias("error"),
                    F.bit_xor(F.xxhash64(*FILE_FIELDS)).alias("digest"))
    if row["error"]:
        raise SourceError(row["error"])
    files = listed.select(*FILE_FIELDS)
    return Listing(row["files"], _fingerprint(sources, row["files"], row["digest"] or 0), lambda: files)


#: The columns of Spark's binaryFile source; the content column is never read (column pruning).
_BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length bigint, content binary"


def _glob_filter(root: str, sources: SourceSettings) -> Column:
    """sources.include / exclude on a streamed ``path``: a pattern matches the path below the root or the
    file name, as on the other listings."""
    below = F.substring(F.col("path"), len(root.rstrip("/")) + 2, 1 << 20)
    name = F.regexp_extract(F.col("path"), r"([^/]*)$", 1)

    def matches(patterns: tuple[str, ...]) -> Column:
        regexes = [fnmatch.translate(p) for p in patterns]
        return reduce(lambda a, b: a | b, [below.rlike(r) | name.rlike(r) for r in regexes], F.lit(False))

    return matches(sources.include) & ~matches(sources.exclude)


def autoloader_listing(spark: SparkSession, locator: TableLocator, sources: SourceSettings) -> Listing:
    """The files that arrived since the last run, from a file stream (Databricks Auto Loader, ``cloudFiles``,
    with file events where the site's storage has them) run to what is available now.

    Each batch lands in file_discovery before the stream's checkpoint moves on, and leaves it once the
    inventory holds it (``Listing.done``): a crash in between finds the same files again, none lost.
    """
    if sources.autoloader_checkpoint:
        checkpoint = sources.autoloader_checkpoint.rstrip("/")
    elif (table_folder := locator.path("file_discovery")) is not None:
        checkpoint = str(Path(table_folder).parent / "_checkpoints" / "file_discovery")
    else:
        raise ConfigError("sources.autoloader_checkpoint: set a folder for Auto Loader's checkpoint (e.g. a Unity "
                          "Catalog volume) when the tables live in a catalog")
    target = delta_table(spark, locator, "file_discovery")

    def land(batch: DataFrame, _batch_id: int) -> None:
        target.alias("t").merge(batch.alias("s"), "t.path = s.path AND t.modification_time <=> s.modification_time") \
            .whenNotMatchedInsertAll().execute()

    for index, root in enumerate(sources.roots):
        reader = spark.readStream.format(sources.autoloader_format).schema(_BINARY_FILE_SCHEMA)
        if sources.autoloader_format == "cloudFiles":
            reader = reader.option("cloudFiles.format", "binaryFile")
        for key, value in sources.autoloader_options.items():
            reader = reader.option(key, value)
        found = (reader.load(root)
                 .select(F.regexp_replace("path", "^file:(//)?", "").alias("path"),
                         F.col("length").alias("file_size"), F.col("modificationTime").alias("modification_time"),
                         F.lit(None).cast("string").alias("etag"), F.current_timestamp().alias("discovered_at"))
                 .where(_glob_filter(root, sources)))
        (found.writeStream.foreachBatch(land).trigger(availableNow=True)
         .option("checkpointLocation", f"{checkpoint}/{index}").start().awaitTermination())
    staged = read_table(spark, locator, "file_discovery").where(_under(sources.roots, sources.storage_options)) \
        .localCheckpoint()
    latest = Window.partitionBy("path").orderBy(F.col("modification_time").desc_nulls_last())
    files = staged.withColumn("_rank", F.row_number().over(latest)).where("_rank = 1").select(*FILE_FIELDS)
    count = files.count()
    landed = staged.select("path", "modification_time")

    def done() -> None:
        if count:
            delete_keys(spark, locator, "file_discovery", landed, ["path", "modification_time"])

    return Listing(count, "", lambda: files, complete=False, done=done)


def _under(roots: tuple[str, ...], storage_options: dict[str, Any]) -> Column:
    """Whether a table's ``path`` lies under one of the roots (one array test, however many roots)."""
    prefixes = F.array(*(F.lit(root_prefix(r, storage_options)) for r in roots))
    return F.exists(prefixes, lambda prefix: F.col("path").startswith(prefix))


def _states(spark: SparkSession, locator: TableLocator, listing: DataFrame, sources: SourceSettings,
            reread_all: bool, complete: bool) -> DataFrame:
    """Every listed path, and every remembered one under the roots, with its State. A listing that is not
    ``complete`` (Auto Loader's: the files that arrived since) says nothing of the files it leaves out:
    they are missing only from a complete one, and read again (with what the inventory knows of them) on
    a full refresh or when their last read is worth another try."""
    inventory = read_table(spark, locator, "file_inventory").where(_under(sources.roots, sources.storage_options))
    remembered = inventory.select("path", *(F.col(c).alias(f"known_{c}") for c in (*FILE_FIELDS[1:], "missing_since")),
                                  F.lit(True).alias("known"))
    retry = (read_table(spark, locator, "dicom_quarantine").where(F.col("reason").isin(*RETRIED_REASONS))
             .select("path", F.lit(True).alias("retry")))
    same = ((F.col("file_size") == F.col("known_file_size"))
            & F.col("modification_time").eqNullSafe(F.col("known_modification_time"))
            & F.col("etag").eqNullSafe(F.col("known_etag")) & F.col("known_missing_since").isNull())
    reread = F.lit(reread_all) | F.col("retry").isNotNull()
    present = F.col("known_missing_since").isNull()
    unlisted = (F.when(present, State.MISSING.value) if complete
                else F.when(present & reread, State.RETRY.value))
    state = (
        F.when(F.col("known").isNull(), State.NEW.value)
        .when(F.col("listed").isNull(), unlisted)
        .when(~same, State.CHANGED.value)
        .when(reread, State.RETRY.value)
        .otherwise(State.UNCHANGED.value)
    )
    known = {c: F.when(F.col("listed").isNull(), F.col(f"known_{c}")).otherwise(F.col(c)) for c in FILE_FIELDS[1:]}
    return (listing.withColumn("listed", F.lit(True)).join(remembered, "path", "full_outer")
            .join(retry, "path", "left").withColumn("state", state).where(F.col("state").isNotNull())
            .withColumns(known))


def plan(spark: SparkSession, locator: TableLocator, listing: Listing, sources: SourceSettings,
         reread_all: bool = False) -> Plan:
    """Every listed path, and every remembered one under the roots, with its State, counted; ``reread_all``
    (extract.full_refresh) makes every unchanged file one to read again."""
    stored = {name: may_have_rows(spark, locator, name) for name in ("file_inventory", "dicom_instance",
                                                                     "dicom_quarantine")}
    if not any(stored.values()):  # a first load: every listed file is new, no join with empty tables
        frame = listing.frame().withColumn("state", F.lit(State.NEW.value))
        return Plan(frame, {State.NEW.value: listing.files} if listing.files else {}, stored)
    # Only the paths this run acts on are kept (the counts keep them): the read and the inventory's update
    # take them from there rather than joining the whole listing with the whole inventory again.
    frame = _states(spark, locator, listing.frame(), sources, reread_all, listing.complete).where(
        F.col("state") != State.UNCHANGED.value).localCheckpoint(eager=False)
    states = {row["state"]: row["count"] for row in frame.groupBy("state").count().collect()}
    if stored["dicom_quarantine"] and not reread_all and any(
            states.get(s) for s in (State.CHANGED.value, State.MISSING.value, State.RETRY.value)):
        frame, states = _with_duplicates_of(spark, locator, frame, states)
    return Plan(frame, states, stored)


def record(spark: SparkSession, locator: TableLocator, plan: Plan, run_id: str) -> None:
    """Record new and changed files; remembered files no longer listed get missing_since, not deleted.
    A run that found nothing new leaves the inventory as it was."""
    changed = sum(plan.states.get(s, 0) for s in (State.NEW.value, State.CHANGED.value, State.MISSING.value))
    if changed:
        only_new = not any(plan.states.get(s) for s in (State.CHANGED.value, State.MISSING.value))
        _update_inventory(spark, locator, plan.frame, run_id, only_new)


def _update_inventory(spark: SparkSession, locator: TableLocator, plan: DataFrame, run_id: str,
                      only_new: bool) -> None:
    """Record new and changed files; remembered files no longer listed get missing_since, not deleted.

    When every change is a new file (a first load, a night's arrivals) no remembered row changes and the
    rows are appended: a MERGE would join the whole inventory to add them.
    """
    now = dt.datetime.now(dt.UTC)
    missing = F.col("state") == State.MISSING.value
    changes = plan.where(F.col("state").isin(State.NEW.value, State.CHANGED.value, State.MISSING.value)).select(
        *FILE_FIELDS, "state", F.lit(now).alias("first_seen"), F.lit(now).alias("changed_at"),
        F.when(missing, F.lit(now)).alias("missing_since"), F.lit(run_id).alias("run_id"))
    if only_new:
        append(locator, "file_inventory", changes)
        return
    listed = ("file_size", "modification_time", "etag", "changed_at", "missing_since", "run_id")
    (
        delta_table(spark, locator, "file_inventory").alias("t")
        .merge(conform(changes, FILE_INVENTORY, carry=["state"]).alias("s"), "t.path = s.path")
        .whenMatchedUpdate(condition=f"s.state = '{State.MISSING.value}'",
                           set={"missing_since": "s.missing_since", "run_id": "s.run_id"})
        .whenMatchedUpdate(set={c: f"s.{c}" for c in listed})
        .whenNotMatchedInsert(values={f"`{c}`": f"s.`{c}`" for c in FILE_INVENTORY.schema.fieldNames()})
        .execute()
    )


def settle(spark: SparkSession, locator: TableLocator, fingerprint: str | None, written: dict[str, str] | None = None
           ) -> None:
    """Remember (or forget, with "") the listing a completed run left nothing to retry in, and the versions
    the tables extract writes had when it completed (``written``); None leaves a value as it was.

    Written after every table of the stage, in one commit, so a crash before it leaves the old values: the
    next run plans in full, and finds the tables changed since, so it looks for rows of the files it reads.
    The values are hex digests and table versions, never user input.
    """
    values = {_SETTLED_LISTING: fingerprint} if fingerprint is not None else {}
    if written is not None:
        values[_WRITTEN_VERSIONS] = json.dumps(written, sort_keys=True)
    if values:
        set_table_properties(spark, locator, "file_inventory", values)


@dataclass(frozen=True)
class Settled:
    """What the last completed extract left in file_inventory's properties."""

    listing: str
    """The fingerprint of its listing, when it left nothing to retry ("" otherwise)."""
    written: dict[str, str]
    """The versions of the tables it writes (WRITTEN_TABLES) as it completed; empty before any."""


def settled(spark: SparkSession, locator: TableLocator) -> Settled:
    """The listing and table versions the last completed extract left (one read of the properties)."""
    properties = table_properties(spark, locator, "file_inventory")
    return Settled(properties.get(_SETTLED_LISTING, ""), json.loads(properties.get(_WRITTEN_VERSIONS, "{}")))

