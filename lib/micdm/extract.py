"""Extract stage: discovered files -> dicom_instance (bronze) + dicom_quarantine, on Spark.

Each Spark task takes a batch of paths and reads their headers with a thread pool (object-storage
latency hides behind the threads; parsing is pure Python in dicom/). Every file given to a task comes
back as one row, an instance or a quarantine reason, so nothing can fall through the cracks. The
inventory of seen files is updated last: a crash before that point makes the next run read the
same files again, and the MERGEs keyed on path make that harmless.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyspark import Accumulator
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from micdm.config import Settings
from micdm.dicom.reader import Outcome, QuarantineReason, ReadOptions, extract_file, quiet_pydicom
from micdm.schema import EXTRACT_RESULT, FILE_INVENTORY
from micdm.sources import is_local, list_files, opener, root_prefix
from micdm.tables import TableLocator, delta_table, merge_or_delete, read_table

__all__ = ["ExtractSummary", "extract", "read_headers"]

log = logging.getLogger(__name__)

_FILE_FIELDS = ("path", "file_size", "modification_time", "etag")
#: Quarantine reasons worth another try on the next run, file unchanged or not.
_RETRIED_REASONS = (QuarantineReason.STORAGE_ERROR.value, QuarantineReason.UNREADABLE.value)


@dataclass(frozen=True)
class ExtractSummary:
    run_id: str
    discovered: int
    to_read: int
    instances: int
    quarantined: int
    missing: int
    seconds: float
    read_seconds: float = 0.0
    bytes_read: int = 0
    file_bytes: int = 0

    @property
    def files_per_second(self) -> float:
        return self.to_read / self.seconds if self.seconds else 0.0


class _Progress:
    """Logs files done / total and the rate every few seconds while the read runs (driver side)."""

    def __init__(self, files_done: Accumulator[int], total: int, interval: float = 10.0) -> None:
        self._done = files_done
        self._total = total
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, name="micdm-extract-progress", daemon=True)
        self._started = time.monotonic()

    def _report(self) -> None:
        while not self._stop.wait(self._interval):
            elapsed = time.monotonic() - self._started
            done = self._done.value
            log.info("extract: %d/%d files (%.0f%%), %.1f files/s, %.0fs elapsed", done, self._total,
                     100 * done / max(self._total, 1), done / elapsed, elapsed)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


#: Rows per Arrow batch handed back to Spark: a task's memory stays flat however many files it reads.
_OUTPUT_ROWS = 512


def _batch_reader(options: ReadOptions, storage_options: dict[str, Any], threads: int,
                  files_done: Accumulator[int] | None = None,
                  ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    arrow_schema = to_arrow_schema(EXTRACT_RESULT.schema)

    def read_one(row: dict[str, Any]) -> dict[str, Any]:
        try:
            fetch = opener(row["path"], storage_options)
            return extract_file(fetch, row["path"], row["file_size"], options,
                                modification_time=row["modification_time"], etag=row["etag"])
        except Exception as error:  # the last line of defence: the file is still accounted for
            return {**row, "outcome": Outcome.QUARANTINE.value, "reason": QuarantineReason.PARSE_ERROR.value,
                    "message": f"{type(error).__name__}: {error}"[:1000], "bytes_read": 0}

    def to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
        # Column by column: pyarrow's row-wise from_pylist costs as much as parsing the header.
        columns = {name: [row.get(name) for row in rows] for name in arrow_schema.names}
        return pa.RecordBatch.from_pydict(columns, schema=arrow_schema)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        quiet_pydicom()  # before the threads start: it changes process-wide settings
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for batch in batches:
                files = batch.to_pylist()
                # Threads hide object-storage latency; on local disks they would only contend for the GIL.
                local = bool(files) and is_local(files[0]["path"], storage_options)
                for start in range(0, len(files), _OUTPUT_ROWS):
                    chunk = files[start:start + _OUTPUT_ROWS]
                    rows = [read_one(f) for f in chunk] if local else list(pool.map(read_one, chunk))
                    if files_done is not None:
                        files_done.add(len(rows))
                    yield to_batch(rows)

    return run


def _partitions(spark: SparkSession, files: int, files_per_partition: int) -> int:
    """A multiple of the cluster's cores, so the last wave of tasks keeps every core busy.

    Each Python task costs a fixed fraction of a second to start, so tasks are large; a task's memory
    does not grow with its size (results leave it in chunks of _OUTPUT_ROWS).
    """
    cores = max(1, spark.sparkContext.defaultParallelism)
    return cores * max(1, math.ceil(files / (cores * files_per_partition)))


def read_headers(files: DataFrame, settings: Settings, files_done: Accumulator[int] | None = None) -> DataFrame:
    """Lazily map a DataFrame of files (path, file_size, modification_time, etag) to extract results.

    ``files_done``, when given, counts the files read, for progress reports.
    """
    cfg = settings.extract
    options = ReadOptions(block_size=cfg.block_size, max_retries=cfg.max_retries,
                          header_json_max_bytes=cfg.header_json_max_bytes)
    reader = _batch_reader(options, dict(settings.sources.storage_options), cfg.threads_per_task, files_done)
    return files.select(*_FILE_FIELDS).mapInArrow(reader, EXTRACT_RESULT.schema)


def _listing(spark: SparkSession, settings: Settings) -> DataFrame:
    rows = [(f.path, f.file_size, f.modification_time, f.etag) for f in list_files(settings.sources)]
    return spark.createDataFrame(rows, schema=StructType([FILE_INVENTORY.schema[c] for c in _FILE_FIELDS]))


def _to_read(spark: SparkSession, locator: TableLocator, listing: DataFrame, full_refresh: bool) -> DataFrame:
    if full_refresh:
        return listing
    inventory = read_table(spark, locator, "file_inventory").where(F.col("missing_since").isNull())
    unchanged = listing.alias("l").join(
        inventory.alias("i"),
        (F.col("l.path") == F.col("i.path"))
        & (F.col("l.file_size") == F.col("i.file_size"))
        & F.col("l.modification_time").eqNullSafe(F.col("i.modification_time"))
        & F.col("l.etag").eqNullSafe(F.col("i.etag")),
        "left_semi",
    )
    retry = read_table(spark, locator, "dicom_quarantine").where(F.col("reason").isin(*_RETRIED_REASONS))
    return listing.join(unchanged, "path", "left_anti").unionByName(
        listing.join(retry.select("path"), "path", "left_semi")
    ).dropDuplicates(["path"])


def _with_duplicates(spark: SparkSession, locator: TableLocator, results: DataFrame) -> DataFrame:
    """The results, plus stored instances, with every SOPInstanceUID held by one file only.

    The first path (in sort order) of a UID stays an instance; the other files become quarantine rows
    with reason duplicate_sop_instance, whether they were read now or stored by an earlier run.
    """
    fresh = results.where(F.col("outcome") == Outcome.INSTANCE.value)
    stored = (
        read_table(spark, locator, "dicom_instance")
        .join(fresh.select("sop_instance_uid").distinct(), "sop_instance_uid", "left_semi")
        .join(results.select("path"), "path", "left_anti")
        .withColumn("outcome", F.lit(Outcome.INSTANCE.value))
    )
    keys = fresh.select("sop_instance_uid", "path").unionByName(stored.select("sop_instance_uid", "path"))
    shared_uids = keys.groupBy("sop_instance_uid").count().where(F.col("count") > 1).select("sop_instance_uid")
    if not shared_uids.take(1):  # the usual case: nothing to resolve, no window over the headers
        return results
    shared_uids = shared_uids.localCheckpoint(eager=True)
    candidates = fresh.join(shared_uids, "sop_instance_uid", "left_semi").unionByName(
        stored.join(shared_uids, "sop_instance_uid", "left_semi"), allowMissingColumns=True)
    by_uid = Window.partitionBy("sop_instance_uid").orderBy("path")
    first_of_uid = by_uid.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    same = (F.first("file_size").over(first_of_uid) == F.col("file_size")) & F.first("header_json").over(
        first_of_uid).eqNullSafe(F.col("header_json"))
    duplicates = (
        candidates.withColumns({"_rank": F.row_number().over(by_uid), "_kept": F.first("path").over(first_of_uid),
                                "_same": same})
        .where(F.col("_rank") > 1)
        .select(
            *_FILE_FIELDS, "bytes_read",
            F.lit(Outcome.QUARANTINE.value).alias("outcome"),
            F.lit(QuarantineReason.DUPLICATE_SOP_INSTANCE.value).alias("reason"),
            F.concat(F.lit("SOPInstanceUID also in "), F.col("_kept"),
                     F.when(F.col("_same"), F.lit(" (identical copy)")).otherwise(F.lit(" (different content)")))
            .alias("message"),
        )
    )
    # Materialised: the MERGEs that follow change dicom_instance, which `stored` reads.
    return results.join(duplicates.select("path"), "path", "left_anti").unionByName(
        duplicates, allowMissingColumns=True).localCheckpoint(eager=True)


def _merge_results(spark: SparkSession, locator: TableLocator, verdicts: DataFrame, run_id: str) -> None:
    """Each file's row goes to the table of its outcome and leaves the other one: one MERGE per table."""
    now = F.current_timestamp()
    rows = verdicts.withColumns({"extracted_at": now, "quarantined_at": now, "run_id": F.lit(run_id)})
    is_instance = F.col("outcome") == Outcome.INSTANCE.value
    merge_or_delete(spark, locator, "dicom_instance", rows, ["path"], keep=is_instance)
    merge_or_delete(spark, locator, "dicom_quarantine", rows, ["path"], keep=~is_instance)


