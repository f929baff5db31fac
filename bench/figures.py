"""Where a benchmark's figures go: ``<name>.json`` and ``<name>.md`` under bench/results (or ``--out``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def stamp(command: str, **figures: Any) -> dict[str, Any]:
    """The figures with the day, the machine and the command that reproduces them."""
    machine = f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"
    return {"date": dt.date.today().isoformat(), "machine": machine, "command": command, **figures}


def machine_speed() -> float:
    """Seconds one core takes for a fixed pure-Python loop, taken beside a run: this machine's speed drifts
    by more than many changes gain, and the figure says how fast it was when a run was measured."""
    started, total = time.perf_counter(), 0
    for number in range(10_000_000):
        total += number
    return round(time.perf_counter() - started, 2)


def scratch(given: str | None, name: str) -> Path:
    """The benchmark's scratch folder, emptied: ``given``, else ``name`` under the system's temp folder."""
    folder = Path(given or Path(os.environ.get("TMPDIR", "/tmp")) / name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def made_class_archive() -> Path:
    """The class archive `micdm setup` made for this runtime; exits when there is none."""
    from micdm.spark import class_archive

    archive = class_archive()
    if archive is None:
        sys.exit("no class archive: run `micdm setup` first")
    return archive


def write(out: Path, name: str, results: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(results))
    print(markdown(results))


def measure_sizes(name: str, command: str, sizes: list[int], repeats: int, out: Path,
                  measure: Callable[[Any, int], dict[str, Any]], markdown: Callable[[dict[str, Any]], str]) -> None:
    """Each size measured in one warm two-core session (printed as it comes), then the figures written."""
    from micdm.config import SparkSettings
    from micdm.spark import get_spark

    spark = get_spark(SparkSettings(master="local[2]", conf={"spark.sql.shuffle.partitions": "4",
                                                             "spark.ui.enabled": "false",
                                                             "spark.driver.memory": "4g"}), app_name="bench")
    measured = []
    for size in sizes:
        measured.append(measure(spark, size))
        print(measured[-1], flush=True)
    write(out, name, stamp(command, repeats=repeats, sizes=measured), markdown)


def warm_session(app_name: str = "bench") -> Any:
    """A local session started as micdm starts one (its defaults, two cores), without the web UI."""
    from micdm.config import SparkSettings
    from micdm.spark import get_spark

    return get_spark(SparkSettings(master="local[2]", conf={"spark.ui.enabled": "false"}), app_name=app_name)


def measure_operation(spark: Any, operation: Callable[[], object], repeats: int, group: str) -> dict[str, Any]:
    """Median milliseconds of ``repeats`` runs of ``operation`` after as many unmeasured ones, and the
    Spark jobs one run starts (counted under the job group ``group``, which must be new)."""
    context = spark.sparkContext
    for _ in range(repeats):
        operation()
    milliseconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        operation()
        milliseconds.append((time.perf_counter() - started) * 1000)
    context.setJobGroup(group, group)
    try:
        operation()
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    jobs = len(context.statusTracker().getJobIdsForGroup(group))
    return {"milliseconds_median": round(statistics.median(milliseconds), 1),
            "milliseconds": [round(m, 1) for m in milliseconds], "jobs": jobs}
