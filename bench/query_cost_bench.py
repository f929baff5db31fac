"""What one query, one Delta read and one Delta write cost in a warm local session: the floor under a run.

Reproduce with ``make bench-query-cost`` (or ``.venv/bin/python bench/query_cost_bench.py``). Figures go to
bench/results/query_cost.json and .md; nothing here passes or fails a test.

A pipeline run is hundreds of small queries and commits (bench/results/pipeline.md counts the Spark jobs of
each stage). Their rows are few, so what each costs is Spark's and Delta's own work per query: planning,
listing a table's files (a job of its own in Delta), scheduling, and a commit's log handling. Each operation
here runs ``--repeats`` times after as many unmeasured ones, in one session started as micdm starts a local
one (its defaults, two cores), on a Delta table of a few hundred rows in four files. Per operation: the
median milliseconds and the Spark jobs it started (by job group). Multiplying a run's jobs by these figures
gives what the run costs even with a JVM that has compiled everything already.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import figures

REPO = Path(__file__).resolve().parents[1]


def _operations(spark: Any, table: str, appended: str) -> dict[str, Callable[[], object]]:
    """The operations, by name: reads and a MERGE of ``table`` (whose files stay four), appends to ``appended``."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    schema = spark.read.format("delta").load(table).schema
    files = [str(p) for p in Path(table).glob("*.parquet")]
    one_row = spark.createDataFrame([(7, "changed")], schema)

    def merge() -> object:
        return (DeltaTable.forPath(spark, table).alias("t").merge(one_row.alias("s"), "t.id = s.id")
                .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())

    return {
        "query without a table (range, filter, collect)": lambda: spark.range(10).where("id > 3").collect(),
        "filtered read of the Delta table (a new DataFrame each time)":
            lambda: spark.read.format("delta").load(table).where(F.col("id") < 5).collect(),
        "the same read of its Parquet files, schema given":
            lambda: spark.read.schema(schema).parquet(*files).where(F.col("id") < 5).collect(),
        "append of one row to a Delta table": lambda: one_row.write.format("delta").mode("append").save(appended),
        "MERGE of one row into the Delta table": merge,
    }


def _markdown(results: dict[str, Any]) -> str:
    lines = [f"# Query cost benchmark ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. One warm local session with "
             f"micdm's defaults (two cores), a Delta table of {results['rows']} rows in {results['files']} files; "
             f"median of {results['repeats']} runs of each operation after as many unmeasured; jobs: the Spark "
             f"jobs one run started. Speed probe: {results['machine_speed_seconds']} s (bench/figures.py).", "",
             "| operation | ms | Spark jobs |", "|---|---|---|"]
    lines += [f"| {name} | {op['milliseconds_median']} | {op['jobs']} |" for name, op in results["operations"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    args = parser.parse_args()
    work = figures.scratch(args.work, "micdm-query-cost-bench")
    speed = figures.machine_speed()
    spark = figures.warm_session()
    table, appended, rows, files = str(work / "table"), str(work / "appended"), 400, 4
    for folder in (table, appended):
        spark.range(rows).selectExpr("CAST(id AS INT) AS id", "CONCAT('value ', id) AS value").repartition(files) \
            .write.format("delta").save(folder)
    measured = {}
    for number, (name, operation) in enumerate(_operations(spark, table, appended).items()):
        measured[name] = figures.measure_operation(spark, operation, args.repeats, f"bench-{number}")
        print(name, measured[name]["milliseconds_median"], "ms,", measured[name]["jobs"], "jobs", flush=True)
    results = figures.stamp("python bench/query_cost_bench.py", rows=rows, files=files, repeats=args.repeats,
                            machine_speed_seconds=speed, operations=measured)
    figures.write(REPO / "bench" / "results", "query_cost", results, _markdown)


if __name__ == "__main__":
    main()
