"""Listing an S3 bucket in a PACS layout: the driver alone against the folders split into Spark tasks.

Reproduce with ``make bench-listing`` (or ``.venv/bin/python bench/listing_bench.py``). Figures go to
bench/results/listing.json and .md; nothing here passes or fails a test.

A fresh SeaweedFS server (on the same cores as Spark) holds one tiny object per instance under
``<size>/P<patient>/S<study>/<series>/<instance>.dcm`` (100 instances per patient: 2 studies of 5 series
of 10). Each archive size is listed ``--repeats`` times each way in one warm Spark session: `driver` is
micdm's listing by the driver (one paginated listing per root, every file held by the driver), `split`
is sources.listing=split (the driver finds the patient / study folders, Spark tasks list them). Driver
memory is the Python heap's peak while listing (tracemalloc), as the files are held there or not at all.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import figures

REPO = Path(__file__).resolve().parents[1]
_PER_PATIENT = (2, 5, 10)  # studies, series per study, instances per series


def _upload(fs: Any, bucket: str, size: int) -> None:
    studies, series, instances = _PER_PATIENT
    keys = [f"{bucket}/{size}/P{p:06d}/S{s}/{e:02d}/{i:03d}.dcm"
            for p in range(size // (studies * series * instances)) for s in range(studies)
            for e in range(series) for i in range(instances)]
    for start in range(0, len(keys), 5000):
        fs.pipe({key: b"\x00" for key in keys[start:start + 5000]})


def _time_listing(spark: Any, sources: Any, repeats: int) -> dict[str, Any]:
    from micdm import inventory
    from micdm.sources import list_files

    seconds, peaks, files = [], [], 0
    for _ in range(repeats):
        tracemalloc.start()
        started = time.monotonic()
        if sources.listing == "split":
            files = inventory.split_listing(spark, sources).files
        else:
            files = inventory.driver_listing(spark, sources, list(list_files(sources))).files
        seconds.append(time.monotonic() - started)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    median = statistics.median(seconds)
    return {"files": files, "seconds_median": round(median, 2), "seconds": [round(s, 2) for s in seconds],
            "files_per_second": round(files / median), "driver_heap_peak_mb": round(max(peaks) / 2**20, 1)}


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# Listing an S3 bucket: the driver alone or split into Spark tasks", "",
             f"Measured {results['date']} on {results['machine']}, SeaweedFS on the same cores; reproduce with "
             f"`{results['command']}`. Median of {results['repeats']} runs in a warm session; the split listing lists "
             f"the folders {results['depth']} levels down.", "",
             "| objects | listing | seconds | files/s | driver heap peak, MB | split / driver |",
             "|---|---|---|---|---|---|"]
    for size, modes in results["sizes"].items():
        for mode, r in modes.items():
            ratio = modes["driver"]["seconds_median"] / r["seconds_median"] if mode == "split" else None
            lines.append(f"| {int(size):,} | {mode} | {r['seconds_median']} | {r['files_per_second']:,} | "
                         f"{r['driver_heap_peak_mb']} | {'' if ratio is None else f'{ratio:.1f}x'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=1, help="sources.listing_depth of the split listing")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    from micdm.config import SparkSettings, load_settings
    from micdm.spark import get_spark

    sys.path.insert(0, str(REPO / "tests"))  # the test servers are not part of the package
    from support.servers import SeaweedFS

    spark = get_spark(SparkSettings(master="local[2]", conf={"spark.sql.shuffle.partitions": "2",
                                                             "spark.ui.enabled": "false"}), app_name="bench")
    sizes: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, SeaweedFS(Path(tmp) / "seaweedfs") as server:
        fs = server.filesystem()
        for size in args.sizes:
            _upload(fs, server.bucket, size)
            sizes[str(size)] = {}
            for mode in ("driver", "split"):
                settings = load_settings(REPO / "conf" / "local.yml", [
                    *server.source_settings(str(size)), f"sources.listing={mode}",
                    f"sources.listing_depth={args.depth}"])
                sizes[str(size)][mode] = _time_listing(spark, settings.sources, args.repeats)
                print(size, mode, sizes[str(size)][mode], flush=True)
    figures.write(args.out, "listing", figures.stamp("make bench-listing", repeats=args.repeats, depth=args.depth,
                                                     sizes=sizes), _markdown)


if __name__ == "__main__":
    main()