def _update_inventory(spark: SparkSession, locator: TableLocator, listing: DataFrame, run_id: str,
                      roots: tuple[str, ...], storage_options: dict[str, Any]) -> int:
    """Record the listing; files under these roots that were not listed are marked missing, not deleted."""
    target = delta_table(spark, locator, "file_inventory")
    now = dt.datetime.now(dt.timezone.utc)
    seen = listing.withColumns({"first_seen": F.lit(now), "changed_at": F.lit(now), "missing_since": F.lit(None),
                                "run_id": F.lit(run_id)})
    changed = ("t.missing_since IS NOT NULL OR NOT (t.file_size <=> s.file_size AND "
               "t.modification_time <=> s.modification_time AND t.etag <=> s.etag)")
    prefixes = [_sql_string(root_prefix(r, storage_options)) for r in roots]
    under_roots = " OR ".join(f"startswith(t.path, '{p}')" for p in prefixes) or "false"
    (
        target.alias("t").merge(seen.alias("s"), "t.path = s.path")
        .whenMatchedUpdate(condition=changed, set={c: f"s.{c}" for c in (
            "file_size", "modification_time", "etag", "changed_at", "missing_since", "run_id")})
        .whenNotMatchedInsertAll()
        .whenNotMatchedBySourceUpdate(condition=f"t.missing_since IS NULL AND ({under_roots})",
                                      set={"missing_since": F.lit(now), "run_id": F.lit(run_id)})
        .execute()
    )
    return read_table(spark, locator, "file_inventory").where(F.col("missing_since") == F.lit(now)).count()


