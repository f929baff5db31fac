"""How often each stage of a run after 1 % new files calls into the JVM through py4j, and how long Python
waits in those calls: every Column, function, name and literal a stage builds in Python is a round trip.

Reproduce with ``make bench-roundtrips`` (or ``.venv/bin/python bench/roundtrips_bench.py``, after
``micdm setup``). Figures go to bench/results/roundtrips.{json,md}; nothing here passes or fails a test.

The archive is bench/pipeline_bench.py's small one: ``micdm synth`` with every hundredth patient's folder held
back, a full run as a new process, the folders back. The run after them is then replayed twice in this
process, each time on a copy of the warehouse as it was before it: the first in a cold JVM, the second warm.
Waits of several threads (a stage runs some queries side by side) add up beyond the stage's seconds.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import time
from pathlib import Path
from typing import Any

from figures import machine_speed, scratch, stamp, write
from pipeline_bench import REPO, SIZES, bring_back, cli_arguments, hold_back, run_cli

_REPLAYS = ("cold", "warm")


def _replays(folder: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Each replay's stages: seconds, Spark jobs, py4j commands and the seconds Python waited in them."""
    from py4j import clientserver

    from micdm import pipeline
    from micdm.config import load_settings
    from micdm.spark import get_spark

    replay = folder / "replay"
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={replay}", f"sources.roots=[{folder / 'export' / 'dicom'}]", "report.enabled=false"])
    spark = get_spark(settings.spark)
    calls: collections.Counter[str] = collections.Counter()
    waited: collections.Counter[str] = collections.Counter()
    current = {"stage": ""}
    send = clientserver.ClientServerConnection.send_command

    def counted_send(connection: Any, command: str) -> Any:
        started = time.perf_counter()
        try:
            return send(connection, command)
        finally:
            calls[current["stage"]] += 1
            waited[current["stage"]] += time.perf_counter() - started

    def staged(name: str, stage: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            current["stage"] = name
            try:
                return stage(*args, **kwargs)
            finally:
                current["stage"] = ""
        return run

    clientserver.ClientServerConnection.send_command = counted_send
    for name, stage in list(pipeline.STAGES.items()):
        pipeline.STAGES[name] = staged(name, stage)
    results = {}
    for replayed in _REPLAYS:
        shutil.rmtree(replay, ignore_errors=True)
        shutil.copytree(folder / "before_new", replay)
        calls.clear()
        waited.clear()
        stages = pipeline.run_pipeline(spark, settings)
        results[replayed] = {r.stage: {"seconds": round(r.seconds, 1), "jobs": r.spark_jobs,
                                       "py4j_calls": calls[r.stage], "py4j_seconds": round(waited[r.stage], 1)}
                             for r in stages}
    return results


def _markdown(results: dict[str, Any]) -> str:
    lines = [f"# py4j round trips of a run after 1 % new files ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. Archive: small "
             f"({results['files']:,} files, {results['files_arriving']:,} arriving); speed probe "
             f"{results['machine_speed_seconds']} s (bench/figures.py). Per stage: seconds, Spark jobs, py4j "
             "commands, and the seconds Python waited in them (summed over the stage's threads).", ""]
    for replayed in _REPLAYS:
        stages = results["replays"][replayed]
        lines += [f"## {replayed} JVM", "", "| stage | seconds | jobs | py4j calls | py4j seconds |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {s['seconds']} | {s['jobs']} | {s['py4j_calls']:,} | {s['py4j_seconds']} |"
                  for name, s in stages.items()]
        lines += [f"| all | {round(sum(s['seconds'] for s in stages.values()), 1)} | "
                  f"{sum(s['jobs'] for s in stages.values())} | {sum(s['py4j_calls'] for s in stages.values()):,} | "
                  f"{round(sum(s['py4j_seconds'] for s in stages.values()), 1)} |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    folder = scratch(args.work, "micdm-roundtrips-bench")
    common = cli_arguments(folder, *SIZES["small"])
    run_cli("synth", *common, cwd=folder)
    held = hold_back(folder)
    run_cli("run", *common, cwd=folder)
    arriving = bring_back(folder, held)
    shutil.copytree(folder / "warehouse", folder / "before_new")
    files = sum(1 for _ in (folder / "export" / "dicom").rglob("*.dcm"))
    speed = machine_speed()
    results = stamp("python bench/roundtrips_bench.py", files=files, files_arriving=arriving,
                    machine_speed_seconds=speed, replays=_replays(folder))
    write(Path(args.out), "roundtrips", results, _markdown)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
