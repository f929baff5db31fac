"""One tag's value for every instance of a modality, from headers kept as JSON text and as VARIANT.

Reproduce with ``make bench-header`` (or ``.venv/bin/python bench/header_format_bench.py``). Figures go to
bench/results/header_format.json and .md; nothing here passes or fails a test.

The headers come from a real extract (the synthetic demo export, plus the DICOM corpus in shared/ when
``MICDM_SHARED`` finds it), repeated under new paths and UIDs up to ``--instances`` rows, and appended to
two dicom_instance tables that differ only in extract.header_format. Each query runs ``--repeats`` times
in one warm session and is written to Spark's no-op sink (every row computed, nothing collected). The
bench also tries the Delta readers outside Spark on both tables and records what they return.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import figures

REPO = Path(__file__).resolve().parents[1]

#: The tag asked for: SliceThickness (0018,0050), present in most CT and MR headers.
TAG = "00180050"
QUERIES = {
    "json": f"CAST(get_json_object(header_json, '$.{TAG}.Value[0]') AS DOUBLE)",
    "variant": f"variant_get(header, '$.{TAG}.Value[0]', 'double')",
}


def _folder_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*.parquet"))


def _outside_spark(path: str, column: str) -> dict[str, str]:
    """What delta-rs and DuckDB make of the table (a reader that fails says why)."""
    found: dict[str, str] = {}
    try:
        from deltalake import DeltaTable

        table = DeltaTable(path).to_pyarrow_table(columns=["sop_instance_uid", column])
        found["delta-rs"] = f"reads {table.num_rows} rows; {column} as {table.schema.field(column).type}"
    except Exception as error:  # the refusal is the finding
        found["delta-rs"] = f"fails: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
    try:
        import duckdb

        connection = duckdb.connect()
        connection.execute("INSTALL delta; LOAD delta")
        count = connection.execute(f"SELECT count({column}) FROM delta_scan('{path}')").fetchone()
        found["duckdb"] = f"reads {count[0] if count else 0} values of {column}"
    except Exception as error:  # the refusal is the finding
        found["duckdb"] = f"fails: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return found


def _measure(spark: Any, work: Path, roots: list[Path], instances: int, repeats: int) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from micdm.config import Settings, load_settings
    from micdm.extract import extract
    from micdm.tables import TableLocator, append, init_tables, read_table

    def locator_for(name: str, header_format: str) -> tuple[TableLocator, Settings]:
        settings = load_settings(REPO / "conf" / "local.yml", [
            f"storage.warehouse={work / name}", f"sources.roots=[{','.join(map(str, roots))}]",
            "sources.exclude=[MANIFEST.tsv]", f"extract.header_format={header_format}"])
        locator = TableLocator.of(settings)
        init_tables(spark, locator, ["file_inventory", "dicom_instance", "dicom_quarantine", "sr_content_item"])
        return locator, settings

    source, settings = locator_for("source", "json")
    extract(spark, source, settings)
    headers = read_table(spark, source, "dicom_instance").localCheckpoint()
    read = headers.count()
    copies = spark.range(-(-instances // read)).withColumnRenamed("id", "copy")
    repeated = headers.crossJoin(copies).withColumns({
        "path": F.concat("path", F.lit("#"), "copy"),
        "sop_instance_uid": F.concat("sop_instance_uid", F.lit("."), "copy")}).drop("copy").limit(instances)
    modality = headers.where(F.col("slice_thickness").isNotNull()).groupBy("modality").count() \
        .orderBy(F.desc("count")).first()["modality"]
    tables: dict[str, Any] = {}
    for header_format, expression in QUERIES.items():
        locator, _ = locator_for(header_format, header_format)
        rows = repeated.withColumn("header", F.parse_json("header_json")) if header_format == "variant" else repeated
        started = time.monotonic()
        append(locator, "dicom_instance", rows)
        written = time.monotonic() - started
        path = locator.path("dicom_instance")
        query = read_table(spark, locator, "dicom_instance").where(F.col("modality") == modality) \
            .select("sop_instance_uid", F.expr(expression).alias("value"))
        query.write.format("noop").mode("overwrite").save()  # the first read pays for the table's log
        seconds = []
        for _ in range(repeats):
            started = time.monotonic()
            query.write.format("noop").mode("overwrite").save()
            seconds.append(time.monotonic() - started)
        column = "header" if header_format == "variant" else "header_json"
        tables[header_format] = {
            "query": f"SELECT sop_instance_uid, {expression} FROM dicom_instance WHERE modality = '{modality}'",
            "seconds_median": round(statistics.median(seconds), 2), "seconds_min": round(min(seconds), 2),
            "values_found": query.where("value IS NOT NULL").count(), "seconds_writing": round(written, 1),
            "parquet_bytes": _folder_bytes(path), "readers": _outside_spark(path, column),
        }
    return {"instances": instances, "distinct_headers": read, "modality": modality, "tables": tables}


def _markdown(results: dict[str, Any]) -> str:
    r = results["measured"]
    lines = ["# Header kept as JSON text or as VARIANT", "",
             f"Measured {results['date']} on {results['machine']}; reproduce with `{results['command']}`.", "",
             f"{r['instances']:,} dicom_instance rows ({r['distinct_headers']:,} distinct real and synthetic headers, "
             f"repeated); the query asks SliceThickness of every {r['modality']} instance, median of "
             f"{results['repeats']} warm runs.", "",
             "| header_format | query, s (median) | fastest, s | values found | append, s | parquet MB |",
             "|---|---|---|---|---|---|"]
    for name, t in r["tables"].items():
        lines.append(f"| {name} | {t['seconds_median']} | {t['seconds_min']} | {t['values_found']:,} | "
                     f"{t['seconds_writing']} | {t['parquet_bytes'] / 1e6:.1f} |")
    lines += ["", "| header_format | reader | outcome |", "|---|---|---|"]
    for name, t in r["tables"].items():
        lines += [f"| {name} | {reader} | {outcome} |" for reader, outcome in t["readers"].items()]
    lines += ["", "Queries:", ""] + [f"- {name}: `{t['query']}`" for name, t in r["tables"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--patients", type=int, default=14, help="patients of the synthetic export")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    from micdm.config import SparkSettings
    from micdm.spark import get_spark
    from micdm.synth import generate

    spark = get_spark(SparkSettings(master="local[2]", conf={"spark.sql.shuffle.partitions": "2",
                                                             "spark.ui.enabled": "false"}), app_name="bench")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(work / "demo", patients=args.patients, seed=11, pixels="none")
        roots = [work / "demo" / "dicom"]
        shared = Path(os.environ.get("MICDM_SHARED", REPO.parent / "shared")) / "data" / "dicom"
        if shared.is_dir():
            roots.append(shared)
        measured = _measure(spark, work, roots, args.instances, args.repeats)
    figures.write(args.out, "header_format", figures.stamp("make bench-header", repeats=args.repeats,
                                                           measured=measured), _markdown)


if __name__ == "__main__":
    main()
