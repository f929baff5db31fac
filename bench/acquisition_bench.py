"""Acquisition attributes per series with the ``all`` preset, and what reading them from headers costs.

Reproduce with ``make bench-acquisition`` (or ``.venv/bin/python bench/acquisition_bench.py``). Figures go
to bench/results/acquisition.json and bench/results/acquisition.md; nothing here passes or fails a test.

For the real DICOM corpus in shared/ (``MICDM_SHARED``) and a synthetic demo export: extract, then read
the values of ``all`` plus the default nested paths into instance_attribute (timed), read again with
nothing new (timed), and fold every series by its rules. Reported: attributes per series (median,
minimum, maximum, per modality), rows per series, distinct attributes seen.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import figures

REPO = Path(__file__).resolve().parents[1]


def _measure(spark, name: str, root: Path, work: Path, selection: list[str]) -> dict:
    from pyspark.sql import functions as F

    from micdm.acquisition import refresh_instance_attributes, series_values
    from micdm.config import load_settings
    from micdm.dicom.attributes import select_attributes
    from micdm.extract import extract
    from micdm.series import present_instances
    from micdm.tables import TableLocator, init_tables, read_table

    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={work / name}", f"sources.roots=[{root}]", "sources.exclude=[MANIFEST.tsv]"])
    locator = TableLocator.of(settings)
    init_tables(spark, locator)
    extract(spark, locator, settings)
    attributes = select_attributes(selection)
    instances = present_instances(spark, locator)
    started = time.monotonic()
    read, _ = refresh_instance_attributes(spark, locator, instances, attributes)
    first = time.monotonic() - started
    started = time.monotonic()
    again, stored = refresh_instance_attributes(spark, locator, present_instances(spark, locator), attributes)
    second = time.monotonic() - started
    modality = instances.groupBy("series_instance_uid").agg(F.first("modality", ignorenulls=True).alias("modality"))
    rows = series_values(spark, stored, attributes, settings.features.max_distinct_values).join(
        modality, "series_instance_uid")
    per_series = rows.groupBy("series_instance_uid", "modality").agg(
        F.countDistinct("source").alias("attributes"), F.count("*").alias("rows")).collect()
    by_modality: dict[str, list[int]] = {}
    for row in per_series:
        by_modality.setdefault(row.modality or "?", []).append(row.attributes)
    counts = [r.attributes for r in per_series]
    return {
        "instances": instances.count(), "series": len(per_series), "headers_read": read,
        "seconds_reading": round(first, 1), "headers_read_with_nothing_new": again,
        "seconds_with_nothing_new": round(second, 1),
        "attributes_per_series": {"median": statistics.median(counts), "min": min(counts), "max": max(counts)},
        "rows_per_series_median": statistics.median(r.rows for r in per_series),
        "values_stored": read_table(spark, locator, "instance_attribute").where("source IS NOT NULL").count(),
        "distinct_attributes": rows.select("source").distinct().count(),
        "per_modality": {m: {"series": len(v), "median": statistics.median(v)} for m, v in sorted(by_modality.items())},
    }


def _markdown(results: dict) -> str:
    lines = [f"# Acquisition attributes per series (`{results['selection']}`)", "",
             f"Measured {results['date']} on {results['machine']}; reproduce with `{results['command']}`.", "",
             "| corpus | instances | series | attributes per series (median, min-max) | rows per series (median) "
             "| distinct attributes | values stored | headers read, s | nothing new: headers read, s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["corpora"].items():
        a = r["attributes_per_series"]
        lines.append(f"| {name} | {r['instances']} | {r['series']} | {a['median']} ({a['min']}-{a['max']}) | "
                     f"{r['rows_per_series_median']} | {r['distinct_attributes']} | {r['values_stored']} | "
                     f"{r['headers_read']}, {r['seconds_reading']} | {r['headers_read_with_nothing_new']}, "
                     f"{r['seconds_with_nothing_new']} |")
    for name, r in results["corpora"].items():
        lines += ["", f"## {name}: attributes per series by modality", "", "| modality | series | median |",
                  "|---|---|---|"]
        lines += [f"| {m} | {v['series']} | {v['median']} |" for m, v in r["per_modality"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=14, help="patients of the synthetic demo export")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    from micdm.config import SparkSettings
    from micdm.spark import get_spark
    from micdm.synth import generate

    spark = get_spark(SparkSettings(master="local[2]", conf={"spark.sql.shuffle.partitions": "2",
                                                             "spark.ui.enabled": "false"}), app_name="bench")
    selection = ["all", "default"]
    corpora = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shared = Path(os.environ.get("MICDM_SHARED", REPO.parent / "shared"))
        if (shared / "data" / "dicom").is_dir():
            corpora["real corpus (shared/data/dicom)"] = _measure(spark, "real", shared / "data" / "dicom", work,
                                                                  selection)
        generate(work / "demo", patients=args.patients, seed=11, pixels="none")
        corpora[f"synthetic demo ({args.patients} patients)"] = _measure(spark, "demo", work / "demo" / "dicom",
                                                                         work, selection)
    figures.write(args.out, "acquisition", figures.stamp("make bench-acquisition", selection=", ".join(selection),
                                                         corpora=corpora), _markdown)


if __name__ == "__main__":
    main()
