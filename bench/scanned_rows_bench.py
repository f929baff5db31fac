"""Rows each stage reads from files in a run after 1 % new files, with timestamps written as Spark's default
INT96 and as 64-bit microseconds (micdm's default): what Parquet footer statistics on time columns spare.

Reproduce with ``make bench-scanned-rows`` (or ``.venv/bin/python bench/scanned_rows_bench.py``;
``--size large`` for the pipeline bench's largest archive). Figures go to bench/results/scanned_rows.{json,md};
nothing here passes or fails a test.

The archive is bench/pipeline_bench.py's: ``micdm synth`` with every hundredth patient's folder held back.
For each timestamp type one warm session runs the whole pipeline on a copy of the synthesized warehouse,
writing with that type, then the held-back folders arrive and a second run adds them. Rows and bytes are
Spark's input metrics of every task of the second run, from the session's event log, by stage. They do
not depend on the machine's speed; the stage seconds beside them do.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
from pathlib import Path
from typing import Any

from figures import machine_speed, scratch, stamp, write
from pipeline_bench import SIZES, bring_back, cli_arguments, hold_back, run_cli

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TYPES = ("INT96", "TIMESTAMP_MICROS")
_TYPE_SETTING = "spark.sql.parquet.outputTimestampType"
#: The job group of a stage of a run: micdm-<run id>-<stage>.
_RUN_GROUP = re.compile(r"(micdm-[0-9a-f]{32})-\w+$")


def input_by_group(event_log: Path) -> dict[str, dict[str, int]]:
    """Rows and bytes read from files, by Spark job group (micdm names one per run and stage)."""
    stage_group: dict[int, str] = {}
    read: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"rows": 0, "bytes": 0})
    with event_log.open() as events:
        for line in events:
            event = json.loads(line)
            if event["Event"] == "SparkListenerJobStart":
                group = event.get("Properties", {}).get("spark.jobGroup.id") or ""
                stage_group.update({stage: group for stage in event["Stage IDs"]})
            elif event["Event"] == "SparkListenerTaskEnd":
                metrics = (event.get("Task Metrics") or {}).get("Input Metrics") or {}
                found = read[stage_group.get(event["Stage ID"], "")]
                found["rows"] += metrics.get("Records Read", 0)
                found["bytes"] += metrics.get("Bytes Read", 0)
    return read


def _measure(folder: Path, held: list[Path], events: Path) -> dict[str, Any]:
    from micdm.config import load_settings
    from micdm.pipeline import run_pipeline
    from micdm.spark import get_spark

    def settings_of(kind: str) -> Any:
        return load_settings(REPO / "conf" / "local.yml", [
            f"storage.warehouse={folder / kind}", f"sources.roots=[{folder / 'export' / 'dicom'}]",
            "report.enabled=false", "spark.conf={spark.eventLog.enabled: 'true', spark.eventLog.compress: 'false',"
            f" spark.eventLog.rolling.enabled: 'false', spark.eventLog.dir: 'file://{events}'}}"])

    spark = get_spark(settings_of(TYPES[0]).spark, app_name="scanned-rows-bench")
    for kind in TYPES:
        shutil.copytree(folder / "warehouse", folder / kind)
        spark.conf.set(_TYPE_SETTING, kind)
        run_pipeline(spark, settings_of(kind))
    arriving = bring_back(folder, held)
    runs: dict[str, Any] = {}
    for kind in TYPES:
        spark.conf.set(_TYPE_SETTING, kind)
        runs[kind] = {r.stage: {"seconds": round(r.seconds, 1), "jobs": r.spark_jobs}
                      for r in run_pipeline(spark, settings_of(kind))}
    spark.stop()  # the event log is complete once the session has stopped
    read = input_by_group(next(events.iterdir()))
    ran = list(dict.fromkeys(found.group(1) for found in map(_RUN_GROUP.match, read) if found))
    for kind, run in zip(TYPES, ran[len(TYPES):], strict=True):  # the runs after the arrival, in order
        for stage, figures in runs[kind].items():
            figures.update(read.get(f"{run}-{stage}", {"rows": 0, "bytes": 0}))
    return {"files_arriving": arriving, "runs": runs}


def _markdown(results: dict) -> str:
    runs = results["runs"]
    lines = [f"# Rows read from files in a run after 1 % new files, by timestamp type ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. Archive: {results['size']} "
             f"({results['files']:,} files, {results['files_arriving']:,} of them arriving in the measured run). "
             f"One warm session; each type's warehouse written with that type from the start. Rows and MB: "
             f"Spark's input metrics of the run's tasks (any machine); seconds: this machine, speed probe "
             f"{results['machine_speed_seconds']} s.", "",
             "| stage | " + " | ".join(f"{kind} rows | MB | s" for kind in TYPES) + " |",
             "|---|" + "---|---|---|" * len(TYPES)]
    for stage in runs[TYPES[0]]:
        cells = [f"{runs[k][stage]['rows']:,} | {runs[k][stage]['bytes'] / 1e6:.1f} | {runs[k][stage]['seconds']}"
                 for k in TYPES]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    def total(kind: str, figure: str) -> float:
        return sum(stage[figure] for stage in runs[kind].values())

    lines += ["| all stages | " + " | ".join(
        f"{total(k, 'rows'):,} | {total(k, 'bytes') / 1e6:.1f} | {total(k, 'seconds'):.1f}" for k in TYPES) + " |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    folder = scratch(args.work, "micdm-scanned-rows-bench")
    run_cli("synth", *cli_arguments(folder, *SIZES[args.size]), cwd=folder)
    held = hold_back(folder)
    events = folder / "events"
    events.mkdir()
    speed = machine_speed()
    measured = _measure(folder, held, events)
    files = sum(1 for _ in (folder / "export" / "dicom").rglob("*.dcm"))
    command = "python bench/scanned_rows_bench.py" + (f" --size {args.size}" if args.size != "small" else "")
    write(Path(args.out), "scanned_rows", stamp(command, size=args.size, files=files, machine_speed_seconds=speed,
                                                **measured), _markdown)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
