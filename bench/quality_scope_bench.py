"""What the quality stage could save by checking only the persons a run changed: the most any incremental
quality stage could gain, before it pays for keeping counts per person.

Reproduce with ``make bench-quality-scope`` (or ``.venv/bin/python bench/quality_scope_bench.py``;
``--size small`` for a smaller archive). Figures go to bench/results/quality_scope.{json,md}; nothing here
passes or fails a test.

The archive and its runs are those of bench/pipeline_bench.py: ``micdm synth`` with every hundredth
patient's folder held back, a full `micdm run`, then the held-back folders arrive and a second run adds
them. On the warehouse that run leaves, one warm session evaluates every check (``quality.evaluate``) two
ways, alternating, each several times after one unmeasured run: on every row micdm wrote, as the stage
does, and on the rows of the persons whose files arrived alone. The second way is made here, by narrowing
the rows the checks read (micdm has no such mode). It still scans the tables to find those rows and counts
measurePersonCompleteness on whole tables; it counts the key checks on those rows alone, where an
incremental stage would count them on every row, so its time is a floor.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from figures import machine_speed, scratch, stamp, write
from pipeline_bench import SIZES, bring_back, cli_arguments, hold_back, run_cli

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
WAYS = ("every row", "the arriving persons' rows")


def _archive(size: str, folder: Path) -> tuple[list[str], int]:
    """The archive's warehouse after the run that adds the held-back patients; their PatientIDs and the
    files they brought."""
    common = cli_arguments(folder, *SIZES[size])
    run_cli("synth", *common, cwd=folder)
    held = hold_back(folder)
    run_cli("run", *common, cwd=folder)
    arriving = bring_back(folder, held)
    run_cli("run", *common, cwd=folder)
    return [path.name for path in held], arriving


def _measure(warehouse: Path, patients: list[str], repeats: int) -> dict:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import functions as F

    from micdm import quality
    from micdm.config import load_settings
    from micdm.spark import get_spark
    from micdm.tables import TableLocator, read_table

    settings = load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={warehouse}"])
    spark = get_spark(settings.spark)
    locator = TableLocator.of(settings)
    persons = [row.person_id for row in read_table(spark, locator, "person").where(
        F.col("person_source_value").isin(patients)).select("person_id").collect()]
    every_row = quality._written_rows

    def narrowed(spark: SparkSession, locator: TableLocator, name: str, span: tuple[int, int] | None) -> DataFrame:
        return every_row(spark, locator, name, span).where(F.col("person_id").isin(persons))

    readers = {WAYS[0]: every_row, WAYS[1]: narrowed}
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    checks: dict[str, int] = {}
    for turn in range(repeats + 1):
        for way, reader in readers.items():
            quality._written_rows = reader
            started = time.monotonic()
            checks[way] = len(quality.evaluate(spark, locator))
            if turn:  # the first turn warms the session
                seconds[way].append(round(time.monotonic() - started, 2))
    quality._written_rows = every_row
    return {"persons": len(persons), "checks": checks, "seconds": seconds,
            "median_seconds": {way: statistics.median(found) for way, found in seconds.items()}}


def _markdown(results: dict) -> str:
    medians = results["median_seconds"]
    lines = [f"# Quality stage: every row or the changed persons' rows ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. Archive: {results['size']} "
             f"({results['files']:,} files, of which {results['files_arriving']:,} arrive in the measured run, "
             f"from {results['persons']} persons). One warm session; `quality.evaluate` on the warehouse that "
             f"run leaves, {results['repeats']} times each way, alternating, after one unmeasured run each. "
             f"Speed probe: {results['machine_speed_seconds']} s.", "",
             "| rows checked | checks | median s | runs s |", "|---|---|---|---|"]
    for way in WAYS:
        lines.append(f"| {way} | {results['checks'][way]} | {medians[way]} | "
                     f"{', '.join(map(str, results['seconds'][way]))} |")
    saved = medians[WAYS[0]] - medians[WAYS[1]]
    lines += ["", f"At most {saved:.1f} s of {medians[WAYS[0]]:.1f} s to gain by checking only the persons a run "
              "changed, before keeping and summing counts per person.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="large", choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    folder = scratch(args.work, "micdm-quality-scope-bench")
    patients, arriving = _archive(args.size, folder)
    files = sum(1 for _ in (folder / "export" / "dicom").rglob("*.dcm"))
    speed = machine_speed()
    measured = _measure(folder / "warehouse", patients, args.repeats)
    command = "python bench/quality_scope_bench.py" + (f" --size {args.size}" if args.size != "large" else "")
    write(Path(args.out), "quality_scope", stamp(command, size=args.size, files=files, files_arriving=arriving,
                                                 repeats=args.repeats, machine_speed_seconds=speed, **measured),
          _markdown)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
