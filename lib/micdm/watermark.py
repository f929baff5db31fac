"""What each stage read when it last succeeded, so that a run finding nothing new skips the stage.

A stage's watermark is the version of every table it reads (the Delta commit version; a digest of the
rows for a table that is not Delta), a digest of the settings it depends on, the files it reads besides
tables (algorithm results), and micdm's version. When all of them equal the stored watermark, the
stage's inputs are what they were after its last successful run, so its output would be the same.

The versions are read before the stage runs, so that a site's commit during the run is seen as a change
the next time; a table the stage writes and reads again (procedure_occurrence, measurement) is read again
after the run, so that the stage's own commit counts as seen. id_map and site_row are left out: every commit to
them comes with a commit to the table the ids belong to, which is an input where it matters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from delta.tables import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from micdm import __version__
from micdm.config import Settings
from micdm.tables import TableLocator, aggregate, overwrite, row_digest, small_table_rows

__all__ = ["Watermark", "current", "record", "refreshed", "stored", "versions"]

log = logging.getLogger(__name__)

#: Tables left out of every watermark (see the module's docstring).
_BOOKKEEPING = frozenset({"id_map", "site_row"})
#: Settings sections no stage after extract reads.
_UNREAD_SECTIONS = frozenset({"sources", "extract", "synth", "report", "spark"})


@dataclasses.dataclass(frozen=True)
class Watermark:
    """The state of a stage's inputs: table -> version (or digest), settings digest, micdm version."""

    inputs: dict[str, str]
    settings_digest: str
    micdm_version: str = __version__

    def changes_from(self, earlier: Watermark | None) -> list[str]:
        """What differs from ``earlier`` (empty when nothing does), for the log."""
        if earlier is None:
            return ["no earlier run"]
        changed = [name for name in sorted(set(self.inputs) | set(earlier.inputs))
                   if self.inputs.get(name) != earlier.inputs.get(name)]
        if self.settings_digest != earlier.settings_digest:
            changed.append("settings")
        if self.micdm_version != earlier.micdm_version:
            changed.append(f"micdm {earlier.micdm_version} -> {self.micdm_version}")
        return changed


