"""Shared fixtures: one local Spark session for the whole run, temporary warehouses, ../shared."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from micdm.config import Settings, load_settings

if TYPE_CHECKING:
    from micdm.tables import TableLocator

    from support.servers import ObjectStore

REPO = Path(__file__).resolve().parents[1]


#: What a test needs, by its folder: `make test-fast` leaves out all but the unit tests and the quick
#: Spark ones (see the README).
_NEEDS = {"spark": "spark", "e2e": "e2e", "integration": "servers"}
#: Fixtures that run the whole pipeline or build a large export: a test using one is slow.
_SLOW_FIXTURES = {"demo", "features", "site"}
#: Spark modules whose own work takes a minute or more.
_SLOW_MODULES = {"test_damaged_headers.py", "test_bad_input.py", "test_extract.py", "test_acquisition.py",
                 "test_link_stage.py", "test_tables.py", "test_vocabulary.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.parent.name
        if folder in _NEEDS:
            item.add_marker(_NEEDS[folder])
        if folder != "unit" and (_SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
                                 or item.path.name in _SLOW_MODULES or folder in ("e2e", "integration")):
            item.add_marker("slow")
        if item.path.name in ("test_orthanc.py", "test_spark_submit.py"):
            item.add_marker("servers")


def shared_dir() -> Path | None:
    """The read-only project material, from $MICDM_SHARED (set by .ci/run) or ../shared beside the repo."""
    configured = os.environ.get("MICDM_SHARED")
    candidate = Path(configured) if configured else REPO.parent / "shared"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared() -> Path:
    found = shared_dir()
    if found is None:
        pytest.skip("project material not found: set MICDM_SHARED to the shared/ folder (spec CSVs, DICOM corpus)")
    return found


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from micdm.config import SparkSettings
    from micdm.spark import get_spark

    session = get_spark(SparkSettings(master="local[2]", conf={
        # One shuffle partition: a test's rows are few, and a second task per shuffle costs the session's JVM
        # CPU that the suite, which keeps the machine busy, waits for. Two cores stay for the stages that size
        # their own tasks (extract, listing). Shuffles over several partitions are still run: the
        # console-script and spark-submit tests run with micdm's own settings, and the kill test compares
        # what those runs wrote with an uninterrupted run of this session.
        "spark.sql.shuffle.partitions": "1",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.driver.memory": "2g",
        # One session serves every test, and each test has its own warehouse: the Delta log cache (by
        # default 10,000 tables for an hour) and the SQL listener (1,000 queries) would keep the plans
        # of every table and query the suite ever touched.
        "spark.databricks.delta.delta.log.cacheSize": "64",
        "spark.sql.ui.retainedExecutions": "50",
    }), app_name="micdm-tests")
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a private warehouse, so tests never see each other's tables."""
    return load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={tmp_path / 'warehouse'}"])



@pytest.fixture
def empty(spark, tmp_path: Path) -> tuple[Settings, TableLocator]:
    """Settings and every table of a new warehouse, for a test to fill with the rows it checks."""
    from micdm.tables import TableLocator

    from support.warehouse import new_tables

    settings = load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={tmp_path / 'warehouse'}"])
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    return settings, locator


@pytest.fixture(scope="session")
def object_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], ObjectStore]]:
    """Real object stores on 127.0.0.1 by URL scheme (SeaweedFS, fake-gcs-server, Azurite), each started
    the first time a test asks for it and stopped at the end of the session."""
    from support.servers import OBJECT_STORES

    started: dict[str, ObjectStore] = {}

    def store(scheme: str) -> ObjectStore:
        if scheme not in started:
            kind = OBJECT_STORES[scheme]
            if kind.missing:
                pytest.skip(kind.missing)
            started[scheme] = kind(tmp_path_factory.mktemp(kind.name)).start()
        return started[scheme]

    yield store
    for server in started.values():
        server.stop()


