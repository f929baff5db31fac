"""What a scan of one of micdm's tables costs after months of nightly runs, with and without compaction.

Reproduce with ``make bench-compaction`` (or ``.venv/bin/python bench/compaction_bench.py``). Figures go to
bench/results/compaction.json and .md; nothing here passes or fails a test.

Every incremental run appends a file or two to each table it writes, and a stage compacts each of micdm's
local tables it wrote once the table holds more than tables.COMPACT_ABOVE_FILES files. Here one warm local
session, started as micdm starts one, makes id_map as micdm makes it, appends a night's new keys to it
``--nights`` times, each followed by the compaction a stage makes, and every ``--every`` nights measures a
filtered read of it through ``read_table`` (how every stage reads micdm's tables): median milliseconds of
``--repeats`` reads, the Spark jobs of one, and the files the table's version holds. The same nights
without the compaction give the comparison.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import figures

REPO = Path(__file__).resolve().parents[1]
#: New keys a night adds to id_map.
KEYS_PER_NIGHT = 50


def _nights(spark: Any, work: Path, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Append ``args.nights`` nights of keys to two new id_maps, one compacted as a stage compacts it; every
    ``args.every`` nights, each one's read cost. The two take turns, so the JVM's warm-up favours neither."""
    from deltalake import DeltaTable as RustDeltaTable
    from pyspark.sql import functions as F

    from micdm.config import load_settings
    from micdm.tables import TableLocator, append, compact_small_files, init_tables, read_table

    ways = ("compacting", "not_compacting")
    locators = {way: TableLocator.of(load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={work / way}"]))
                for way in ways}
    for locator in locators.values():
        init_tables(spark, locator, ["id_map"])
    measured: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
    writing = dict.fromkeys(ways, 0.0)  # seconds of appends, and of compactions where they are made
    for night in range(1, args.nights + 1):
        keys = spark.range((night - 1) * KEYS_PER_NIGHT, night * KEYS_PER_NIGHT).select(
            F.lit("image_feature").alias("namespace"), F.concat(F.lit("key "), "id").alias("natural_key"),
            F.col("id").cast("int").alias("id"), F.current_timestamp().alias("assigned_at"))
        for way, locator in locators.items():
            started = time.perf_counter()
            append(locator, "id_map", keys)
            if way == "compacting":
                compact_small_files(spark, locator, ["id_map"])
            writing[way] += time.perf_counter() - started
        if night % args.every:
            continue
        for way in ways if night // args.every % 2 else ways[::-1]:  # each first every other time
            def read(locator: Any = locators[way]) -> object:
                return read_table(spark, locator, "id_map").where(F.col("id") < 5).collect()

            cost = figures.measure_operation(spark, read, args.repeats, f"{way}-{night}")
            files = len(RustDeltaTable(locators[way].path("id_map")).file_uris())
            measured[way].append({"night": night, "files": files, "read_ms_median": cost["milliseconds_median"],
                                  "read_jobs": cost["jobs"], "writing_seconds_so_far": round(writing[way], 1)})
            print(way, measured[way][-1], flush=True)
    return measured


def _markdown(results: dict[str, Any]) -> str:
    lines = [f"# Compaction benchmark ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. One warm local session with "
             f"micdm's defaults; id_map as micdm creates it, {results['keys_per_night']} new keys appended per "
             f"night; a filtered read through `read_table`, median of {results['repeats']} after as many "
             f"unmeasured; jobs: the Spark jobs of one read; files: those the table's version holds. Speed "
             f"probe: {results['machine_speed_seconds']} s (bench/figures.py).", "",
             "writing s: the seconds of every night's append so far, and of its compaction where it is made.", "",
             "| nights | compacting: files | read ms | jobs | writing s | not compacting: files | read ms | jobs "
             "| writing s |", "|---|---|---|---|---|---|---|---|---|"]
    for on, off in zip(results["compacting"], results["not_compacting"], strict=True):
        lines.append(f"| {on['night']} | " + " | ".join(
            f"{way['files']} | {way['read_ms_median']} | {way['read_jobs']} | {way['writing_seconds_so_far']}"
            for way in (on, off)) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=96)
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    args = parser.parse_args()
    work = figures.scratch(args.work, "micdm-compaction-bench")
    speed = figures.machine_speed()
    measured = _nights(figures.warm_session(), work, args)
    results = figures.stamp("python bench/compaction_bench.py", nights=args.nights, every=args.every,
                            repeats=args.repeats, keys_per_night=KEYS_PER_NIGHT, machine_speed_seconds=speed,
                            **measured)
    figures.write(REPO / "bench" / "results", "compaction", results, _markdown)


if __name__ == "__main__":
    main()
