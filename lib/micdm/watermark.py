"""What each stage read when it last succeeded, so that a run finding nothing new skips the stage.

A stage's watermark is the version of every table it reads (the Delta commit version; a digest of the
rows for a table that is not Delta), a digest of the settings it depends on, the files it reads besides
tables (algorithm results), and micdm's version. When all of them equal the stored watermark, the
stage's inputs are what they were after its last successful run, so its output would be the same.

The versions are taken after the stage ran: a table the stage writes and reads again (procedure_occurrence,
measurement) then counts the stage's own commit as seen. id_map and site_row are left out: every commit to
them comes with a commit to the table the ids belong to, which is an input where it matters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable

from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from micdm import __version__
from micdm.config import Settings
from micdm.tables import TableLocator, aggregate, merge_into, read_table

__all__ = ["Watermark", "current", "record", "stored"]

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


def _settings_digest(settings: Settings) -> str:
    sections = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
                if f.name not in _UNREAD_SECTIONS}
    text = json.dumps({name: dataclasses.asdict(value)
                       if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
                       for name, value in sections.items()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _table_version(spark: SparkSession, ref: str) -> str:
    """``v<n>`` for a Delta table; for anything else (a view, Parquet) a digest of its rows, which reads them."""
    try:
        last = spark.sql(f"DESCRIBE HISTORY {ref} LIMIT 1").select("version").first()
        return f"v{last['version']}" if last is not None else "v-"
    except AnalysisException:
        pass
    try:
        frame = spark.table(ref)
        row = aggregate(frame, F.count(F.lit(1)).alias("n"), F.sum(F.xxhash64(*frame.columns)).alias("h"))
    except AnalysisException:
        return "absent"
    log.info("watermark: %s is not a Delta table; its rows were read to tell whether it changed", ref)
    return f"d{row['n']}:{row['h']}"


def _files_version(spark: SparkSession, path: str) -> str:
    """Size and modification time of the files under ``path`` (their content is not read)."""
    try:
        files = spark.read.format("binaryFile").load(path).select("path", "length", "modificationTime")
        rows = sorted((r["path"], r["length"], str(r["modificationTime"])) for r in files.collect())
    except AnalysisException:
        return "absent"
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def current(spark: SparkSession, locator: TableLocator, settings: Settings, tables: Iterable[str],
            site_tables: Iterable[str] = (), files: Iterable[str] = ()) -> Watermark:
    """The watermark of the given inputs now: micdm's and the CDM's ``tables``, the site's own
    ``site_tables`` (crosswalks) and ``files``."""
    inputs = {name: _table_version(spark, locator.ref(name)) for name in tables if name not in _BOOKKEEPING}
    inputs |= {f"site:{name}": _table_version(spark, locator.site_ref(name)) for name in site_tables}
    inputs |= {f"file:{path}": _files_version(spark, path) for path in files}
    return Watermark(inputs, _settings_digest(settings))


def stored(spark: SparkSession, locator: TableLocator, stage: str) -> tuple[Watermark, str] | None:
    """The stage's watermark after its last successful run and that run's id; None before the first."""
    row = read_table(spark, locator, "stage_state").where(F.col("stage") == stage).first()
    if row is None:
        return None
    return Watermark(json.loads(row["inputs"]), row["settings_digest"], row["micdm_version"]), row["run_id"]


def record(spark: SparkSession, locator: TableLocator, stage: str, watermark: Watermark, run_id: str) -> None:
    """Store the watermark of a stage that has just succeeded (one row per stage)."""
    row = spark.createDataFrame([(stage, run_id, json.dumps(watermark.inputs, sort_keys=True),
                                  watermark.settings_digest, watermark.micdm_version)],
                                "stage string, run_id string, inputs string, settings_digest string, "
                                "micdm_version string").withColumn("finished_at", F.current_timestamp())
    merge_into(spark, locator, "stage_state", row, ["stage"])
