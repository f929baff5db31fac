"""A user's ``micdm extract``: a new process on an export of realistic files, from the command to its exit.

Reproduce with ``make bench-cold-extract`` (or ``.venv/bin/python bench/cold_extract_bench.py``). Figures go
to bench/results/cold_extract.json and bench/results/cold_extract.md; nothing here passes or fails a test.

bench/extract_bench.py times the stage in a session it has warmed up; a user's command pays the JVM's
start and its first compilations as well, which this one counts. The export (realistic pixel sizes, made
once by micdm's generator and shared with extract_bench) is read by ``micdm extract`` into a new, empty
warehouse each time, the kernel's page cache emptied first where allowed (root), ``--repeats`` times.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path
from typing import Any

from extract_bench import drop_page_cache, files_under, realistic_export
from figures import stamp, write
from pipeline_bench import REPO, RESULTS, run_cli


def _markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    stage = [run["stages"]["extract"]["seconds"] for run in runs]
    wall = [run["wall_seconds"] for run in runs]
    return "\n".join([
        f"# Cold extract benchmark ({results['date']})", "",
        f"Command: `{results['command']}`. Machine: {results['machine']}. {results['files']:,} files, "
        f"{results['gigabytes']} GB; each run a new `micdm extract` process into an empty warehouse, page cache "
        f"emptied first: {'yes' if results['page_cache_dropped'] else 'no (not root)'}.", "",
        "| measure | median | files/s | every run |", "|---|---|---|---|",
        f"| extract stage, s | {statistics.median(stage):.1f} | {results['files'] / statistics.median(stage):,.0f} | "
        f"{', '.join(map(str, stage))} |",
        f"| process, start to exit, s | {statistics.median(wall):.1f} | "
        f"{results['files'] / statistics.median(wall):,.0f} | {', '.join(map(str, wall))} |",
        f"| JVM peak, MB | {statistics.median(run['jvm_peak_mb'] for run in runs):.0f} | | "
        f"{', '.join(str(run['jvm_peak_mb']) for run in runs)} |",
        f"| speed probe before the run, s (bench/figures.py) | | | "
        f"{', '.join(str(run.get('machine_speed_seconds', '-')) for run in runs)} |", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / ".micdm" / "bench")
    args = parser.parse_args()
    root = realistic_export(args.work, args.instances, args.seed)
    files = files_under(root)
    warehouse = args.work / "cold-extract-warehouse"
    dropped, runs = False, []
    for _ in range(args.repeats):
        shutil.rmtree(warehouse, ignore_errors=True)
        dropped = drop_page_cache()
        runs.append(run_cli("extract", "--config", str(REPO / "conf" / "local.yml"),
                            f"storage.warehouse={warehouse}", f"sources.roots=[{root}]", cwd=args.work))
    results = stamp("python bench/cold_extract_bench.py", files=len(files), page_cache_dropped=dropped,
                    gigabytes=round(sum(path.stat().st_size for path in files) / 1e9, 2), runs=runs)
    write(RESULTS, "cold_extract", results, _markdown)


if __name__ == "__main__":
    main()