@pytest.fixture(scope="session")
def demo(spark, tmp_path_factory):
    """The whole pipeline, run twice, on a small synthetic export; tables snapshotted after the first run."""
    import csv

    from micdm.pipeline import run_pipeline
    from micdm.synth import generate, load_site
    from micdm.tables import TableLocator, read_table

    from support.warehouse import new_tables

    root = tmp_path_factory.mktemp("demo")
    generate(root / "export", patients=14, seed=11, pixels="none")
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={root / 'warehouse'}", f"sources.roots=[{root / 'export' / 'dicom'}]",
        "extract.files_per_partition=200"])
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    load_site(spark, locator, root / "export")
    first = run_pipeline(spark, settings)
    snapshot = {name: read_table(spark, locator, name).toPandas() for name in
                ("image_occurrence", "image_feature", "measurement", "series_link")}
    before = _marker_job(spark)
    second = run_pipeline(spark, settings)
    jobs_of_second = _marker_job(spark) - before - 1
    with (root / "export" / "truth.csv").open(newline="") as handle:
        truth = {row["series_instance_uid"]: row for row in csv.DictReader(handle)}
    return dict(settings=settings, locator=locator, first=first, second=second, snapshot=snapshot, truth=truth,
                jobs_of_second=jobs_of_second)


def _marker_job(spark) -> int:
    """The id of a job started now: Spark numbers jobs in order, so two markers bound the jobs between them."""
    from support.jobs import jobs_started

    with jobs_started(spark, "micdm-test-marker") as jobs:
        spark.range(1).collect()
    return max(jobs)


def _concepts_missing(spark, locator) -> set[tuple[str, str, int]]:
    """(table, field, concept id) of every concept id in a row micdm wrote that the site's CONCEPT lacks."""
    from pyspark.sql import functions as F

    from micdm.ids import allocated_ids
    from micdm.schema import TABLES
    from micdm.tables import read_table

    known = read_table(spark, locator, "concept").select("concept_id")
    missing = set()
    for name in ("image_occurrence", "image_feature", "measurement", "observation", "procedure_occurrence"):
        rows = read_table(spark, locator, name)
        if name not in ("image_occurrence", "image_feature"):
            rows = rows.join(allocated_ids(spark, locator, name, f"{name}_id"), f"{name}_id", "left_semi")
        for field in TABLES[name].schema.fieldNames():
            if field.endswith("concept_id"):
                ids = rows.select(F.col(field).alias("concept_id")).where("concept_id IS NOT NULL").distinct()
                missing |= {(name, field, r[0]) for r in ids.join(known, "concept_id", "left_anti").collect()}
    return missing


@pytest.fixture(scope="session")
def concepts_missing():
    """A function (spark, locator) -> the concept ids micdm wrote that are not in CONCEPT (should be none)."""
    return _concepts_missing


class Reliability:
    """What the fault and bad-input tests tried and found, written to a summary file at the end of the run."""

    def __init__(self) -> None:
        self.inputs_tried = 0
        self.accounted_for = 0
        self.kills_survived = 0
        self.duplicates_found = 0
        self.outages_survived = 0
        self.concurrent_runs_refused = 0
        self.instances_checked_against_source = 0
        self.instances_with_foreign_uids = 0
        self.cases: list[dict[str, object]] = []

    def record(self, test: str, details: dict[str, object] | None = None, **figures: int) -> None:
        """Add a test's figures (any of the counters above) to the totals; ``details`` go to its case only."""
        for name, value in figures.items():
            setattr(self, name, getattr(self, name) + value)
        self.cases.append({"test": test, **figures, **(details or {})})

    def summary(self) -> dict[str, object]:
        return {name: value for name, value in vars(self).items()}


_RELIABILITY = Reliability()


@pytest.fixture(scope="session")
def reliability() -> Reliability:
    return _RELIABILITY


def pytest_terminal_summary(terminalreporter, exitstatus: int, config) -> None:
    """Write the reliability summary (MICDM_RELIABILITY_SUMMARY, else .micdm/reliability.json) and show it."""
    if not _RELIABILITY.cases:
        return
    import json

    target = Path(os.environ.get("MICDM_RELIABILITY_SUMMARY", REPO / ".micdm" / "reliability.json"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(_RELIABILITY.summary(), indent=2) + "\n")
    totals = {k: v for k, v in _RELIABILITY.summary().items() if k != "cases"}
    terminalreporter.write_sep("-", "reliability summary")
    terminalreporter.write_line(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in totals.items()))
    terminalreporter.write_line(f"written to {target}")
