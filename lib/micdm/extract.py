"""Extract stage: discovered files -> dicom_instance (bronze) + dicom_quarantine, on Spark.

Each Spark task takes a batch of paths and parses them chunk by chunk (pure Python in dicom/). The
first blocks of the next chunk come in meanwhile: a helper thread fetches them from object storage
(many concurrent ranged GETs); on a local disk it only hints the kernel, which reads them ahead. Every
file given to a task comes back as one row, an instance or a quarantine reason, so nothing can fall
through the cracks. The inventory of seen files (micdm.inventory) is updated last: a crash before that
point makes the next run read the same files again, and the MERGEs keyed on path make that harmless.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyspark import Accumulator
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import ArrayType, StructType

from micdm import inventory, watermark
from micdm.changes import Changes
from micdm.config import Settings, SourceSettings
from micdm.dicom.reader import PERMANENT_ERRORS, Outcome, QuarantineReason, ReadOptions, extract_file, quiet_pydicom
from micdm.errors import InvalidInputError
from micdm.schema import EXTRACT_RESULT, SR_CONTENT_ITEM
from micdm.secrets import resolve_references
from micdm.sources import list_files
from micdm.spark import classic_context, cores
from micdm.stage import StageCounts
from micdm.tables import (
    TableLocator,
    aggregate,
    append,
    delete_keys,
    has_rows,
    listed,
    may_have_rows,
    merge_or_delete,
    read_table,
    stored_schema,
    within,
)
from micdm.transport import opener, read_first_blocks, with_first_block

__all__ = ["PYTHON_WORKERS_GROUP", "ExtractSummary", "extract", "read_headers", "run", "start_readers"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ExtractSummary:
    run_id: str
    discovered: int
    to_read: int
    instances: int
    quarantined: int
    missing: int
    seconds: float
    bytes_read: int = 0
    file_bytes: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each phase (list, plan, read, verdicts, write, inventory): where a run's time went."""

    @property
    def files_per_second(self) -> float:
        return self.to_read / self.seconds if self.seconds else 0.0

    @property
    def read_seconds(self) -> float:
        return self.phase_seconds.get("read", 0.0)


class _Phases:
    """Times the phases of one run into a dict, and logs each at DEBUG."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started
            log.debug("extract: %s took %.2fs", name, self.seconds[name])


class _Progress:
    """Logs files done / total and the rate every few seconds while the read runs (driver side)."""

    def __init__(self, files_done: Accumulator[int] | None, total: int, interval: float = 10.0) -> None:
        self._done = files_done
        self._total = total
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, name="micdm-extract-progress", daemon=True)
        self._started = time.monotonic()

    def _report(self) -> None:
        assert self._done is not None, "started only with an accumulator"
        while not self._stop.wait(self._interval):
            elapsed = time.monotonic() - self._started
            done = self._done.value
            log.info("extract: %d/%d files (%.0f%%), %.1f files/s, %.0fs elapsed", done, self._total,
                     100 * done / max(self._total, 1), done / elapsed, elapsed)

    def __enter__(self) -> _Progress:
        if self._done is not None:  # Spark Connect has no accumulators: no progress lines
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


#: Storage errors in a row (each after its retries) after which a task stops retrying files whose first
#: block failed as well: an outage then costs one quick failed request per file, not a round of back-offs.
#: Such files are quarantined as storage_error, which the next run reads again.
_STORE_DOWN_AFTER = 3


def _unread(row: dict[str, Any], reason: QuarantineReason, message: str) -> dict[str, Any]:
    """A quarantine row for a file the reader never got to."""
    return {**row, "outcome": Outcome.QUARANTINE.value, "reason": reason.value, "message": message[:1000],
            "bytes_read": 0}


def _store_failed(first: bytes | BaseException | None) -> bool:
    return isinstance(first, OSError) and not isinstance(first, PERMANENT_ERRORS)


class _OutageBreaker:
    """Counts a task's storage errors in a row; past _STORE_DOWN_AFTER, failed first blocks are not retried."""

    def __init__(self) -> None:
        self.failing = 0

    def see_first_blocks(self, paths: list[str], firsts: list[bytes | BaseException | None]) -> None:
        """A chunk of object-store files whose every first block failed finds the store down at once: each
        was already retried by its client (the Azure SDK for over a minute), and retrying each file again
        would cost that many minutes more. (A local file's error stays the reader's to judge.)"""
        if firsts and all("://" in path for path in paths) and all(_store_failed(first) for first in firsts):
            self.failing = max(self.failing, _STORE_DOWN_AFTER)

    def read(self, read_one: Callable[[dict[str, Any], Any], dict[str, Any]], row: dict[str, Any],
             first: bytes | BaseException | None) -> dict[str, Any]:
        if _store_failed(first) and self.failing >= _STORE_DOWN_AFTER:
            result = _unread(row, QuarantineReason.STORAGE_ERROR,
                             f"{type(first).__name__}: {first!s}; the store kept failing, read again next run")
        else:
            result = read_one(row, first)
        self.failing = self.failing + 1 if result.get("reason") == QuarantineReason.STORAGE_ERROR.value else 0
        return result