def _sql_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def extract(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str | None = None
            ) -> ExtractSummary:
    """Run the extract stage: list, read what is new or changed, MERGE results, update the inventory."""
    run_id = run_id or uuid.uuid4().hex
    started = time.monotonic()
    listing = _listing(spark, settings).persist()
    discovered = listing.count()
    to_read = _to_read(spark, locator, listing, settings.extract.full_refresh).persist()
    count = to_read.count()
    partitions = _partitions(spark, count, settings.extract.files_per_partition)
    log.info("extract: %d files listed, %d to read in %d tasks", discovered, count, partitions)
    instances = quarantined = bytes_read = file_bytes = 0
    read_seconds = 0.0
    if count:
        files_done = spark.sparkContext.accumulator(0)
        read_started = time.monotonic()
        with _Progress(files_done, count):
            # Materialised once: every MERGE below must see the same verdict for each file.
            results = read_headers(to_read.repartition(partitions, "path"), settings, files_done).localCheckpoint(
                eager=True)
        read_seconds = time.monotonic() - read_started
        bytes_read, file_bytes = results.agg(F.sum("bytes_read"), F.sum("file_size")).first()
        verdicts = _with_duplicates(spark, locator, results)
        read_now = dict(verdicts.join(results.select("path"), "path", "left_semi").groupBy("outcome").count().collect())
        instances = read_now.get(Outcome.INSTANCE.value, 0)
        quarantined = read_now.get(Outcome.QUARANTINE.value, 0)
        _merge_results(spark, locator, verdicts, run_id)
    missing = _update_inventory(spark, locator, listing, run_id, settings.sources.roots,
                                dict(settings.sources.storage_options))
    listing.unpersist()
    to_read.unpersist()
    seconds = time.monotonic() - started
    summary = ExtractSummary(run_id, discovered, count, instances, quarantined, missing, seconds, read_seconds,
                             bytes_read, file_bytes)
    log.info("extract: %d instances, %d quarantined, %d missing, %.1f files/s", instances, quarantined,
             missing, summary.files_per_second)
    return summary

