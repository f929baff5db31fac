"""The quality stage after a run that brings 1 % new files: counting again only the persons whose rows
changed (as a scheduled run does) against counting every person (``--full-refresh``); and after the site
reloads its visits with 1 % of them moved, counting again the persons whose rows name those.

Reproduce with ``make bench-quality-scope`` (or ``.venv/bin/python bench/quality_scope_bench.py``;
``--size small`` for a smaller archive). Figures go to bench/results/quality_scope.{json,md}; nothing here
passes or fails a test.

The archive is that of bench/pipeline_bench.py: ``micdm synth`` with every hundredth patient's folder held
back and a full ``micdm run``; then the held-back folders arrive, and one warm session runs every stage
but quality on them. Copies of the warehouse it leaves are then given the quality stage, alternating the
two ways, each several times after one unmeasured run: each copy is new to the session, as the warehouse
of a scheduled run is. For the third way, the warehouse gets its quality stage, then the site's
visit_occurrence is written again whole with every hundredth visit three days wider, and copies of that
are given the quality stage. Rows: Spark's input metrics of the stage's tasks in the last turn, from the
session's event log (the same on any machine); seconds: the stage as ``run_stage`` times it, its
watermark included.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import uuid
from pathlib import Path
from typing import Any

from figures import machine_speed, scratch, stamp, write
from pipeline_bench import SIZES, bring_back, cli_arguments, hold_back, run_cli, widen_visits
from scanned_rows_bench import input_by_group

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
WAYS = ("the changed persons", "every person (--full-refresh)", "after a reload of the visits, 1 % moved")


def _archive(size: str, folder: Path) -> int:
    """The archive after a full run, with its held-back patients' folders back in place; the files they bring."""
    common = cli_arguments(folder, *SIZES[size])
    run_cli("synth", *common, cwd=folder)
    held = hold_back(folder)
    run_cli("run", *common, cwd=folder)
    return bring_back(folder, held)


def _measure(folder: Path, size: str, repeats: int) -> dict:
    from micdm.config import load_settings
    from micdm.pipeline import STAGES, run_stage
    from micdm.spark import get_spark
    from micdm.tables import TableLocator

    events = folder / "events"
    events.mkdir()
    overrides = [arg for arg in cli_arguments(folder, *SIZES[size]) if "=" in arg]

    def settings_of(warehouse: Path) -> Any:
        return load_settings(REPO / "conf" / "local.yml", [
            *overrides, f"storage.warehouse={warehouse}", "report.enabled=false",
            "spark.conf={spark.eventLog.enabled: 'true', spark.eventLog.compress: 'false',"
            f" spark.eventLog.rolling.enabled: 'false', spark.eventLog.dir: 'file://{events}'}}"])

    spark = get_spark(settings_of(folder / "warehouse").spark, app_name="quality-scope-bench")
    for stage in STAGES:
        if stage != "quality":
            run_stage(spark, settings_of(folder / "warehouse"), stage)
    reloaded = folder / "reloaded"
    shutil.copytree(folder / "warehouse", reloaded)
    run_stage(spark, settings_of(reloaded), "quality")
    moved = widen_visits(spark, TableLocator.of(settings_of(reloaded)))
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    persons: dict[str, Any] = {}
    groups: dict[str, str] = {}
    for turn in range(repeats + 1):
        for index, way in enumerate(WAYS):
            copy = folder / f"copy_{turn}_{index}"
            shutil.copytree(reloaded if index == 2 else folder / "warehouse", copy)
            run_id = uuid.uuid4().hex
            result = run_stage(spark, settings_of(copy), "quality", run_id=run_id, full_refresh=index == 1)
            persons[way], groups[way] = result.counts.get("persons counted"), f"micdm-{run_id}-quality"
            if turn:  # the first turn warms the session
                seconds[way].append(round(result.seconds, 2))
            shutil.rmtree(copy)
    spark.stop()  # the event log is complete once the session has stopped
    read = input_by_group(next(events.iterdir()))
    return {"seconds": seconds, "median_seconds": {way: statistics.median(found) for way, found in seconds.items()},
            "rows_read": {way: read[group]["rows"] for way, group in groups.items()}, "persons_counted": persons,
            "visits_moved": moved}



def _markdown(results: dict) -> str:
    medians = results["median_seconds"]
    lines = [f"# Quality stage after 1 % new files: the changed persons or every person ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. Archive: {results['size']} "
             f"({results['files']:,} files, of which {results['files_arriving']:,} arrive in the measured run). "
             f"One warm session; the quality stage (`run_stage`) on a fresh copy of the warehouse that run leaves, "
             f"{results['repeats']} times each way, alternating, after one unmeasured run each; for the last "
             f"way, on a copy where quality had run and the site's visits were then written again whole, "
             f"{results['visits_moved']:,} of them three days wider. "
             f"Speed probe: {results['machine_speed_seconds']} s.", "",
             "| persons counted | rows read | median s | runs s |", "|---|---|---|---|"]
    for way in WAYS:
        lines.append(f"| {way}: {results['persons_counted'][way]} | {results['rows_read'][way]:,} | {medians[way]} | "
                     f"{', '.join(map(str, results['seconds'][way]))} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="large", choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    folder = scratch(args.work, "micdm-quality-scope-bench")
    arriving = _archive(args.size, folder)
    files = sum(1 for _ in (folder / "export" / "dicom").rglob("*.dcm"))
    speed = machine_speed()
    measured = _measure(folder, args.size, args.repeats)
    command = "python bench/quality_scope_bench.py" + (f" --size {args.size}" if args.size != "large" else "")
    write(Path(args.out), "quality_scope", stamp(command, size=args.size, files=files, files_arriving=arriving,
                                                 repeats=args.repeats, machine_speed_seconds=speed, **measured),
          _markdown)


if __name__ == "__main__":
    main()