#: Rows per Arrow batch handed back to Spark: a task's memory stays flat however many files it reads.
_OUTPUT_ROWS = 512


def _batch_reader(options: ReadOptions, storage_options: dict[str, Any], concurrency: int,
                  files_done: Accumulator[int] | None = None,
                  ) -> Callable[[Iterable[pa.RecordBatch]], Iterable[pa.RecordBatch]]:
    arrow_schema = to_arrow_schema(EXTRACT_RESULT.schema)

    def read_one(row: dict[str, Any], first: bytes | BaseException | None) -> dict[str, Any]:
        try:
            fetch = opener(row["path"], storage_options)
            return extract_file(fetch if first is None else with_first_block(first, fetch), row["path"],
                                row["file_size"], options, modification_time=row["modification_time"],
                                etag=row["etag"])
        except Exception as error:  # the last line of defence: the file is still accounted for
            return _unread(row, QuarantineReason.PARSE_ERROR, f"{type(error).__name__}: {error}")

    def to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
        # Column by column: pyarrow's row-wise from_pylist costs as much as parsing the header.
        columns = {name: [row.get(name) for row in rows] for name in arrow_schema.names}
        return pa.RecordBatch.from_pydict(columns, schema=arrow_schema)

    def run(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        # Entered before the threads start: it changes process-wide settings, and restores them at the end.
        with quiet_pydicom(), ThreadPoolExecutor(max_workers=1) as ahead:

            def first_blocks(chunk: list[dict[str, Any]]) -> list[bytes | BaseException | None]:
                try:
                    return read_first_blocks([f["path"] for f in chunk], [f["file_size"] for f in chunk],
                                             options.block_size, storage_options, concurrency)
                except Exception:  # each file then fetches (and retries) on its own
                    return [None] * len(chunk)

            outage = _OutageBreaker()
            for batch in batches:
                files = batch.to_pylist()
                chunks = [files[i:i + _OUTPUT_ROWS] for i in range(0, len(files), _OUTPUT_ROWS)]
                # The next chunk's first blocks are fetched while this chunk is parsed: I/O and parsing overlap.
                if not chunks:
                    continue
                upcoming = ahead.submit(first_blocks, chunks[0])
                for index, chunk in enumerate(chunks):
                    firsts = upcoming.result()
                    if index + 1 < len(chunks):
                        upcoming = ahead.submit(first_blocks, chunks[index + 1])
                    outage.see_first_blocks([f["path"] for f in chunk], firsts)
                    rows = [outage.read(read_one, f, first) for f, first in zip(chunk, firsts, strict=True)]
                    if files_done is not None:
                        files_done.add(len(rows))
                    yield to_batch(rows)

    return run


def _refuse_invalid(results: DataFrame, count: int) -> None:
    """validation: raise: stop before writing, naming some of the files (the next run reads them again)."""
    examples = results.where(F.col("reason") == QuarantineReason.INVALID_UID.value).select("path", "message").limit(3)
    named = "; ".join(f"{row.path}: {row.message}" for row in examples.collect())
    raise InvalidInputError(f"extract: {count} file(s) hold invalid UIDs and validation is 'raise', so nothing "
                            f"was written ({named}); set validation: warn to quarantine them as invalid_uid")


def _partitions(spark: SparkSession, files: int, files_per_partition: int) -> int:
    """A multiple of the cluster's cores, so the last wave of tasks keeps every core busy.

    Each Python task costs a fixed fraction of a second to start, so tasks are large; a task's memory
    does not grow with its size (results leave it in chunks of _OUTPUT_ROWS).
    """
    wave = cores(spark)
    return wave * max(1, math.ceil(files / (wave * files_per_partition)))


def read_headers(files: DataFrame, settings: Settings, files_done: Accumulator[int] | None = None) -> DataFrame:
    """Lazily map a DataFrame of files (path, file_size, modification_time, etag) to extract results.

    ``files_done``, when given, counts the files read, for progress reports.
    """
    cfg = settings.extract
    options = ReadOptions(block_size=cfg.block_size, max_retries=cfg.max_retries,
                          header_json_max_bytes=cfg.header_json_max_bytes, sr_max_items=cfg.sr_max_items,
                          max_nesting=cfg.max_nesting, validation=settings.validation)
    # Secret references are resolved here, on the driver; the tasks get the values in their closure.
    storage_options = resolve_references(dict(settings.sources.storage_options))
    reader = _batch_reader(options, storage_options, cfg.threads_per_task, files_done)
    return files.select(*inventory.FILE_FIELDS).mapInArrow(reader, EXTRACT_RESULT.schema)


def _worker_ready(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A task whose unpickling imports this module, as the read's tasks do: the worker that ran it keeps
    pydicom, pyarrow and the reader loaded for them."""
    for batch in batches:
        yield pa.RecordBatch.from_pydict({"id": pa.array([batch.num_rows], pa.int64())})


#: The Spark job group of start_readers' job, as the Spark UI shows it.
PYTHON_WORKERS_GROUP = "micdm-python-workers"


def start_readers(spark: SparkSession, locator: TableLocator, full_refresh: bool = False) -> threading.Thread | None:
    """Start a local session's Python workers in the background, one per core, with the reader imported,
    when the run is to read files: a full refresh, or no listing settled yet (a first load, or files left
    to retry). A run that may find nothing new starts no job here; extract() starts them once its listing
    differs from the settled one, while the plan is made.

    A fresh process otherwise starts them when the read's tasks arrive, each task waiting for an
    interpreter to start and import the reader while the driver has nothing else to do; started while
    the driver prepares the tables and lists the files, they are idle and ready by then (Spark keeps an
    idle worker for a minute and hands it to the session's next Python task). Over a cluster or Spark
    Connect nothing is started: executors come and go, and their workers are theirs to keep.
    """
    if not full_refresh and stored_schema(spark, locator, "file_inventory") is not None \
            and inventory.settled(spark, locator).listing:
        return None  # extract() starts them once the listing shows a change
    return _start_python_workers(spark)


def _start_python_workers(spark: SparkSession) -> threading.Thread | None:
    context = classic_context(spark)
    if context is None or not (context.master or "").startswith("local"):
        return None
    workers = cores(spark)
    frame = spark.range(0, workers, 1, workers).mapInArrow(_worker_ready, "id long")

    def start() -> None:
        context.setJobGroup(PYTHON_WORKERS_GROUP, "micdm: starting Python workers")
        try:
            frame.collect()
        except Exception as error:  # only a head start: the read starts its own workers
            log.debug("Python workers not started ahead: %s: %s", type(error).__name__, error)

    thread = threading.Thread(target=start, name="micdm-python-workers", daemon=True)
    thread.start()
    return thread


def _with_duplicates(spark: SparkSession, locator: TableLocator, results: DataFrame, repeats_within: bool,
                     plan: inventory.Plan) -> DataFrame:
    """The results, plus stored instances, with every SOPInstanceUID held by one present file only.

    The first path (in sort order) of a UID stays an instance; the other files become quarantine rows
    with reason duplicate_sop_instance, whether they were read now or stored by an earlier run. A stored
    instance at a path no longer listed (inventory.gone_paths, looked up only when a UID is shared) holds its
    UID no more: a file moved within the export stays an instance at its new path. ``repeats_within`` says
    whether a UID repeats among the results themselves; ``plan`` whether dicom_instance may hold rows.
    """
    any_stored = plan.stored["dicom_instance"]
    fresh = results.where(F.col("outcome") == Outcome.INSTANCE.value)
    uids = fresh.select("sop_instance_uid")
    # A night's UIDs are looked up by their list, which dicom_instance's bloom filters rule out of the files
    # of earlier runs; with nothing stored, no job lists them.
    stored = (
        within(read_table(spark, locator, "dicom_instance"), "sop_instance_uid", listed(uids) if any_stored else uids)
        .join(results.select("path"), "path", "left_anti")
        .withColumn("outcome", F.lit(Outcome.INSTANCE.value))
    )
    keys = fresh.select("sop_instance_uid", "path")
    if any_stored:
        keys = keys.unionByName(stored.select("sop_instance_uid", "path"))
    elif not repeats_within:  # the usual first load: nothing to resolve, no further job
        return results
    shared_uids = keys.groupBy("sop_instance_uid").count().where(F.col("count") > 1).select("sop_instance_uid")
    if not has_rows(shared_uids):  # the usual case: nothing to resolve, no window over the headers
        return results
    shared_uids = shared_uids.localCheckpoint(eager=True)
    candidates = fresh.join(shared_uids, "sop_instance_uid", "left_semi").unionByName(
        stored.join(shared_uids, "sop_instance_uid", "left_semi").join(
            inventory.gone_paths(spark, locator, plan), "path", "left_anti"),
        allowMissingColumns=True)
    by_uid = Window.partitionBy("sop_instance_uid").orderBy("path")
    first_of_uid = by_uid.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    same = (F.first("file_size").over(first_of_uid) == F.col("file_size")) & (
        F.first("header_digest").over(first_of_uid) == F.col("header_digest"))
    duplicates = (
        candidates.withColumns({"_rank": F.row_number().over(by_uid), "_kept": F.first("path").over(first_of_uid),
                                "_same": same})
        .where(F.col("_rank") > 1)
        .select(
            *inventory.FILE_FIELDS, "bytes_read",
            F.lit(Outcome.QUARANTINE.value).alias("outcome"),
            F.lit(QuarantineReason.DUPLICATE_SOP_INSTANCE.value).alias("reason"),
            inventory.duplicate_message(F.col("_kept"), F.col("_same")).alias("message"),
        )
    )
    # Materialised: the MERGEs that follow change dicom_instance, which `stored` reads.
    return results.join(duplicates.select("path"), "path", "left_anti").unionByName(
        duplicates, allowMissingColumns=True).localCheckpoint(eager=True)


def _write_results(spark: SparkSession, locator: TableLocator, verdicts: DataFrame, run_id: str,
                   instances: int, quarantined: int, reports: int, any_stored: bool, items_stored: bool) -> None:
    """Each file's row goes to the table of its outcome and leaves the other one.

    When no path of this run is in either table yet (``any_stored`` false: a first load; or new files) the
    rows are appended, ``instances`` and ``quarantined`` of them (an empty append would still cost a
    commit); otherwise one MERGE per table moves each path to where its verdict puts it. ``reports`` counts
    the structured reports read, whose content items go to sr_content_item (``items_stored`` false when it
    holds none of these paths).
    """
    now = F.current_timestamp()
    rows = verdicts.withColumns({"extracted_at": now, "quarantined_at": now, "run_id": F.lit(run_id)})
    if locator.header_format == "variant":
        rows = rows.withColumn("header", F.parse_json("header_json"))
    is_instance = F.col("outcome") == Outcome.INSTANCE.value

    def paths_stored() -> bool:
        stored = read_table(spark, locator, "dicom_instance").select("path").unionByName(
            read_table(spark, locator, "dicom_quarantine").select("path"))
        return has_rows(stored.join(verdicts.select("path"), "path", "left_semi"))

    _write_report_content(spark, locator, rows.where(is_instance), verdicts.select("path"), reports, items_stored)
    if any_stored and paths_stored():  # both tables read only when they may hold these paths
        merge_or_delete(spark, locator, "dicom_instance", rows, ["path"], keep=is_instance)
        merge_or_delete(spark, locator, "dicom_quarantine", rows, ["path"], keep=~is_instance)
    else:
        if instances:
            append(locator, "dicom_instance", rows.where(is_instance))
        if quarantined:
            append(locator, "dicom_quarantine", rows.where(~is_instance))


#: The columns of one content item as extract_result.sr_content holds them (JSON).
_CONTENT_ITEMS = ArrayType(StructType([f for f in SR_CONTENT_ITEM.schema.fields
                                       if f.name not in ("path", "sop_instance_uid", "run_id")]))


def _write_report_content(spark: SparkSession, locator: TableLocator, instances: DataFrame, paths: DataFrame,
                          reports: int, items_stored: bool) -> None:
    """Structured reports' content items into sr_content_item, replacing those of every path read now.

    Written before dicom_instance: a crash in between leaves the inventory unchanged, so the next run reads
    the same files and replaces their items again, whatever dicom_instance holds.
    """
    items = instances.where(F.col("sr_content").isNotNull()).select(
        "path", "sop_instance_uid", "run_id", F.explode(F.from_json("sr_content", _CONTENT_ITEMS)).alias("i")
    ).select("path", "sop_instance_uid", "run_id", "i.*")
    if items_stored and may_have_rows(spark, locator, "sr_content_item"):
        delete_keys(spark, locator, "sr_content_item", paths, ["path"])
    if reports:  # counted with the outcomes: no job of its own to find out
        append(locator, "sr_content_item", items)


@dataclass(frozen=True)
class _Written:
    """What reading the planned files gave: rows written per table, bytes, and reads worth another try."""

    instances: int = 0
    quarantined: int = 0
    bytes_read: int = 0
    """Bytes fetched from the files read (file_bytes: their whole size)."""
    file_bytes: int = 0
    retry_pending: int = 0
    """Files quarantined for a reason worth another try: while there are any, the listing is not settled."""


def _read_and_write(spark: SparkSession, locator: TableLocator, settings: Settings, plan: inventory.Plan,
                    run_id: str, phase: _Phases, rows_of_paths: bool) -> _Written:
    """Read the planned files' headers once, decide duplicates, write dicom_instance, dicom_quarantine and
    sr_content_item; ``rows_of_paths`` False when those tables cannot hold a row of the files read."""
    count = plan.to_read
    partitions = _partitions(spark, count, settings.extract.files_per_partition)
    log.info("extract: %d to read in %d tasks", count, partitions)
    context = classic_context(spark)
    files_done = context.accumulator(0) if context is not None else None  # none over Spark Connect
    is_instance = F.col("outcome") == Outcome.INSTANCE.value
    with phase("read"), _Progress(files_done, count):
        # Materialised once, by the job that counts the outcomes: every write below must see the same
        # verdict for each file.
        results = read_headers(plan.files_to_read().repartition(partitions, "path"), settings,
                               files_done).localCheckpoint(eager=False)
        read = aggregate(results, F.count_if(is_instance).alias("instances"),
                         F.count_distinct(F.when(is_instance, F.col("sop_instance_uid"))).alias("uids"),
                         F.sum("bytes_read").alias("bytes_read"), F.sum("file_size").alias("file_bytes"),
                         F.count_if(F.col("reason").isin(*inventory.RETRIED_REASONS)).alias("retry"),
                         F.count_if(F.col("reason") == QuarantineReason.INVALID_UID.value).alias("invalid"),
                         F.count_if(F.col("sr_content").isNotNull()).alias("reports"))
        if read["invalid"] and settings.validation == "raise":
            _refuse_invalid(results, read["invalid"])
    with phase("verdicts"):
        verdicts = _with_duplicates(spark, locator, results, read["uids"] < read["instances"], plan)
        instances = read["instances"] if verdicts is results else (
            verdicts.join(results.select("path"), "path", "left_semi").where(is_instance).count())
    log.info("extract: writing %d instances and %d quarantine rows", instances, count - instances)
    with phase("write"):
        _write_results(spark, locator, verdicts, run_id, instances, count - instances, read["reports"],
                       rows_of_paths and (plan.stored["dicom_instance"] or plan.stored["dicom_quarantine"]),
                       rows_of_paths)
    return _Written(instances, count - instances, read["bytes_read"] or 0, read["file_bytes"] or 0, read["retry"])


def _listing(spark: SparkSession, locator: TableLocator, sources: SourceSettings) -> inventory.Listing:
    if sources.listing == "split":
        return inventory.split_listing(spark, sources)
    if sources.listing == "autoloader":
        return inventory.autoloader_listing(spark, locator, sources)
    return inventory.driver_listing(spark, sources, list(list_files(sources)))


def _no_row_stored(spark: SparkSession, locator: TableLocator, plan: inventory.Plan, last: inventory.Settled) -> bool:
    """Whether no table extract writes can hold a row of the files to read: each file is new to the
    inventory, and none of those tables changed since the last extract completed. A run killed after its
    writes and before the inventory's record leaves rows of files that are new again, and leaves the tables
    at versions no completed run recorded: the next run then looks for those rows and replaces them."""
    if not last.written or plan.to_read != plan.states.get(inventory.State.NEW.value, 0):
        return False
    return watermark.versions(spark, locator, inventory.WRITTEN_TABLES) == last.written


def extract(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str | None = None
            ) -> ExtractSummary:
    """Run the extract stage: list, plan against the inventory, read what is new or changed, write the
    verdicts, record the inventory."""
    run_id = run_id or uuid.uuid4().hex
    started, phase = time.monotonic(), _Phases()
    with phase("list"):
        listing = _listing(spark, locator, settings.sources)
    with phase("plan"):
        last = inventory.settled(spark, locator)
    if listing.complete and last.listing == listing.fingerprint and not settings.extract.full_refresh:
        # The same files as a run that completed with nothing left to retry: the plan would be all UNCHANGED.
        log.info("extract: %d files listed, unchanged since the last run", listing.files)
        return ExtractSummary(run_id, listing.files, 0, 0, 0, 0, time.monotonic() - started,
                              phase_seconds=phase.seconds)
    if last.listing and not settings.extract.full_refresh:  # start_readers left them to this moment
        _start_python_workers(spark)
    with phase("plan"):
        plan = inventory.plan(spark, locator, listing, settings.sources, settings.extract.full_refresh)
        rows_of_paths = bool(plan.to_read) and not _no_row_stored(spark, locator, plan, last)
    log.info("extract: %d files listed, %d to read", listing.files, plan.to_read)
    written = _read_and_write(spark, locator, settings, plan, run_id, phase, rows_of_paths) if plan.to_read \
        else _Written()
    with phase("inventory"):
        inventory.record(spark, locator, plan, run_id)
        listing.done()
        settled_now = ("" if written.retry_pending else listing.fingerprint) if listing.complete else last.listing
        inventory.settle(spark, locator, None if settled_now == last.listing else settled_now,
                         watermark.versions(spark, locator, inventory.WRITTEN_TABLES) if plan.to_read else None)
    summary = ExtractSummary(run_id, listing.files, plan.to_read, written.instances, written.quarantined, plan.missing,
                             time.monotonic() - started, written.bytes_read, written.file_bytes, phase.seconds)
    log.info("extract: %d instances, %d quarantined, %d missing, %.1f files/s", summary.instances,
             summary.quarantined, summary.missing, summary.files_per_second)
    return summary


def run(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str,
        changes: Changes | None = None) -> StageCounts:
    """The extract stage, counted for the run summary."""
    summary = extract(spark, locator, settings, run_id=run_id)
    return {"discovered": summary.discovered, "read": summary.to_read, "instances": summary.instances,
            "quarantined": summary.quarantined, "missing": summary.missing,
            "files/s": round(summary.files_per_second, 1)}
