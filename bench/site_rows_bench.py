"""micdm's rows in a site table that grows: what writing, checking and removing them costs.

Reproduce with ``make bench-site-rows`` (or ``.venv/bin/python bench/site_rows_bench.py``). Figures go to
bench/results/site_rows.json and .md; nothing here passes or fails a test.

Per size, a new warehouse whose measurement table holds that many of the site's own rows (ids from 1,
written in one append) and micdm's rows in its own id block. In one warm Spark session, each operation
runs ``--repeats`` times: `write` is ``write_site_rows`` with every value changed (so each run compares and
MERGEs them all), `check` is ``release_clashing_ids`` over their ids, `quality` is the quality stage's
checks (``quality.evaluate``) with an image_feature row on each of micdm's measurements, `changes` reads
what changed in the table since a watermark after the site's ETL appended ten rows (``Changes.rows``, as
an incremental link reads the site's tables), `remove` is ``remove_site_rows`` (then the rows are
written again for the next repeat). If the site's rows were read, the seconds would grow with them;
measurePersonCompleteness alone reads the whole table, by design.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import figures

REPO = Path(__file__).resolve().parents[1]
_BLOCK = 2_000_000_000


def _timed(repeats: int, run: Callable[[int], object], after: Callable[[], object] = lambda: None) -> list[float]:
    seconds = []
    for repeat in range(repeats):
        started = time.monotonic()
        run(repeat)
        seconds.append(round(time.monotonic() - started, 2))
        after()
    return seconds


def _measure(spark: Any, site_rows: int, ours: int, repeats: int) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from micdm import quality, watermark
    from micdm.changes import Changes
    from micdm.config import load_settings
    from micdm.ownership import release_clashing_ids, remove_site_rows, write_site_rows
    from micdm.tables import TableLocator, append, init_tables
    from micdm.vocab import table_concept_id

    def measurements(first: int, count: int, value: Any) -> Any:
        return spark.range(first, first + count).select(
            F.col("id").cast("int").alias("measurement_id"), (F.col("id") % 1000).cast("int").alias("person_id"),
            F.lit(0).alias("measurement_concept_id"), F.lit("2026-01-02").cast("date").alias("measurement_date"),
            F.lit(32817).alias("measurement_type_concept_id"), F.lit(value).cast("double").alias("value_as_number"))

    def changed_after_the_sites_etl(locator: Any, settings: Any, first: int) -> int:
        since = watermark.current(spark, locator, settings, ["measurement"])
        append(locator, "measurement", measurements(first, 10, 1.0))
        changes = Changes(since, watermark.current(spark, locator, settings, ["measurement"]))
        return changes.rows(spark, locator, "measurement").count()  # type: ignore[union-attr]

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={tmp}/warehouse"])
        locator = TableLocator.of(settings)
        init_tables(spark, locator)
        if site_rows:
            append(locator, "measurement", measurements(1, site_rows, 1.0))
        write_site_rows(spark, locator, {"measurement": measurements(_BLOCK, ours, -1.0)})
        ids = spark.range(_BLOCK, _BLOCK + ours).select(F.col("id").cast("int")).localCheckpoint()
        # micdm's rows as a run leaves them: allocated in id_map, each the clinical row of an image feature
        append(locator, "id_map", ids.select(F.lit("measurement").alias("namespace"),
                                             F.concat(F.lit("bench|"), F.col("id").cast("string")).alias("natural_key"),
                                             "id", F.current_timestamp().alias("assigned_at")))
        append(locator, "image_feature", ids.select(
            F.col("id").alias("image_feature_id"), (F.col("id") % 1000).cast("int").alias("person_id"),
            F.lit(1).alias("image_occurrence_id"), F.lit(table_concept_id("measurement")).alias("table_concept_id"),
            F.col("id").alias("table_row_id"), F.lit(0).alias("image_feature_concept_id"),
            F.lit(32817).alias("image_feature_type_concept_id")))
        times = {
            "write": _timed(repeats, lambda r: write_site_rows(spark, locator, {
                "measurement": measurements(_BLOCK, ours, float(r))})),
            "check": _timed(repeats, lambda r: release_clashing_ids(spark, locator, {"measurement": ids})),
            "quality": _timed(repeats, lambda r: quality.evaluate(spark, locator)),
            "changes": _timed(repeats, lambda r: changed_after_the_sites_etl(locator, settings,
                                                                             site_rows + 1 + 10 * r)),
            "remove": _timed(repeats, lambda r: remove_site_rows(spark, locator, "measurement", ids),
                             lambda: write_site_rows(spark, locator, {"measurement": measurements(_BLOCK, ours, 9.0)})),
        }
    return {"site_rows": site_rows, "micdm_rows": ours,
            **{op: {"seconds_median": statistics.median(s), "seconds": s} for op, s in times.items()}}


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# micdm's rows in a growing site table", "",
             f"Measured {results['date']} on {results['machine']}; reproduce with `{results['command']}`. Median "
             f"of {results['repeats']} runs in a warm session, seconds.", "",
             "| site rows | micdm rows | write | check | quality | changes | remove |", "|---|---|---|---|---|---|---|"]
    for r in results["sizes"]:
        lines.append(f"| {r['site_rows']:,} | {r['micdm_rows']:,} | {r['write']['seconds_median']} | "
                     f"{r['check']['seconds_median']} | {r['quality']['seconds_median']} | "
                     f"{r['changes']['seconds_median']} | {r['remove']['seconds_median']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Larger sizes are a flag away; writing 20,000,000 site rows alone takes over a quarter of an hour here.
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 2_000_000])
    parser.add_argument("--ours", type=int, default=20_000, help="micdm's rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    figures.measure_sizes("site_rows", "make bench-site-rows", args.sizes, args.repeats, args.out,
                          lambda spark, size: _measure(spark, size, args.ours, args.repeats), _markdown)


if __name__ == "__main__":
    main()