def _settings_digest(settings: Settings, located: bool) -> str:
    """The settings a stage depends on. The warehouse's folder counts only for a ``located`` stage (one that
    writes it down elsewhere): stage_state lives in the warehouse, so a warehouse copied or moved keeps
    watermarks that describe its own tables."""
    sections = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
                if f.name not in _UNREAD_SECTIONS}
    if not located:
        sections["storage"] = dataclasses.replace(settings.storage, warehouse="")
    text = json.dumps({name: dataclasses.asdict(value)
                       if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
                       for name, value in sections.items()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _delta_version(spark: SparkSession, ref: str, folder: str | None) -> str | None:
    """The last commit's version of a Delta table; None when it is not Delta.

    A table in a local ``folder`` is read from its log's file names (the highest commit file, as the Delta
    protocol numbers them), without a Spark job; any other through its history (one small job).
    """
    log_folder = Path(folder, "_delta_log") if folder is not None and "://" not in folder else None
    commits = [int(p.stem) for p in log_folder.glob("*.json") if p.stem.isdigit()] if log_folder else []
    if commits:
        return f"v{max(commits)}"
    try:
        last = DeltaTable.forName(spark, ref).history(1).select("version").first()
    except (AnalysisException, Py4JJavaError):
        return None
    return f"v{last['version']}" if last is not None else "v-"


def _digest(spark: SparkSession, ref: str) -> str:
    """For a table that is not Delta (a view, Parquet): a digest of its rows, which reads them all."""
    try:
        frame = spark.table(ref)
        row = aggregate(frame, F.count(F.lit(1)).alias("n"), F.sum(row_digest(frame.columns)).alias("h"))
    except AnalysisException:
        return "absent"
    log.info("watermark: %s is not a Delta table; its rows were read to tell whether it changed", ref)
    return f"d{row['n']}:{row['h']}"


def _local_files(path: str) -> list[tuple[str, int, str]] | None:
    """(path, size, modification time) of a local file or of the files under a local folder; None for a
    URI or a glob, which Spark lists."""
    if "://" in path or any(c in path for c in "*?[{"):
        return None
    root = Path(path.removeprefix("file:"))
    found = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    return [(str(f), stat.st_size, str(stat.st_mtime_ns)) for f in found for stat in (f.stat(),)]


def _files_version(spark: SparkSession, path: str) -> str:
    """Size and modification time of the files under ``path`` (their content is not read); a local path
    is read from the file system, without a Spark job."""
    local = _local_files(path)
    if local is not None:
        return hashlib.sha256(json.dumps(local).encode()).hexdigest()[:16] if local else "absent"
    try:
        files = spark.read.format("binaryFile").load(path).select("path", "length", "modificationTime")
        rows = sorted((r["path"], r["length"], str(r["modificationTime"])) for r in files.collect())
    except AnalysisException:
        return "absent"
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def current(spark: SparkSession, locator: TableLocator, settings: Settings, tables: Iterable[str],
            site_tables: Iterable[str] = (), files: Iterable[str] = (), located: bool = False) -> Watermark:
    """The watermark of the given inputs now: micdm's and the CDM's ``tables``, the site's own
    ``site_tables`` (crosswalks) and ``files``; ``located`` for a stage whose output names the warehouse's
    folder (publish's views), which must run again when the warehouse moves."""
    return Watermark(versions(spark, locator, tables, site_tables, files), _settings_digest(settings, located))


def versions(spark: SparkSession, locator: TableLocator, tables: Iterable[str], site_tables: Iterable[str] = (),
             files: Iterable[str] = ()) -> dict[str, str]:
    """The version of each table (and crosswalk and file) as a watermark holds it."""
    def state(ref: str, folder: str | None) -> str:
        return _delta_version(spark, ref, folder) or _digest(spark, ref)

    inputs = {name: state(locator.ref(name), locator.path(name)) for name in tables if name not in _BOOKKEEPING}
    inputs |= {f"site:{name}": state(locator.site_ref(name), locator.site_path(name)) for name in site_tables}
    return inputs | {f"file:{path}": _files_version(spark, path) for path in files}


def refreshed(spark: SparkSession, locator: TableLocator, mark: Watermark, tables: Iterable[str]) -> Watermark:
    """``mark`` with the versions of ``tables`` read again: those a stage has just written and reads too."""
    again = [name for name in tables if name in mark.inputs]
    return dataclasses.replace(mark, inputs=mark.inputs | versions(spark, locator, again))


def stored(spark: SparkSession, locator: TableLocator) -> dict[str, tuple[Watermark, str]]:
    """Every stage's watermark after its last successful run, with that run's id (one read)."""
    return {row["stage"]: (Watermark(json.loads(row["inputs"]), row["settings_digest"], row["micdm_version"]),
                           row["run_id"]) for row in small_table_rows(spark, locator, "stage_state")}


def record(spark: SparkSession, locator: TableLocator, marks: dict[str, tuple[Watermark, str]]) -> None:
    """Store the watermarks of stages that have just succeeded (one row per stage, one commit).

    The table holds a row per stage, so it is written whole: one overwrite of a few rows from the driver
    costs a fraction of the jobs a MERGE plans to find the rows it replaces."""
    if not marks:
        return
    now = dt.datetime.now()  # naive local time, as small_table_rows gives the rows kept
    rows = [row for row in small_table_rows(spark, locator, "stage_state") if row["stage"] not in marks] + [
        {"stage": stage, "run_id": run_id, "inputs": json.dumps(mark.inputs, sort_keys=True),
         "settings_digest": mark.settings_digest, "micdm_version": mark.micdm_version, "finished_at": now}
        for stage, (mark, run_id) in sorted(marks.items())]
    table = locator.definition("stage_state").schema
    overwrite(locator, "stage_state", spark.createDataFrame(
        [tuple(row[f.name] for f in table.fields) for row in rows], table))
