"""What the first query that changes a string's case costs a new local session: with micdm's default (the
JVM maps case) against Spark's own (ICU maps case, after building a title-case table of every code point).

Reproduce with ``make bench-case-mapping`` (or ``.venv/bin/python bench/case_mapping_bench.py``). Figures go
to bench/results/case_mapping.json and bench/results/case_mapping.md; nothing here passes or fails a test.

Each probe is a new process: a local session with micdm's defaults (the way's setting the one difference), a
query without case mapping to start the session's first job, then upper() on a column twice; seconds of
each upper() query. The two ways alternate so that the machine's drift falls on both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from figures import stamp, write
from pipeline_bench import RESULTS

WAYS = {"micdm's default (the JVM maps case)": "false", "Spark's default (ICU maps case)": "true"}


def _probe(icu: str) -> dict[str, float]:
    from pyspark.sql import functions as F

    from micdm.config import SparkSettings
    from micdm.spark import get_spark

    spark = get_spark(SparkSettings(master="local[2]", conf={"spark.ui.enabled": "false",
                                                             "spark.sql.icu.caseMappings.enabled": icu}),
                      app_name="case-mapping-bench")
    words = spark.range(100).select(F.concat(F.lit("ct "), F.col("id").cast("string")).alias("word"))
    words.select(F.trim("word")).collect()
    seconds = {}
    for query in ("first upper()", "second upper()"):
        started = time.perf_counter()
        words.select(F.upper("word")).collect()
        seconds[query] = round(time.perf_counter() - started, 3)
    return seconds


def _markdown(results: dict) -> str:
    lines = [f"# Case mapping benchmark ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. Each probe a new process with a "
             f"local session; {results['repeats']} probes each way, alternating. Seconds of the first and second "
             "query that upper-cases a column, after a first query without case mapping; medians, then each probe.",
             "", "| way | first upper() s | second upper() s | first upper(), each probe |", "|---|---|---|---|"]
    for way, probes in results["probes"].items():
        first = [p["first upper()"] for p in probes]
        second = [p["second upper()"] for p in probes]
        lines.append(f"| {way} | {statistics.median(first):.2f} | {statistics.median(second):.2f} | "
                     + ", ".join(f"{x:.2f}" for x in first) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", choices=sorted(set(WAYS.values())), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(_probe(args.probe)))
        return
    probes: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way, icu in WAYS.items():
            out = subprocess.run([sys.executable, __file__, "--probe", icu], check=True, capture_output=True,
                                 text=True).stdout
            probes[way].append(json.loads(out.strip().splitlines()[-1]))
            print(way, probes[way][-1], flush=True)
    write(RESULTS, "case_mapping",
          stamp("python bench/case_mapping_bench.py", repeats=args.repeats, probes=probes), _markdown)


if __name__ == "__main__":
    main()
