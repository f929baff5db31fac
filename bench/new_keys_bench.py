"""New keys into a table that grows: what a nightly write costs when it appends, and when it must MERGE.

Reproduce with ``make bench-new-keys`` (or ``.venv/bin/python bench/new_keys_bench.py``). Figures go to
bench/results/new_keys.json and .md; nothing here passes or fails a test.

Per size, a new warehouse whose id_map holds that many rows, written in one append. In one warm Spark
session, each write runs ``--repeats`` times with keys no earlier write used: `append` is ``merge_into``
with new keys only (compared with the table, then appended), `merge` is the same write plus one stored key
with another value, which makes it a MERGE. The difference between the two is what a write of new keys
saves by appending; if it grows with the table, the MERGE was reading the table for matches.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import figures

REPO = Path(__file__).resolve().parents[1]


def _measure(spark: Any, stored: int, new: int, repeats: int) -> dict[str, Any]:
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    from micdm.config import load_settings
    from micdm.tables import TableLocator, append, delta_table, init_tables, merge_into

    def keys(first: int, count: int, salt: str = "") -> DataFrame:
        return spark.range(first, first + count).select(
            F.lit("image_feature").alias("namespace"), F.concat(F.lit(f"key{salt}|"), F.col("id")).alias("natural_key"),
            F.col("id").cast("int").alias("id"), F.current_timestamp().alias("assigned_at"))

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={tmp}/warehouse"])
        locator = TableLocator.of(settings)
        init_tables(spark, locator, ["id_map"])
        if stored:
            append(locator, "id_map", keys(0, stored))
        seconds: dict[str, list[float]] = {"append": [], "merge": []}
        operations: dict[str, set[str]] = {"append": set(), "merge": set()}
        for repeat in range(repeats):
            for kind in seconds:
                fresh = keys(stored + (2 * repeat + (kind == "merge")) * new, new)
                if kind == "merge":  # a stored key with another id: the write must update it
                    fresh = fresh.unionByName(keys(0, 1).withColumn("id", F.lit(-repeat - 1)))
                started = time.monotonic()
                merge_into(spark, locator, "id_map", fresh, ["namespace", "natural_key"])
                seconds[kind].append(round(time.monotonic() - started, 2))
                operations[kind].add(delta_table(spark, locator, "id_map").history(1).first()["operation"])
    return {"stored_rows": stored, "new_rows": new,
            **{kind: {"seconds_median": statistics.median(s), "seconds": s, "operations": sorted(operations[kind])}
               for kind, s in seconds.items()}}


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# New keys into a growing table: append or MERGE", "",
             f"Measured {results['date']} on {results['machine']}; reproduce with `{results['command']}`. Median "
             f"of {results['repeats']} writes in a warm session, seconds (Delta operation of each write).", "",
             "| rows stored | new rows | append | merge | MERGE's extra |", "|---|---|---|---|---|"]
    for r in results["sizes"]:
        extra = round(r["merge"]["seconds_median"] - r["append"]["seconds_median"], 2)
        lines.append(f"| {r['stored_rows']:,} | {r['new_rows']:,} | {r['append']['seconds_median']} "
                     f"({', '.join(r['append']['operations'])}) | {r['merge']['seconds_median']} "
                     f"({', '.join(r['merge']['operations'])}) | {extra} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--new", type=int, default=10_000, help="new keys per write")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    figures.measure_sizes("new_keys", "make bench-new-keys", args.sizes, args.repeats, args.out,
                          lambda spark, size: _measure(spark, size, args.new, args.repeats), _markdown)


if __name__ == "__main__":
    main()
